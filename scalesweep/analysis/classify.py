"""The classifier: how does a phenomenon change along a scale axis?

Per (phenomenon, axis, slice) it returns one of `VERDICTS` with its evidence and
a stable `reason` code (`REASONS`). The rules are those of DESIGN.md ("The
classifier"); the statistics live in `stats.py`, and docs/classifier.md has the
table of tests and the measured calibration. In short:

* Work in u = log10(x). **The scale point is the unit of evidence**: fits are to
  the point means, and the error term is the points' lack of fit whenever it
  exceeds what the replicates allow (`stats.wls`), so near-identical replicates
  never make a trend more significant than the point means alone.
* Regime flips (Liu et al. 2022 phases): one-sided Fisher exact tests between
  the runs of the small-end and large-end thirds of the points.
* The trend test is the t-test of the slope (per decade). Non-monotonicity is a
  quadratic (vertex inside, both arms significant) or, for asymmetric shapes, a
  broken line with a profiled breakpoint against a Monte Carlo null; a noise-only
  slice gets a trend-type verdict at most at ALPHA_TREND + ALPHA_SHAPE +
  ALPHA_BROKEN (4.5 %).
* "Emerges" / "vanishes" only for an abrupt onset / offset: a clipped ramp beats
  a straight line and the flat end is below presence (`_abrupt`).
* Persistence is an equivalence test (two one-sided tests, Schuirmann 1987).
* Confidence is the share of bootstrap resamples that give the same verdict,
  resampling the units the test used (models; seeds within points; or whole
  points, then seeds).
* `classify_runs` adjusts p-values with Benjamini & Hochberg (1995) within each
  family (one phenomenon along one axis) and demotes trend calls that do not
  survive at `fdr` to inconclusive (`adjust_p_values`).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from scalesweep.analysis import stats, steps
from scalesweep.analysis.axis_rules import MIN_POINTS, MIN_SPAN
from scalesweep.analysis.load import missing_columns
from scalesweep.analysis.phenomena import Phenomenon, evaluate
from scalesweep.analysis.slices import slices
from scalesweep.errors import UserError

VERDICT_COLUMNS = [
    "phenomenon",
    "axis",
    "slice",
    "verdict",
    "detail",
    "confidence",
    "effect",
    "ci_low",
    "ci_high",
    "p_value",
    "transition",
    "n_points",
    "n_seeds",
]
EXTRA_COLUMNS = [
    "change",
    "p_adjusted",
    "noise",
    "alt_verdict",
    "alt_detail",
    "flag",
    "shape",
    "reason",
    "n_left_out",
    "midpoint",
]
VERDICTS = ("expansion", "shrinkage", "transformation", "persistent", "absent", "inconclusive")
TRENDS = ("expansion", "shrinkage", "transformation")

# Stable machine-readable reasons (the `reason` column; documented in docs/verdicts.md).
REASONS = {
    "too_few_points": "fewer than 3 scale points with a finite strength",
    "span_too_small": "the axis spans less than 4x",
    "no_spread": "too few units (points or runs) to estimate the noise around the trend",
    "regime_flip": "the dominant regime at the small end differs from the large end",
    "sign_flip": "a signed strength changes sign",
    "u_shape": "significantly non-monotonic, with a minimum inside the range",
    "inverted_u": "significantly non-monotonic, with a maximum inside the range",
    "abrupt_onset": "flat below presence at the small end, then a rise a broken line explains (emerges)",
    "abrupt_offset": "a fall to flat below presence at the large end that a broken line explains (vanishes)",
    "smooth_trend": "a monotone trend in log-scale, without an abrupt onset",
    "equivalent": "present, and the interval of the change lies within +-min_effect",
    "never_present": "never beyond the presence threshold",
    "not_significant": "no significant trend, and persistence not shown either",
    "below_min_effect": "a significant trend smaller than min_effect, which cannot be ruled out",
    "no_min_effect": "no significant trend, and min_effect 0 makes persistence impossible to show",
    "not_significant_after_fdr": "a trend call that does not survive Benjamini-Hochberg in its family",
}

ALPHA_TREND = 0.035  # slope test
ALPHA_SHAPE = 0.005  # quadratic term test (symmetric U / inverted U)
ALPHA_BROKEN = 0.005  # broken-line test (asymmetric U / inverted U)
ALPHA_ARM = 0.05  # each arm of a U / inverted U, one-sided
ALPHA_REGIME = 0.05  # Fisher tests of a regime flip, one-sided each
ALPHA_EQUIV = 0.05  # TOST for persistence
ALPHA_ONSET = 0.05  # broken line against a straight line, for an abrupt onset
ALPHA_FLAT = 0.05  # the flat arm of an onset is significantly less steep than the rise, at this level
FLAT_SHARE = 0.25  # ... and its slope is at most this share of the rise's
MIN_DF = 2


@dataclass
class _Slice:
    """Arrays of one slice: per run u = log10(scale), strength, point id; regime labels."""

    u: np.ndarray  # runs with a finite strength
    y: np.ndarray
    pid: np.ndarray  # the run's point: equal scale, or one cluster of a bootstrap resample
    ru: np.ndarray  # runs with a regime label (strength may be NaN)
    labels: np.ndarray | None
    replicated: bool
    replicate: str = "seeds"  # what a replicate is called in messages
    # The run's scale as an index into `scale_values` (the slice's distinct scales, sorted):
    # counting by index is what makes a bootstrap decision cheap (no sort per resample).
    sid: np.ndarray | None = None
    scale_values: np.ndarray | None = None

    @cached_property
    def _scale_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(index of each scale present, runs at it), from `sid` (or by sorting `u` without it)."""
        if self.sid is None:
            self.scale_values, self.sid = np.unique(self.u, return_inverse=True)
        counts = np.bincount(self.sid, minlength=len(self.scale_values))
        return np.flatnonzero(counts), counts

    @cached_property  # read several times per decision, and the bootstrap makes ~10^5 decisions
    def scales(self) -> np.ndarray:
        present, _ = self._scale_counts
        return self.scale_values[present]

    @cached_property
    def pts(self) -> stats.Points:
        return stats.points_of(self.pid, self.u, self.y, self.replicated)

    @cached_property
    def scale_means(self) -> np.ndarray:
        """Mean strength at each distinct scale (bootstrap clusters at one scale pooled)."""
        present, counts = self._scale_counts
        sums = np.bincount(self.sid, weights=self.y, minlength=len(counts))
        return sums[present] / counts[present]


