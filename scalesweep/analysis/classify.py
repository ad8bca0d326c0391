"""The classifier: how does a phenomenon change along a scale axis?

Per (phenomenon, axis, slice) it returns one of `VERDICTS` with its evidence.
The rules are those of DESIGN.md ("The classifier"); the statistics are:

* Work in u = log10(x); seeds are averaged at each scale point implicitly by
  ordinary least squares on the runs (balanced seeds: identical to fitting the
  point means). The noise is the residual spread around the fitted trend, which
  pools seed-to-seed spread (pure error) with scatter of the point means. It
  is exact under the null of a flat trend and conservative otherwise, and it
  is also what makes tables with one value per scale point (published results,
  no seeds) usable: their noise is estimated from the residuals alone.
* The trend test is the t-test of the slope (per decade). Non-monotonicity is
  the t-test of the quadratic term with the fitted vertex inside the range and
  both arms sloping significantly in opposite directions (so a saturating
  curve is not called U-shaped). The two tests share the error budget: a
  noise-only slice gets a trend verdict (expansion, shrinkage or
  transformation) at most at `ALPHA_TREND + ALPHA_SHAPE` (4.25 %, below the nominal 5 %).
* Regime flips (Liu et al. 2022 phases) are tested with one-sided Fisher
  exact tests between the small-end and large-end thirds of the scale points.
* Persistence is an equivalence test (two one-sided tests, Schuirmann 1987):
  the 90 % interval of the change across the range lies within +-min_effect.
* Confidence is the share of bootstrap resamples (runs within each scale
  point when there are seeds, scale points otherwise) that give the same
  verdict.
* `classify_runs` adjusts the p-values of all verdicts of a study with
  Benjamini & Hochberg (1995) and demotes trend calls that do not survive at
  `fdr` to inconclusive, saying so in `detail`.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import special, stats

from scalesweep.analysis.phenomena import Phenomenon, evaluate
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
EXTRA_COLUMNS = ["change", "p_adjusted", "noise", "alt_verdict", "alt_detail", "flag"]
VERDICTS = ("expansion", "shrinkage", "transformation", "persistent", "absent", "inconclusive")
TRENDS = ("expansion", "shrinkage", "transformation")

ALPHA_TREND = 0.035  # slope test
ALPHA_SHAPE = 0.0075  # quadratic term test (non-monotonic)
ALPHA_ARM = 0.05  # each arm of a U / inverted U, one-sided
ALPHA_REGIME = 0.05  # Fisher tests of a regime flip, one-sided each
ALPHA_EQUIV = 0.05  # TOST for persistence
MIN_POINTS = 3
MIN_SPAN = 4.0
MIN_DF = 2


@dataclass
class _Slice:
    """Arrays of one slice: u = log10(scale) per run, strength, regime labels."""

    u: np.ndarray  # runs with finite strength
    y: np.ndarray
    ru: np.ndarray  # runs with a regime label (strength may be NaN)
    labels: np.ndarray | None

    @cached_property  # read several times per decision, and the bootstrap makes ~10^5 decisions
    def points(self) -> np.ndarray:
        return np.unique(self.u)


def _ols(u: np.ndarray, y: np.ndarray, degree: int):
    """Least squares on centred u; returns coefficients, covariance, df, s2."""
    uc = u - u.mean()
    design = np.vander(uc, degree + 1, increasing=True)
    try:  # normal equations: u is centred and degree <= 2, so well conditioned, and 3x faster than lstsq
        inverse = np.linalg.inv(design.T @ design)
        coef = inverse @ (design.T @ y)
    except np.linalg.LinAlgError:  # fewer distinct scale points than coefficients
        inverse = np.full((degree + 1, degree + 1), math.nan)
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    df = len(y) - degree - 1
    resid = y - design @ coef
    s2 = float(resid @ resid) / df if df > 0 else math.nan
    tiny = 1e-9 * (float(np.abs(y).max()) + 1e-300) if len(y) else 0.0
    if s2 < tiny**2:  # exact fit (e.g. a constant strength): no noise at all
        s2 = 0.0
        reach = float(np.abs(uc).max()) + 1e-300
        coef = np.where(np.abs(coef) * reach ** np.arange(degree + 1) < tiny, 0.0, coef)
    return coef, s2 * inverse, df, s2


def _t_p(est: float, se: float, df: int) -> float:
    if not (se > 0 and df > 0):
        return 0.0 if se == 0 and est != 0 and df > 0 else 1.0
    if abs(est) < 1e-9 * se:
        return 1.0
    return float(2 * _t_sf(abs(est / se), df))


def _t_sf(t: float, df: int) -> float:
    """stats.t.sf(t, df), computed by the same special function without scipy.stats' per-call
    argument handling (about 50x faster: the bootstrap calls it some 10^5 times per study)."""
    return float(special.stdtr(df, -t))


def _point_means(u: np.ndarray, y: np.ndarray):
    pts, inv, counts = np.unique(u, return_inverse=True, return_counts=True)
    return pts, np.bincount(inv, weights=y) / counts, counts


def _end_masks(u: np.ndarray, pts: np.ndarray):
    k = max(1, math.ceil(len(pts) / 3))
    return u <= pts[k - 1], u >= pts[-k], k


def _geo_mid(u_lo: float, u_hi: float) -> float:
    return float(10 ** ((u_lo + u_hi) / 2))


# --- transformation tests -------------------------------------------------


def _regime_flip(s: _Slice):
    """Dominant regime at the small end differs from the large end (Fisher)."""
    if s.labels is None or len(s.labels) == 0:
        return None
    pts = np.unique(s.ru)
    if len(pts) < MIN_POINTS:
        return None
    small, large, _ = _end_masks(s.ru, pts)
    a = _mode(s.labels[small])
    b = _mode(s.labels[large])
    if a == b:
        return None
    chance = 1.0 / max(2, len(set(s.labels)))
    share_a = np.mean(s.labels[small] == a)
    share_b = np.mean(s.labels[large] == b)
    if share_a <= chance or share_b <= chance:
        return None
    p = max(_fisher(s.labels, small, large, a), _fisher(s.labels, large, small, b))
    if p >= ALPHA_REGIME:
        return None
    return dict(detail=f"{a} -> {b}", p_value=p, transition=_regime_split(s, pts, a, b))


def _mode(labels: np.ndarray) -> str:
    values, counts = np.unique(labels.astype(str), return_counts=True)
    return str(values[np.argmax(counts)])


def _fisher(labels, here, there, label) -> float:
    h, t = labels[here] == label, labels[there] == label
    table = [[h.sum(), (~h).sum()], [t.sum(), (~t).sum()]]
    return float(stats.fisher_exact(table, alternative="greater")[1])


def _regime_split(s: _Slice, pts, a, b) -> float:
    """Split between consecutive points that best separates a (left) from b (right)."""
    best, where = -1.0, 0
    for j in range(len(pts) - 1):
        left, right = s.ru <= pts[j], s.ru > pts[j]
        score = np.mean(s.labels[left] == a) + np.mean(s.labels[right] == b)
        if score > best + 1e-12:
            best, where = score, j
    return _geo_mid(pts[where], pts[where + 1])


def _sign_flip(s: _Slice, s2: float, df: int):
    """Signed strength: small-end and large-end means significantly of opposite sign."""
    pts = s.points
    small, large, _ = _end_masks(s.u, pts)
    m1, m2 = s.y[small].mean(), s.y[large].mean()
    if not (np.sign(m1) * np.sign(m2) < 0) or not s2 > 0:
        return None
    p1 = _t_sf(abs(m1) / math.sqrt(s2 / small.sum()), df)
    p2 = _t_sf(abs(m2) / math.sqrt(s2 / large.sum()), df)
    p = float(max(p1, p2))
    if p >= ALPHA_TREND:
        return None
    pm = _point_means(s.u, s.y)[1]
    cross = [j for j in range(len(pts) - 1) if np.sign(pm[j]) != np.sign(pm[j + 1])]
    j = cross[len(cross) // 2] if cross else len(pts) // 2 - 1
    sign = "+ -> -" if m1 > 0 else "- -> +"
    return dict(detail=f"sign flip {sign}", p_value=p, transition=_geo_mid(pts[j], pts[j + 1]))


def _non_monotone(s: _Slice):
    """Interior extremum: quadratic term significant, both arms significant."""
    pts = s.points
    if len(pts) < 3 or len(s.y) - 3 < MIN_DF:
        return None
    coef, cov, df, s2 = _ols(s.u, s.y, 2)
    p = _t_p(coef[2], math.sqrt(max(cov[2, 2], 0.0)), df)
    if p >= ALPHA_SHAPE or coef[2] == 0:
        return None
    vertex = s.u.mean() - coef[1] / (2 * coef[2])
    if not pts[0] < vertex < pts[-1]:
        return None
    j = int(np.argmin(np.abs(pts - vertex)))
    if j == 0 or j == len(pts) - 1:
        return None
    sign = 1.0 if coef[2] > 0 else -1.0  # U: left arm falls, right arm rises
    for lo, hi, want in ((pts[0], pts[j], -sign), (pts[j], pts[-1], sign)):
        arm = (s.u >= lo) & (s.u <= hi)
        if _arm_p(s.u[arm], s.y[arm], s2, df, want) >= ALPHA_ARM:
            return None
    shape = "U-shaped" if coef[2] > 0 else "inverted-U"
    extremum = "minimum" if coef[2] > 0 else "maximum"
    where = 10**vertex
    return dict(detail=f"{shape} ({extremum} near {where:.3g})", p_value=p, transition=where)


def _arm_p(u, y, s2, df, want_sign) -> float:
    """One-sided p that the slope on one arm has `want_sign` (pooled noise s2)."""
    uc = u - u.mean()
    sxx = float(uc @ uc)
    if sxx <= 0 or not s2 > 0:
        return 1.0
    slope = float(uc @ (y - y.mean())) / sxx
    return float(_t_sf(want_sign * slope / math.sqrt(s2 / sxx), df))


# --- the decision -----------------------------------------------------------


def _inconclusive(reason: str, **extra) -> dict:
    return dict(verdict="inconclusive", detail=reason, **extra)


def _precheck(s: _Slice) -> str | None:
    pts = s.points
    if len(pts) < MIN_POINTS:
        return f"only {len(pts)} scale point(s) with a finite strength (need {MIN_POINTS})"
    span = 10 ** (pts[-1] - pts[0])
    if span < MIN_SPAN * (1 - 1e-9):  # log10 round-trip: 800/200 comes back as 3.9999999
        return f"the axis spans only {span:.2g}x (need {MIN_SPAN:g}x)"
    if len(s.y) - 2 < MIN_DF:
        return f"too few runs to estimate the spread ({len(s.y)} runs at {len(pts)} points; add seeds or scale points)"
    return None


@dataclass
class _Fit:
    """Linear trend of strength on log10(scale): slope per decade and its noise."""

    slope: float
    se: float
    df: int
    s2: float
    span: float

    def public(self) -> dict:
        tq = float(special.stdtrit(self.df, 0.975)) if self.df > 0 else math.inf
        return dict(
            effect=self.slope,
            ci_low=float(self.slope - tq * self.se),
            ci_high=float(self.slope + tq * self.se),
            change=float(self.slope * self.span),
        )


def _linear(s: _Slice) -> _Fit:
    coef, cov, df, s2 = _ols(s.u, s.y, 1)
    span = float(s.u.max() - s.u.min())
    slope, se = float(coef[1]), math.sqrt(max(cov[1, 1], 0.0))
    return _Fit(slope, se, df, s2, span)


def _decide(s: _Slice, ph: Phenomenon) -> dict:
    """The verdict of one slice (no bootstrap): rules 1-4 of DESIGN.md."""
    regime = _regime_flip(s)
    why = _precheck(s)
    fit = _linear(s) if len(s.points) >= 2 and len(s.y) >= 3 else None
    numbers = fit.public() if fit else {}
    if regime is not None:
        return dict(verdict="transformation", **regime, **numbers)
    if why:
        return _inconclusive(why, **numbers)
    if ph.signed and (flip := _sign_flip(s, fit.s2, fit.df)):
        return dict(verdict="transformation", **flip, **numbers)
    if shape := _non_monotone(s):
        return dict(verdict="transformation", **shape, **numbers)
    return _monotone(s, ph, fit)


def _monotone(s: _Slice, ph: Phenomenon, fit: _Fit) -> dict:
    numbers = fit.public()
    p = _t_p(fit.slope, fit.se, fit.df)
    pts, means, _ = _point_means(s.u, s.y)
    present = ph.is_present(means)
    change = numbers["change"]
    if not present.any():
        note = f" (strength trends, p={p:.2g}, but stays below presence)" if p < ALPHA_TREND else ""
        detail = f"never present at {len(pts)} points{note}"
        return dict(verdict="absent", detail=detail, p_value=p, **numbers)
    if p < ALPHA_TREND and abs(change) >= ph.min_effect:
        return _expansion_or_shrinkage(pts, means, present, fit.slope, p, ph, numbers)
    equiv_p = _tost(change, fit.se * fit.span, fit.df, ph.min_effect)
    if equiv_p < ALPHA_EQUIV:
        detail = f"change {change:+.3g} across the range is within +-{ph.min_effect:g}"
        if not present.all():
            detail += f" (present at {present.sum()}/{len(pts)} points)"
        return dict(verdict="persistent", detail=detail, p_value=equiv_p, **numbers)
    if p < ALPHA_TREND:
        why = (
            f"significant trend (p={p:.2g}) but change {change:+.3g} is below "
            f"min_effect {ph.min_effect:g} and its interval cannot rule out min_effect"
        )
    elif ph.min_effect > 0:
        why = (
            f"trend not significant (p={p:.2g}) but cannot rule out a change of "
            f"{ph.min_effect:g}: more seeds/points would decide"
        )
    else:
        why = (
            f"trend not significant (p={p:.2g}); with min_effect 0 no interval can "
            "show persistence: more seeds/points would decide"
        )
    return _inconclusive(why, p_value=p, **numbers)


def _tost(change: float, se: float, df: int, margin: float) -> float:
    if margin <= 0 or df <= 0:
        return 1.0
    if se == 0:
        return 0.0 if abs(change) < margin else 1.0
    lo = _t_sf((change + margin) / se, df)
    hi = _t_sf(-(change - margin) / se, df)
    return float(max(lo, hi))


def _expansion_or_shrinkage(pts, means, present, slope, p, ph, numbers) -> dict:
    more = slope > 0 if ph.direction == "higher" else slope < 0
    verdict = "expansion" if more else "shrinkage"
    detail = f"{'more' if more else 'less'} pronounced with scale"
    transition = math.nan
    if more and not present[0] and present[-1]:
        detail, transition = "emerges", _crossing(pts, present)
    elif not more and present[0] and not present[-1]:
        detail, transition = "vanishes", _crossing(pts, present)
    return dict(verdict=verdict, detail=detail, p_value=p, transition=transition, **numbers)


def _crossing(pts: np.ndarray, present: np.ndarray) -> float:
    changes = np.flatnonzero(present[1:] != present[:-1])
    j = int(changes[-1] if present[-1] else changes[0]) if len(changes) else 0
    return _geo_mid(pts[j], pts[j + 1])


def _shape(s: _Slice) -> str:
    """Curvature in log-scale: "accelerating", "decelerating" or "linear".

    Used to compare a metric with its continuous alternative (Schaeffer et
    al. 2023): emergence on exact match that is linear on a smooth metric is
    a sign that the metric, not the model, is abrupt.
    """
    if len(s.points) < 3 or len(s.y) - 3 < 1:
        return ""
    coef, cov, df, _ = _ols(s.u, s.y, 2)
    if _t_p(coef[2], math.sqrt(max(cov[2, 2], 0.0)), df) >= 0.05:
        return "linear"
    rising = coef[1] > 0
    return "accelerating" if (coef[2] > 0) == rising else "decelerating"


# --- public API ---------------------------------------------------------------


def _as_rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _make_slice(u_all: np.ndarray, y_all: np.ndarray, labels: np.ndarray | None) -> _Slice:
    ok = np.isfinite(y_all)
    if labels is None:
        return _Slice(u_all[ok], y_all[ok], u_all[:0], None)
    return _Slice(u_all[ok], y_all[ok], u_all, labels)


def _resampler(u_all: np.ndarray, y_all: np.ndarray):
    """Bootstrap indices: runs within each scale point, or whole points when no seeds."""
    _, inv, counts = np.unique(u_all, return_inverse=True, return_counts=True)
    groups = [np.flatnonzero(inv == k) for k in range(len(counts))]
    finite_counts = np.bincount(inv, weights=np.isfinite(y_all), minlength=len(counts))
    has_seeds = bool((finite_counts >= 2).any())
    members = np.concatenate(groups) if groups else np.zeros(0, dtype=int)
    starts, sizes = np.repeat(np.cumsum(counts) - counts, counts), np.repeat(counts, counts)

    def draw(gen: np.random.Generator) -> np.ndarray:
        if has_seeds:  # = concatenate([gen.choice(g, size=len(g)) for g in groups]): same draws, one call
            return members[starts + gen.integers(0, sizes)]
        picks = gen.integers(0, len(groups), size=len(groups))
        return np.concatenate([groups[k] for k in picks])

    return draw, has_seeds


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
    slice, plus `change` (across the range), `noise` and `shape`. With
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
    s = _make_slice(u_all, y_all, labels)
    result = _blank() | _decide(s, phenomenon)
    result["shape"] = _shape(s)
    draw, has_seeds = _resampler(u_all, y_all)
    result["noise"] = "seeds" if has_seeds else "residuals (one value per point)"
    result["n_points"] = int(len(np.unique(s.u)))
    result["n_seeds"] = _n_seeds(points.loc[keep], seed, s)
    dropped = int((~np.isfinite(y_all)).sum())
    if dropped:
        result["detail"] += f"; {dropped} run(s) without a finite strength left out of the trend"
    if n_boot > 0 and len(u_all):
        gen = _as_rng(rng)
        same = 0
        for _ in range(n_boot):
            idx = draw(gen)
            rep = _make_slice(u_all[idx], y_all[idx], None if labels is None else labels[idx])
            same += _decide(rep, phenomenon)["verdict"] == result["verdict"]
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
    )


def _n_seeds(points: pd.DataFrame, seed: str | None, s: _Slice) -> int:
    if seed and seed in points.columns:
        return int(points[seed].nunique())
    if len(s.u) == 0:
        return 0
    return int(np.unique(s.u, return_counts=True)[1].max())


def log_bins(values: pd.Series, per_decade: int = 2) -> pd.Series:
    """Round a continuous scale to `per_decade` bins per decade (log10 units).

    Published tables have irregular scales (e.g. Chinchilla's D = C / 6N):
    slicing one axis "at fixed other axis" then needs bins of the other.
    """
    u = np.log10(pd.to_numeric(values, errors="coerce").where(lambda v: v > 0))
    return np.round(u * per_decade) / per_decade


def benjamini_hochberg(p: Sequence[float]) -> np.ndarray:
    """Benjamini & Hochberg (1995) adjusted p-values; NaN stays NaN."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok) == 0:
        return out
    order = ok[np.argsort(p[ok])]
    m = len(ok)
    adj = p[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(adj[::-1])[::-1]
    out[order] = np.clip(adj, 0, 1)
    return out


_DROP_STATUS = {"FAILED", "KILLED", "RUNNING", "SCHEDULED"}


# Axes computed from other columns (compute ≈ 6 · n_params · examples seen). Never a slice
# column along another axis (each run would be its own slice); along one, the columns it is
# made of vary with it, so they do not slice either: "along compute" is the study's diagonal.
DERIVED_AXES = {"compute": ("model_size", "data_size", "n_params", "budget")}


def slice_columns(runs: pd.DataFrame, axis: str, axes, grid) -> list[str]:
    """Other axes and grid columns, minus mere relabellings of `axis` (n_params) and derived axes."""
    cols: list[str] = []
    skip = {axis, *DERIVED_AXES, *DERIVED_AXES.get(axis, ())}
    for col in [*axes, *grid]:
        if col in skip or col not in runs.columns or col in cols:
            continue
        if not any(_relabels(runs, col, other) for other in [axis, *cols]):
            cols.append(col)
    return cols


def _relabels(runs: pd.DataFrame, a: str, b: str) -> bool:
    """True when columns a and b determine each other (e.g. model_size, n_params)."""
    return (
        runs.groupby(a, dropna=False)[b].nunique(dropna=False).max() <= 1
        and runs.groupby(b, dropna=False)[a].nunique(dropna=False).max() <= 1
    )


def slice_label(cols: list[str], key) -> str:
    if not cols:
        return "all"
    key = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{c}={_fmt(v)}" for c, v in zip(cols, key, strict=True))


def _fmt(value) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:g}"
    return str(value)


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

    A slice holds the runs that share every other axis and grid value. Pass
    independent axes, plus derived ones of `DERIVED_AXES` (sliced as the
    diagonal, see there). Failed runs are left out; diverged runs are data. After
    all slices are classified, p-values are adjusted with Benjamini &
    Hochberg (1995); a trend whose adjusted p exceeds `fdr` is demoted to
    inconclusive (set `fdr=None` to only report `p_adjusted`).
    """
    runs = usable_runs(runs, [*axes, *grid])
    seed = seed if seed and seed in runs.columns else None
    jobs = []
    for ph in phenomena:
        ev = evaluate(runs, ph)
        for axis in axes:
            if runs[axis].nunique() <= 1:
                continue
            cols = slice_columns(runs, axis, axes, grid)
            groups = ev.groupby(cols, dropna=False, sort=True) if cols else [((), ev)]
            jobs.extend((ph, axis, slice_label(cols, key), points, seed, n_boot) for key, points in groups)
    # One random stream per slice, spawned from `rng`: the verdicts do not depend on how
    # many processes classify them, or in which order.
    streams = _as_rng(rng).spawn(len(jobs))
    return _finish(_run_jobs([(*job, gen) for job, gen in zip(jobs, streams, strict=True)]), fdr)


PARALLEL_MIN_BOOTSTRAPS = 20_000  # below this, starting worker processes costs more than it saves


def _run_jobs(jobs: list[tuple]) -> list[dict]:
    """Classify every slice; across CPU cores when the bootstraps are many (10^4 runs: 13 s -> ~7 s on 2)."""
    workers = min(os.cpu_count() or 1, len(jobs))
    if workers < 2 or sum(job[5] for job in jobs) < PARALLEL_MIN_BOOTSTRAPS:
        return [_classify_group(*job) for job in jobs]
    # spawn, not fork: the caller may hold threads (Ray, MLflow) that a fork would copy mid-lock
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_classify_job, jobs, chunksize=max(1, len(jobs) // (4 * workers))))


def _classify_job(job: tuple) -> dict:
    return _classify_group(*job)


def usable_runs(runs: pd.DataFrame, needed: list[str]) -> pd.DataFrame:
    missing = [c for c in needed if c not in runs.columns]
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


def _finish(rows: list[dict], fdr: float | None) -> pd.DataFrame:
    extra = [*EXTRA_COLUMNS, "shape"]
    frame = pd.DataFrame(rows, columns=[*VERDICT_COLUMNS, *extra])
    frame["p_adjusted"] = benjamini_hochberg(frame["p_value"].to_numpy(dtype=float))
    if fdr is not None and len(frame):
        demote = frame["verdict"].isin(TRENDS) & (frame["p_adjusted"] > fdr)
        for i in np.flatnonzero(demote.to_numpy()):
            old, p_adj = frame.at[i, "verdict"], frame.at[i, "p_adjusted"]
            frame.at[i, "detail"] = (
                f"{old} ({frame.at[i, 'detail']}) not significant after Benjamini-Hochberg "
                f"over {len(frame)} verdicts (adjusted p={p_adj:.2g} > {fdr:g})"
            )
            frame.at[i, "verdict"] = "inconclusive"
    return frame