class _Nulls:
    """The broken-line statistic's null distributions of one slice, simulated once.

    The statistic is scale-free, so its null depends on the design only; the
    bootstrap resamples of a slice share their original's design closely, and
    reuse its nulls (simulating one per resample would cost 200x more)."""

    def __init__(self, pts: stats.Points):
        self.pts = pts
        self.cache: dict[str, np.ndarray] = {}

    def p(self, hinge: stats.Hinge) -> float:
        if hinge.units not in self.cache:
            self.cache[hinge.units] = stats.hinge_null(self.pts, hinge.units)
        return stats.null_p(self.cache[hinge.units], hinge.stat)


def _end_masks(u: np.ndarray, scales: np.ndarray, share: float = 1 / 3):
    k = max(1, math.ceil(len(scales) * share))
    return u <= scales[k - 1], u >= scales[-k], k


def _geo_mid(u_lo: float, u_hi: float) -> float:
    return float(10 ** ((u_lo + u_hi) / 2))


def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


# --- transformation tests -------------------------------------------------


def _regime_flip(s: _Slice):
    """Dominant regime at the small end differs from the large end (Fisher, runs as units:
    a regime is a property of each run, and replicate runs at one point are independent draws)."""
    if s.labels is None or len(s.labels) == 0:
        return None
    scales = np.unique(s.ru)
    if len(scales) < MIN_POINTS:
        return None
    small, large, _ = _end_masks(s.ru, scales)
    a = _mode(s.labels[small])
    b = _mode(s.labels[large])
    if a == b:
        return None
    chance = 1.0 / max(2, len(set(s.labels)))
    share_a = np.mean(s.labels[small] == a)
    share_b = np.mean(s.labels[large] == b)
    if share_a <= chance or share_b <= chance:
        return None
    p = max(
        stats.fisher_greater(s.labels[small] == a, s.labels[large] == a),
        stats.fisher_greater(s.labels[large] == b, s.labels[small] == b),
    )
    if p >= ALPHA_REGIME:
        return None
    detail = f"{a} -> {b} (Fisher p={_fmt_p(p)} < {ALPHA_REGIME:g} between the end thirds)"
    return dict(detail=detail, p_value=p, transition=_regime_split(s, scales, a, b), reason="regime_flip")


def _mode(labels: np.ndarray) -> str:
    values, counts = np.unique(labels.astype(str), return_counts=True)
    return str(values[np.argmax(counts)])


def _regime_split(s: _Slice, scales, a, b) -> float:
    """Split between consecutive points that best separates a (left) from b (right)."""
    best, where = -1.0, 0
    for j in range(len(scales) - 1):
        left, right = s.ru <= scales[j], s.ru > scales[j]
        score = np.mean(s.labels[left] == a) + np.mean(s.labels[right] == b)
        if score > best + 1e-12:
            best, where = score, j
    return _geo_mid(scales[where], scales[where + 1])


def _sign_flip(s: _Slice, line: stats.Fit):
    """Signed strength: small-end and large-end means significantly of opposite sign,
    each judged with the trend's error term (so point scatter, not replicate count, sets it)."""
    scales = s.scales
    small, large, _ = _end_masks(s.u, scales)
    m1, m2 = s.y[small].mean(), s.y[large].mean()
    if not (np.sign(m1) * np.sign(m2) < 0) or not line.s2 > 0 or line.df <= 0:
        return None
    p1 = stats.t_sf(abs(m1) / math.sqrt(line.s2 / small.sum()), line.df)
    p2 = stats.t_sf(abs(m2) / math.sqrt(line.s2 / large.sum()), line.df)
    p = float(max(p1, p2))
    if p >= ALPHA_TREND:
        return None
    means = s.scale_means
    cross = [j for j in range(len(scales) - 1) if np.sign(means[j]) != np.sign(means[j + 1])]
    j = cross[len(cross) // 2] if cross else len(scales) // 2 - 1
    sign = "+ -> -" if m1 > 0 else "- -> +"
    detail = f"sign flip {sign} (p={_fmt_p(p)} < {ALPHA_TREND:g} for each end's sign)"
    return dict(detail=detail, p_value=p, transition=_geo_mid(scales[j], scales[j + 1]), reason="sign_flip")


def _quadratic_shape(s: _Slice):
    """Symmetric interior extremum: quadratic term significant, both arms significant."""
    pts = s.pts
    if len(s.scales) < 3:
        return None
    fit, centre = stats.polynomial(pts, 2)
    if fit.df < 1:
        return None
    p = fit.p(2)
    if p >= ALPHA_SHAPE or fit.coef[2] == 0:
        return None
    vertex = centre - fit.coef[1] / (2 * fit.coef[2])
    scales = s.scales
    if not scales[0] < vertex < scales[-1]:
        return None
    j = int(np.argmin(np.abs(scales - vertex)))
    if j == 0 or j == len(scales) - 1:
        return None
    sign = 1.0 if fit.coef[2] > 0 else -1.0  # U: left arm falls, right arm rises
    for (lo, hi), want in zip(((scales[0], scales[j]), (scales[j], scales[-1])), (-sign, sign), strict=True):
        if _arm_p(pts, (pts.u >= lo) & (pts.u <= hi), fit, want) >= ALPHA_ARM:
            return None
    test = f"quadratic term p={_fmt_p(p)} < {ALPHA_SHAPE:g}, both arms p < {ALPHA_ARM:g}"
    return _shape_verdict(fit.coef[2] > 0, vertex, p, test)


def _arm_slope(pts: stats.Points, arm: np.ndarray) -> tuple[float, float]:
    """(slope, sum of squares of u) of a weighted straight line through the points of one arm."""
    u, m, n = pts.u[arm], pts.mean[arm], pts.n[arm]
    ubar = (u @ n) / n.sum()
    sxx = float(((u - ubar) * n) @ (u - ubar))
    if sxx <= 0:
        return 0.0, 0.0
    return float(((u - ubar) * n) @ (m - (m @ n) / n.sum())) / sxx, sxx


def _arm_p(pts: stats.Points, arm: np.ndarray, fit: stats.Fit, want_sign: float) -> float:
    """One-sided p that the slope over the points of one arm has `want_sign` (the fit's noise)."""
    slope, sxx = _arm_slope(pts, arm)
    if sxx <= 0 or not fit.s2 > 0 or fit.df <= 0:
        return 1.0
    return stats.t_sf(want_sign * slope / math.sqrt(fit.s2 / sxx), fit.df)


def _broken_shape(s: _Slice, nulls: _Nulls):
    """Asymmetric interior extremum: a broken line fits better than a straight line
    (Monte Carlo null over the profiled breakpoint) and its arms slope significantly
    in opposite directions. Power where a quadratic fails: a short rise, then a steep fall."""
    h = stats.hinge(s.pts)
    if h is None:
        return None
    left, right = float(h.fit.coef[1]), float(h.fit.coef[2])
    if not left * right < 0:
        return None
    u_shaped = left < 0
    want = -1.0 if u_shaped else 1.0
    if h.slope_p(1, want) >= ALPHA_ARM or h.slope_p(2, -want) >= ALPHA_ARM:
        return None
    p = nulls.p(h)
    if p >= ALPHA_BROKEN:
        return None
    test = f"broken line p={_fmt_p(p)} < {ALPHA_BROKEN:g} against a straight line, both arms p < {ALPHA_ARM:g}"
    return _shape_verdict(u_shaped, h.c, p, test)


def _shape_verdict(u_shaped: bool, vertex: float, p: float, test: str) -> dict:
    shape, extremum = ("U-shaped", "minimum") if u_shaped else ("inverted-U", "maximum")
    where = 10**vertex
    detail = f"{shape} ({extremum} near {where:.3g}; {test})"
    return dict(detail=detail, p_value=p, transition=where, reason="u_shape" if u_shaped else "inverted_u")


# --- the decision -----------------------------------------------------------


def _inconclusive(reason: str, text: str, **extra) -> dict:
    return dict(verdict="inconclusive", detail=text, reason=reason, **extra)


def _more(s: _Slice) -> str:
    """What would decide, in the table's own terms."""
    return f"more {s.replicate} or scale points" if s.replicated else "more models or scale points"


def _precheck(s: _Slice, line: stats.Fit | None) -> tuple[str, str] | None:
    scales = s.scales
    if len(scales) < MIN_POINTS:
        return "too_few_points", f"only {len(scales)} scale point(s) with a finite strength (needs {MIN_POINTS})"
    span = 10 ** (scales[-1] - scales[0])
    if span < MIN_SPAN * (1 - 1e-9):  # log10 round-trip: 800/200 comes back as 3.9999999
        return "span_too_small", f"the axis spans only {span:.2g}x (needs {MIN_SPAN:g}x)"
    if line is None or line.df < MIN_DF:
        if s.replicated and line is not None and line.units == "points":
            return "no_spread", (
                f"the point means scatter around the trend more than the {s.replicate} allow, so the "
                f"{len(scales)} points are the units and leave {line.df} degree(s) of freedom (needs {MIN_DF}): "
                "add scale points"
            )
        return "no_spread", (
            f"too few values to estimate the spread ({len(s.y)} at {len(scales)} points; needs "
            f"{MIN_POINTS + 1}): add {_more(s)}"
        )
    return None


@dataclass
class _Trend:
    """Linear trend of strength on log10(scale): slope per decade and its noise."""

    fit: stats.Fit
    span: float

    @property
    def slope(self) -> float:
        return float(self.fit.coef[1])

    @property
    def se(self) -> float:
        return self.fit.se(1)

    def public(self) -> dict:
        tq = stats.t_quantile(self.fit.df)
        return dict(
            effect=self.slope,
            ci_low=float(self.slope - tq * self.se),
            ci_high=float(self.slope + tq * self.se),
            change=float(self.slope * self.span),
        )


def _linear(s: _Slice) -> _Trend | None:
    if len(s.scales) < 2 or len(s.y) < 3:
        return None
    fit, _ = stats.polynomial(s.pts, 1)
    return _Trend(fit, float(s.scales[-1] - s.scales[0]))


def _decide(s: _Slice, ph: Phenomenon, nulls: _Nulls, explain: bool = False) -> dict:
    """The verdict of one slice (no bootstrap): rules 1-4 of DESIGN.md.

    `explain` adds what only the reported verdict needs (the abrupt-onset test
    behind "emerges"), which the bootstrap's resamples skip."""
    regime = _regime_flip(s)
    trend = _linear(s)
    numbers = trend.public() if trend else {}
    if regime is not None:
        return dict(verdict="transformation", **regime, **numbers)
    if why := _precheck(s, trend.fit if trend else None):
        return _inconclusive(*why, **numbers)
    if ph.signed and (flip := _sign_flip(s, trend.fit)):
        return dict(verdict="transformation", **flip, **numbers)
    if shape := _quadratic_shape(s) or _broken_shape(s, nulls):
        return dict(verdict="transformation", **shape, **numbers)
    return _monotone(s, ph, trend, explain)


def _monotone(s: _Slice, ph: Phenomenon, trend: _Trend, explain: bool) -> dict:
    numbers = trend.public()
    p = trend.fit.p(1)
    scales = s.scales
    present = ph.is_present(s.scale_means)
    change = numbers["change"]
    trend_p = f"p={_fmt_p(p)}"
    if not present.any():
        note = f" (strength trends, {trend_p} < {ALPHA_TREND:g}, but stays below presence)" if p < ALPHA_TREND else ""
        detail = f"never beyond presence {ph.presence:g} at {len(scales)} points{note}"
        return dict(verdict="absent", detail=detail, p_value=p, reason="never_present", **numbers)
    if p < ALPHA_TREND and abs(change) >= ph.min_effect:
        verdict = _expansion_or_shrinkage(s, ph, trend, present, explain)
        return dict(p_value=p, **verdict, **numbers)
    equiv_p = stats.tost(change, trend.se * trend.span, trend.fit.df, ph.min_effect)
    if equiv_p < ALPHA_EQUIV:
        detail = (
            f"change {change:+.3g} across the range is within +-{ph.min_effect:g} "
            f"(equivalence p={_fmt_p(equiv_p)} < {ALPHA_EQUIV:g})"
        )
        if not present.all():
            detail += f" (present at {present.sum()}/{len(scales)} points)"
        return dict(verdict="persistent", detail=detail, p_value=equiv_p, reason="equivalent", **numbers)
    if p < ALPHA_TREND:
        return _inconclusive(
            "below_min_effect",
            f"significant trend ({trend_p} < {ALPHA_TREND:g}) but change {change:+.3g} is below "
            f"min_effect {ph.min_effect:g} and its interval cannot rule out min_effect "
            f"(equivalence p={_fmt_p(equiv_p)}, needs < {ALPHA_EQUIV:g}): {_more(s)} would decide",
            p_value=p,
            **numbers,
        )
    if ph.min_effect > 0:
        return _inconclusive(
            "not_significant",
            f"trend not significant ({trend_p}, needs < {ALPHA_TREND:g}) but cannot rule out a change of "
            f"{ph.min_effect:g} (equivalence p={_fmt_p(equiv_p)}, needs < {ALPHA_EQUIV:g}): {_more(s)} would decide",
            p_value=p,
            **numbers,
        )
    return _inconclusive(
        "no_min_effect",
        f"trend not significant ({trend_p}, needs < {ALPHA_TREND:g}); with min_effect 0 no interval can "
        "show persistence: set min_effect",
        p_value=p,
        **numbers,
    )


def _expansion_or_shrinkage(s, ph, trend: _Trend, present, explain: bool) -> dict:
    more = trend.slope > 0 if ph.direction == "higher" else trend.slope < 0
    verdict = "expansion" if more else "shrinkage"
    moves = "rises" if trend.slope > 0 else "falls"
    detail = f"{'more' if more else 'less'} pronounced with scale (the strength {moves})"
    out = dict(verdict=verdict, detail=detail, transition=math.nan, reason="smooth_trend")
    out["midpoint"] = _midpoint(s) if explain else math.nan
    small, large = _end_presence(s, ph)
    crosses = (more and not small and large) or (not more and small and not large)
    if not (explain and crosses):
        return out
    crossing = _crossing(s.scales, present)
    onset = _abrupt(s, ph, more, trend)
    if onset is None:
        out["detail"] = f"{detail}; crosses presence near {crossing:.3g}; no abrupt onset"
        out["transition"] = crossing
        return out
    where, p = onset
    word = "emerges" if more else "vanishes"
    kind = "onset" if more else "offset"
    flat = "below presence at the small end" if more else "below presence at the large end"
    out["detail"] = (
        f"{word} (abrupt {kind} near {where:.3g}: flat {flat}, and a clipped ramp beats a straight line, "
        f"p={_fmt_p(p)} < {ALPHA_ONSET:g})"
    )
    out.update(transition=where, reason=f"abrupt_{kind}")
    return out


def _abrupt(s: _Slice, ph: Phenomenon, more: bool, trend: _Trend) -> tuple[float, float] | None:
    """An abrupt onset (or offset): flat below presence at one end, then a move a clipped ramp explains.

    The clipped ramp y = a + b clip(u, c1, c2) (flat, linear, flat: a
    piecewise-linear sigmoid in log-scale) must explain the slice
    significantly better than one straight line (parametric-bootstrap null,
    breakpoints profiled); its flat end (small scales for an onset, large for an
    offset) holds at least two points, whose mean is below presence and which
    are flat next to the rise (`_flat`); the ramp moves in the
    strength's direction. Cf. BIG-bench's "breakthroughness" (Srivastava et al.
    2022, appendix B). The onset reported is c1 (c2 for an offset) of a Huber
    refit, robust to one outlying model.
    """
    flat = "low" if more else "high"
    found = stats.ramp(s.pts, flat)
    if found is None:
        return None
    moving = 1.0 if (more == (ph.direction == "higher")) else -1.0  # sign of the ramp's slope
    if not moving * found.b > 0:
        return None
    pts = s.pts
    side = pts.u <= found.c1 if more else pts.u >= found.c2
    if ph.is_present(np.average(pts.mean[side], weights=pts.n[side])):
        return None
    if not _flat(pts, side, found, moving):
        return None
    p = stats.ramp_p(pts, found, flat, trend.fit)
    if p >= ALPHA_ONSET:
        return None
    c1, c2 = stats.robust_ramp_onset(pts, flat)
    return 10 ** (c1 if more else c2), p


def _midpoint(s: _Slice) -> float:
    """Where the strength is halfway between its small-end and large-end levels (each the mean
    of the end's tenth of the points), interpolated in log-scale: the middle of the change,
    whether abrupt or smooth, where an onset is its start. Cross-phenomenon pairs compare it."""
    small, large, _ = _end_masks(s.u, s.scales, share=0.1)
    half = (s.y[small].mean() + s.y[large].mean()) / 2
    means, scales = s.scale_means - half, s.scales
    cross = np.flatnonzero(np.sign(means[:-1]) * np.sign(means[1:]) <= 0)
    if len(cross) == 0:
        return math.nan
    j = int(cross[len(cross) // 2])
    step = means[j + 1] - means[j]
    at = scales[j] if step == 0 else scales[j] - means[j] * (scales[j + 1] - scales[j]) / step
    return float(10**at)


def _end_presence(s: _Slice, ph: Phenomenon) -> tuple[bool, bool]:
    """Whether the phenomenon is present at the small and at the large end: the mean over
    each end's tenth of the scale points (one point for ten or fewer), so that in a table of
    many models one noisy model does not decide it."""
    small, large, _ = _end_masks(s.u, s.scales, share=0.1)
    return bool(ph.is_present(s.y[small].mean())), bool(ph.is_present(s.y[large].mean()))


def _flat(pts: stats.Points, side: np.ndarray, ramp: stats.Ramp, moving: float) -> bool:
    """The flat end is flat next to the rise: its own slope at most `FLAT_SHARE` of the ramp's,
    and significantly (one-sided, `ALPHA_FLAT`) below twice that. A smooth sigmoid's knee
    bends the end of a flat arm a little; a steady log-linear rise has arms as steep as the ramp."""
    slope, sxx = _arm_slope(pts, side)
    rise = abs(ramp.b)
    if sxx <= 0 or moving * slope > FLAT_SHARE * rise:
        return False
    if not (ramp.s2 > 0 and ramp.df > 0):
        return True
    return stats.t_sf((2 * FLAT_SHARE * rise - moving * slope) / math.sqrt(ramp.s2 / sxx), ramp.df) < ALPHA_FLAT


def _crossing(scales: np.ndarray, present: np.ndarray) -> float:
    changes = np.flatnonzero(present[1:] != present[:-1])
    j = int(changes[-1] if present[-1] else changes[0]) if len(changes) else 0
    return _geo_mid(scales[j], scales[j + 1])


def _shape(s: _Slice) -> str:
    """Curvature in log-scale: "accelerating", "decelerating" or "linear".

    Used to compare a metric with its continuous alternative (Schaeffer et
    al. 2023): emergence on exact match that is linear on a smooth metric is
    a sign that the metric, not the model, is abrupt.
    """
    if len(s.scales) < 3 or len(s.y) - 3 < 1:
        return ""
    fit, _ = stats.polynomial(s.pts, 2)
    if fit.df < 1 or fit.p(2) >= 0.05:
        return "linear"
    rising = fit.coef[1] > 0
    return "accelerating" if (fit.coef[2] > 0) == rising else "decelerating"


# --- public API ---------------------------------------------------------------


def _as_rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _make_slice(u_all, y_all, pid_all, labels, replicated: bool, replicate: str, sid_all, scale_values) -> _Slice:
    ok = np.isfinite(y_all)
    ru = u_all if labels is not None else u_all[:0]
    return _Slice(u_all[ok], y_all[ok], pid_all[ok], ru, labels, replicated, replicate, sid_all[ok], scale_values)


def _resampler(pid_all: np.ndarray, scheme: str):
    """Bootstrap draws of run indices and their point ids.

    "runs": rows with replacement (a table with one value per model: each model a unit).
    "within": replicates within each scale point (seeds, when the point means fit the trend).
    "points": whole points with replacement, then replicates within each (a cluster
    bootstrap, when the point means scatter more than the replicates allow)."""
    order = np.argsort(pid_all, kind="stable")
    _, counts = np.unique(pid_all, return_counts=True)
    starts = np.cumsum(counts) - counts
    run_starts, run_sizes = np.repeat(starts, counts), np.repeat(counts, counts)
    n, n_pts = len(pid_all), len(counts)

    def draw(gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if scheme == "runs":
            idx = gen.integers(0, n, size=n)
            return idx, pid_all[idx]
        if scheme == "within":
            idx = order[run_starts + gen.integers(0, run_sizes)]
            return idx, pid_all[idx]
        picks = gen.integers(0, n_pts, size=n_pts)
        sizes = counts[picks]
        offsets = gen.integers(0, np.repeat(sizes, sizes))
        idx = order[np.repeat(starts[picks], sizes) + offsets]
        return idx, np.repeat(np.arange(n_pts), sizes)

    return draw


def _noise_words(s: _Slice, trend: _Trend | None) -> tuple[str, str]:
    """(noise column, bootstrap scheme) for the slice."""
    if not s.replicated:
        return "one value per model; noise from the scatter around the trend", "runs"
    if trend is not None and trend.fit.units == "points":
        return f"scatter of the point means ({s.replicate} agree more closely than the points do)", "points"
    return f"{s.replicate} (the point means fit the trend)", "within"


def classify_slice(
    points: pd.DataFrame,
    *,
    x: str,
    phenomenon: Phenomenon,
    seed: str | None = "seed",
    n_boot: int = 200,
    rng: np.random.Generator | int = 0,
) -> dict:
    """Classify one slice: `points` has columns `x`, "strength", optional "regime", seed.

    Returns a dict with the keys of `VERDICT_COLUMNS` except phenomenon/axis/
    slice, plus `change` (across the range), `noise`, `shape` and `reason`. With
    `n_boot=0` the confidence is NaN (fast path used by the calibration tests).
    """
    xs = pd.to_numeric(points[x], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(xs) & (xs > 0)
    u_all = np.log10(xs[keep])
    y_all = pd.to_numeric(points["strength"], errors="coerce").to_numpy(dtype=float)[keep]
    y_all = np.where(np.isfinite(y_all), y_all, np.nan)
    labels = None
    if "regime" in points.columns:
        labels = points["regime"].to_numpy()[keep].astype(object)
        labels = np.where(pd.isna(labels), "other", labels).astype(str)
    scale_values, pid_all = np.unique(u_all, return_inverse=True)
    replicated = stats.is_replicated(u_all[np.isfinite(y_all)])
    replicate = "seeds" if seed and seed in points.columns else "replicates"
    s = _make_slice(u_all, y_all, pid_all, labels, replicated, replicate, pid_all, scale_values)
    nulls = _Nulls(s.pts)
    result = _blank() | _decide(s, phenomenon, nulls, explain=True)
    result["shape"] = _shape(s)
    result["noise"], scheme = _noise_words(s, _linear(s))
    result["n_points"] = int(len(s.scales))
    result["n_seeds"] = _n_seeds(points.loc[keep], seed, s)
    dropped = int((~np.isfinite(y_all)).sum())
    if dropped:
        result["detail"] += f"; {dropped} run(s) without a finite strength left out of the trend"
    off_axis = int((~keep).sum())
    if off_axis:
        result["detail"] += f"; {off_axis} row(s) without a positive value of {x} left out"
    result["n_left_out"] = dropped + off_axis
    if n_boot > 0 and len(u_all):
        draw, gen, same = _resampler(pid_all, scheme), _as_rng(rng), 0
        for _ in range(n_boot):
            idx, pid = draw(gen)
            rep_labels = None if labels is None else labels[idx]
            rep = _make_slice(u_all[idx], y_all[idx], pid, rep_labels, replicated, "", pid_all[idx], scale_values)
            same += _decide(rep, phenomenon, nulls)["verdict"] == result["verdict"]
        result["confidence"] = same / n_boot
    return result


def _blank() -> dict:
    nan = math.nan
    return dict(
        verdict="inconclusive",
        detail="",
        confidence=nan,
        effect=nan,
        ci_low=nan,
        ci_high=nan,
        p_value=nan,
        transition=nan,
        n_points=0,
        n_seeds=0,
        change=nan,
        reason="",
        n_left_out=0,
        midpoint=nan,
    )


def _n_seeds(points: pd.DataFrame, seed: str | None, s: _Slice) -> int:
    if len(s.u) == 0:
        return 0
    if not s.replicated:
        return 1
    if seed and seed in points.columns:
        return int(points[seed].nunique())
    return int(np.unique(s.u, return_counts=True)[1].max())


def log_bins(values: pd.Series, per_decade: int = 2) -> pd.Series:
    """Round a continuous scale to `per_decade` bins per decade (log10 units).

    Published tables have irregular scales (e.g. Chinchilla's D = C / 6N):
    slicing one axis "at fixed other axis" then needs bins of the other.
    """
    u = np.log10(pd.to_numeric(values, errors="coerce").where(lambda v: v > 0))
    return np.round(u * per_decade) / per_decade


_DROP_STATUS = {"FAILED", "KILLED", "RUNNING", "SCHEDULED"}


def _alternative(points: pd.DataFrame, x: str, ph: Phenomenon, seed, n_boot, gen) -> dict:
    """Verdict on the alternative continuous metric, with presence switched off."""
    inf = math.inf if ph.direction == "lower" else -math.inf
    alt = ph.model_copy(update=dict(presence=inf, min_effect=0.0, regimes=None, signed=False))
    pts = points.drop(columns=["regime"], errors="ignore").assign(strength=points["alternative"])
    return classify_slice(pts, x=x, phenomenon=alt, seed=seed, n_boot=n_boot, rng=gen)


def _flag(row: dict, alt: dict) -> str:
    """Flag when the metric and its continuous alternative tell different stories."""
    a, b = row["verdict"], alt["verdict"]
    decided = "inconclusive" not in (a, b)
    differ = a != b and (a in TRENDS or b in TRENDS)
    reshaped = a == b and a in TRENDS and alt["shape"] and alt["shape"] != row["shape"]
    if decided and (differ or reshaped):
        return (
            f"metric disagreement (Schaeffer et al. 2023): {row['verdict']} "
            f"({row['shape'] or '?'}) on the metric, {alt['verdict']} "
            f"({alt['shape'] or '?'}) on the alternative"
        )
    return ""


def classify_runs(
    runs: pd.DataFrame,
    phenomena: list[Phenomenon],
    axes: list[str],
    grid: list[str],
    seed: str | None = "seed",
    n_boot: int = 200,
    rng: np.random.Generator | int = 0,
    fdr: float | None = 0.05,
) -> pd.DataFrame:
    """Verdicts for every phenomenon, axis (with >1 value) and slice of a runs table.

    A slice holds the runs that share every other axis and grid value. A phenomenon with
    `over: step` is classified along `step` instead, one slice per scale point, on its
    per-step strength (`steps.step_rows`: the runs need their step series attached). Pass
    independent axes, plus derived ones of `slices.DERIVED_AXES` (sliced as the
    diagonal, see there). Failed runs are left out; diverged runs are data. After
    all slices are classified, p-values are adjusted with Benjamini &
    Hochberg (1995); a trend whose adjusted p exceeds `fdr` is demoted to
    inconclusive (set `fdr=None` to only report `p_adjusted`).
    """
    return classify_jobs(slice_jobs(runs, phenomena, axes, grid, seed, n_boot), rng, fdr)


def slice_jobs(
    runs: pd.DataFrame, phenomena: list[Phenomenon], axes: list[str], grid: list[str], seed: str | None, n_boot: int
) -> list[tuple]:
    """One job per (phenomenon, axis, slice): what `classify_jobs` classifies. Callers that
    classify several tables at once (`classify TABLE.csv`, one per group) pool their jobs."""
    runs = usable_runs(runs, [*axes, *grid])
    seed = seed if seed and seed in runs.columns else None
    jobs = []
    for ph in phenomena:
        if steps.over_steps(ph):  # a per-step strength: along the training step, within each scale point
            rows = steps.step_rows(runs, ph)
            jobs.extend(
                (ph, steps.AXIS, label, pts, seed, n_boot) for label, pts in slices(rows, steps.AXIS, axes, grid)
            )
            continue
        ev = evaluate(runs, ph)
        for axis in axes:
            if runs[axis].nunique() <= 1:
                continue
            jobs.extend((ph, axis, label, points, seed, n_boot) for label, points in slices(ev, axis, axes, grid))
    return jobs


def classify_jobs(jobs: list[tuple], rng: np.random.Generator | int = 0, fdr: float | None = 0.05) -> pd.DataFrame:
    """The verdicts of `slice_jobs`, p-values adjusted (see `classify_runs`)."""
    return submit_jobs(jobs, rng)(fdr)


def submit_jobs(jobs: list[tuple], rng: np.random.Generator | int = 0) -> Callable[[float | None], pd.DataFrame]:
    """Start classifying `jobs` (in worker processes when worthwhile) and return the function
    that waits for their verdicts, adjusted at `fdr`: the caller may do other work meanwhile
    (`classify TABLE.csv` imports matplotlib for its report while the workers classify)."""
    # One random stream per slice, spawned from `rng`: the verdicts do not depend on how
    # many processes classify them, or in which order.
    streams = _as_rng(rng).spawn(len(jobs))
    seeded = [(*job, gen) for job, gen in zip(jobs, streams, strict=True)]
    workers = min(os.cpu_count() or 1, len(seeded))
    context = _pool_context()
    pool = None
    if workers >= 2 and sum(job[5] for job in seeded) >= PARALLEL_MIN_BOOTSTRAPS[context.get_start_method()]:
        pool = ProcessPoolExecutor(workers, mp_context=context)
        results = pool.map(_classify_job, seeded, chunksize=max(1, len(seeded) // (4 * workers)))

    def verdicts(fdr: float | None = 0.05) -> pd.DataFrame:
        if pool is None:
            rows = [_classify_group(*job) for job in seeded]
        else:
            with pool:
                rows = list(results)
        return adjust_p_values(pd.DataFrame(rows, columns=[*VERDICT_COLUMNS, *EXTRA_COLUMNS]), fdr)

    return verdicts


# Below this many bootstrap decisions, starting worker processes costs more than it saves:
# a forked worker starts in milliseconds, a spawned one imports numpy, pandas and scipy (~1 s).
# Across cores, 10^4 runs classify in ~7 s instead of 13 s on 2.
PARALLEL_MIN_BOOTSTRAPS = {"fork": 1_000, "spawn": 20_000}


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork where it is safe: a process with no other thread (the `classify` command), on a
    platform that has it. Otherwise spawn: a driver holds threads (Ray, MLflow) that a fork
    would copy mid-lock."""
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _classify_job(job: tuple) -> dict:
    return _classify_group(*job)


def usable_runs(runs: pd.DataFrame, needed: list[str]) -> pd.DataFrame:
    missing = missing_columns(runs, needed)
    if missing:
        valid = ", ".join(map(str, runs.columns))
        raise UserError(f"runs table has no column(s) {', '.join(missing)}; columns are: {valid}.")
    if "status" in runs.columns:
        runs = runs[~runs["status"].astype(str).str.upper().isin(_DROP_STATUS)]
    return runs


def _classify_group(ph, axis, label, points, seed, n_boot, gen) -> dict:
    row = dict(phenomenon=ph.name, axis=axis, slice=label)
    row |= classify_slice(points, x=axis, phenomenon=ph, seed=seed, n_boot=n_boot, rng=gen)
    row |= dict(alt_verdict="", alt_detail="", flag="")
    if "alternative" in points.columns and np.isfinite(points["alternative"]).any():
        alt = _alternative(points, axis, ph, seed, n_boot, gen)
        row |= dict(alt_verdict=alt["verdict"], alt_detail=alt["detail"], flag=_flag(row, alt))
    return row


def adjust_p_values(frame: pd.DataFrame, fdr: float | None) -> pd.DataFrame:
    """Benjamini-Hochberg within each family: one phenomenon along one axis (its slices).

    The family is what one question ("how does X change along this axis?")
    tests; unrelated metrics classified in the same call do not change a
    slice's verdict. A trend whose adjusted p exceeds `fdr` is demoted to
    inconclusive (reason `not_significant_after_fdr`); `fdr=None` only adjusts."""
    frame = frame.reset_index(drop=True)
    frame["p_adjusted"] = math.nan
    for _, family in frame.groupby(["phenomenon", "axis"], sort=False):
        frame.loc[family.index, "p_adjusted"] = stats.benjamini_hochberg(family["p_value"].to_numpy(dtype=float))
    if fdr is not None and len(frame):
        sizes = frame.groupby(["phenomenon", "axis"], sort=False)["verdict"].transform("size")
        demote = frame["verdict"].isin(TRENDS) & (frame["p_adjusted"] > fdr)
        for i in np.flatnonzero(demote.to_numpy()):
            old, p_adj = frame.at[i, "verdict"], frame.at[i, "p_adjusted"]
            frame.at[i, "detail"] = (
                f"{old} ({frame.at[i, 'detail']}) not significant after Benjamini-Hochberg over the "
                f"{sizes.iat[i]} slices of {frame.at[i, 'phenomenon']} along {frame.at[i, 'axis']} "
                f"(adjusted p={p_adj:.2g} > {fdr:g})"
            )
            frame.at[i, "verdict"] = "inconclusive"
            frame.at[i, "reason"] = "not_significant_after_fdr"
    return frame
