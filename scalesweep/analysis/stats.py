"""The statistics behind the classifier, with the scale point as the unit of evidence.

A slice is a set of scale points (u = log10 of the scale) with one or more
replicate values each. Every regression here is fitted to the *point means*,
weighted by their replicate counts (identical to least squares on the runs),
and the question each test asks is how much the point means scatter around
the fitted curve, not how many runs there are.

The error term (`wls`) follows the classical lack-of-fit analysis of a
regression with replicates (Draper & Smith 1998, "Applied Regression
Analysis", 3rd ed., section 2.1): the residual sum of squares of the runs
splits into *pure error* (replicates around their point mean, df = N - P) and
*lack of fit* (point means around the curve, df = P - k). When the lack of
fit is significant against pure error (F test at `ALPHA_POOL`, Bancroft's
"sometimes pool" rule, Bancroft 1944), the point means scatter more than the
replicates allow, so the point means are the units and the lack-of-fit mean
square is the error (df = P - k): near-identical replicates then add no
evidence at all. Otherwise both are pooled (df = N - k), so real seed noise
around a curve that fits does count. A table with one value per model is
unreplicated and its rows are the units.

Also here: t tails, Schuirmann's two one-sided tests, one-sided Fisher exact
tests, Benjamini-Hochberg, and the broken-line ("hinge") test whose null
distribution is simulated for the slice's own design (Davies 1987: the
breakpoint is not identified under the null, so no F table applies).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

ALPHA_POOL = 0.25  # Bancroft's preliminary test: pool pure error and lack of fit only when lack of fit is small
HINGE_DRAWS = 999  # Monte Carlo draws of the broken-line statistic under a straight line


def t_sf(t: float, df: float) -> float:
    """stats.t.sf(t, df) by the same special function, without scipy.stats' per-call
    argument handling (about 50x faster: the bootstrap calls it some 10^5 times per study)."""
    return float(special.stdtr(df, -t))


def t_two_sided(est: float, se: float, df: float) -> float:
    """Two-sided p of est / se on df degrees of freedom; se = 0 means an exact fit."""
    if not (se > 0 and df > 0):
        return 0.0 if se == 0 and est != 0 and df > 0 else 1.0
    if abs(est) < 1e-9 * se:
        return 1.0
    return 2 * t_sf(abs(est / se), df)


def t_quantile(df: float, q: float = 0.975) -> float:
    return float(special.stdtrit(df, q)) if df > 0 else math.inf


@dataclass
class Points:
    """A slice reduced to its scale points: what every fit needs.

    `u` (log10 scale), `mean` and `n` (replicates) per point; `ss_pe`, the
    replicates' squared deviations around their point means, summed;
    `replicated`: whether replication is real (most points hold two or more
    values), decided once for the slice and kept by its bootstrap resamples.
    """

    u: np.ndarray
    mean: np.ndarray
    n: np.ndarray
    ss_pe: float
    replicated: bool

    @property
    def n_runs(self) -> int:
        return int(self.n.sum())


def points_of(pid: np.ndarray, u: np.ndarray, y: np.ndarray, replicated: bool) -> Points:
    """Group runs by point id (`pid`: small non-negative integers, one per equal scale or
    bootstrap cluster) into `Points`, in the order of the ids. Counting by id, not sorting,
    because the bootstrap groups every resample."""
    counts = np.bincount(pid)
    present = np.flatnonzero(counts)
    n_all = np.maximum(counts, 1)
    mean_all = np.bincount(pid, weights=y, minlength=len(counts)) / n_all
    u_all = np.bincount(pid, weights=u, minlength=len(counts)) / n_all
    dev = y - mean_all[pid]
    return Points(u_all[present], mean_all[present], counts[present].astype(float), float(dev @ dev), replicated)


def is_replicated(u: np.ndarray) -> bool:
    """Replication is real when most scale points hold two or more finite values.

    A published table where a few models share a FLOPs figure is not replicated:
    those are different models, each its own unit."""
    _, counts = np.unique(u, return_counts=True)
    return bool(len(counts) and np.mean(counts >= 2) > 0.5)


@dataclass
class Fit:
    """A weighted least-squares fit of the point means and its error term."""

    coef: np.ndarray
    cov: np.ndarray  # s2 * (X' W X)^-1
    df: int  # 0: the fit cannot be tested (no between-point degree of freedom left)
    s2: float  # error variance on the scale of one run
    units: str  # "points" or "runs": what the error term counts
    sse: float  # residual sum of squares of the runs (pure error + lack of fit)

    def se(self, i: int) -> float:
        return math.sqrt(max(float(self.cov[i, i]), 0.0))

    def p(self, i: int) -> float:
        return t_two_sided(float(self.coef[i]), self.se(i), self.df)


def wls(pts: Points, design: np.ndarray) -> Fit:
    """Fit `design` (one row per point) to the point means, with the error term of the module docstring."""
    w = pts.n
    xtw = design.T * w
    try:  # normal equations: the designs here are centred and small, so well conditioned
        inverse = np.linalg.inv(xtw @ design)
        coef = inverse @ (xtw @ pts.mean)
    except np.linalg.LinAlgError:  # fewer distinct points than coefficients
        k = design.shape[1]
        return Fit(np.zeros(k), np.full((k, k), math.nan), 0, math.nan, "points", math.nan)
    resid = pts.mean - design @ coef
    ss_lof = float(resid * w @ resid)
    k, n_pts, n_runs = design.shape[1], len(pts.u), pts.n_runs
    df_lof, df_pe = n_pts - k, n_runs - n_pts
    sse = ss_lof + pts.ss_pe
    scale = float(np.abs(pts.mean).max()) + 1e-300 if n_pts else 1.0
    if math.sqrt(max(sse, 0.0) / max(n_runs, 1)) < 1e-9 * scale:  # exact fit (e.g. a constant strength): no noise
        return Fit(coef, 0.0 * inverse, max(df_lof if pts.replicated else n_runs - k, 0), 0.0, "runs", 0.0)
    if pts.replicated:
        if df_lof <= 0:  # the curve goes through every point mean: nothing left to judge it against
            return Fit(coef, np.full_like(inverse, math.nan), 0, math.nan, "points", sse)
        lof_ms = ss_lof / df_lof
        pooled_p = 0.0 if pts.ss_pe <= 0 else float(special.fdtrc(df_lof, df_pe, lof_ms / (pts.ss_pe / df_pe)))
        if df_pe <= 0 or pooled_p < ALPHA_POOL:
            return Fit(coef, lof_ms * inverse, df_lof, lof_ms, "points", sse)
    df = n_runs - k
    s2 = sse / df if df > 0 else math.nan
    return Fit(coef, s2 * inverse, max(df, 0), s2, "runs", sse)


def polynomial(pts: Points, degree: int) -> tuple[Fit, float]:
    """Polynomial in centred u; returns the fit and the centre."""
    centre = float(pts.u @ pts.n / pts.n.sum())
    return wls(pts, np.vander(pts.u - centre, degree + 1, increasing=True)), centre


def tost(change: float, se: float, df: float, margin: float) -> float:
    """Two one-sided tests (Schuirmann 1987): p that |change| < margin."""
    if margin <= 0 or df <= 0:
        return 1.0
    if se == 0:
        return 0.0 if abs(change) < margin else 1.0
    lo = t_sf((change + margin) / se, df)
    hi = t_sf(-(change - margin) / se, df)
    return float(max(lo, hi))


def fisher_greater(here: np.ndarray, there: np.ndarray) -> float:
    """One-sided Fisher exact p that a label is more common `here` than `there` (boolean arrays)."""
    from scipy import stats  # scipy.stats costs ~0.5 s to import; only regime labels need it

    table = [[here.sum(), (~here).sum()], [there.sum(), (~there).sum()]]
    return float(stats.fisher_exact(table, alternative="greater")[1])


def _adjusted(p: Sequence[float], step: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Multiplicity-adjusted p-values: `step(sorted finite p, m)` -> adjusted, in place; NaN stays NaN."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok):
        order = ok[np.argsort(p[ok])]
        out[order] = np.clip(step(p[order], len(ok)), 0, 1)
    return out


def benjamini_hochberg(p: Sequence[float]) -> np.ndarray:
    """Benjamini & Hochberg (1995) adjusted p-values (false discovery rate); NaN stays NaN."""
    return _adjusted(p, lambda q, m: np.minimum.accumulate((q * m / np.arange(1, m + 1))[::-1])[::-1])


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values (family-wise error); NaN stays NaN."""
    return _adjusted(p, lambda q, m: np.maximum.accumulate(q * (m - np.arange(m))))


# --- the broken line ---------------------------------------------------------------


@dataclass
class Hinge:
    """Best broken line y = a + b (u - c)_- + d (u - c)_+ (slopes b left of c, d right of c)."""

    c: float  # breakpoint, log10 scale
    fit: Fit  # coefficients (a, b, d) at c, with the slice's error term
    stat: float  # F of the broken line against one straight line, maximised over c
    units: str

    def slope_p(self, i: int, sign: float) -> float:
        """One-sided p that slope i (1: left arm, 2: right arm) has `sign`."""
        se = self.fit.se(i)
        if not (se > 0 and self.fit.df > 0):
            return 0.0 if se == 0 and sign * self.fit.coef[i] > 0 else 1.0
        return t_sf(sign * float(self.fit.coef[i]) / se, self.fit.df)


MAX_BREAKPOINTS = 24  # breakpoints are profiled over at most this many scales (evenly spread over the points)


def _thin(values: np.ndarray, most: int = MAX_BREAKPOINTS) -> np.ndarray:
    """At most `most` of the sorted `values`, evenly spread: a table of 80 models needs no
    80 candidate breakpoints, and each costs a fit in every bootstrap resample."""
    if len(values) <= most:
        return values
    return values[np.unique(np.linspace(0, len(values) - 1, most).round().astype(int))]


def hinge_candidates(u: np.ndarray, min_arm: int = 2) -> np.ndarray:
    """Interior scale points that leave at least `min_arm` points on each arm."""
    distinct = np.unique(u)
    if len(distinct) < 2 * min_arm - 1:
        return distinct[:0]
    return _thin(distinct[min_arm - 1 : len(distinct) - min_arm + 1])


def _arm_design(u: np.ndarray, c: float) -> np.ndarray:
    return np.column_stack([np.ones_like(u), np.minimum(u - c, 0.0), np.maximum(u - c, 0.0)])


def _hinge_gain(u: np.ndarray, n: np.ndarray, cands: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The line's residual sum of squares and what the broken line at each candidate removes from it.

    `means` is (B, P): B sets of point means. Weighted residualisation on the
    line: the extra regressor (u - c)_+, made orthogonal to [1, u], explains
    (z . r)^2 / (z . z) of the line's residual sum of squares. Returns (B,), (B, K).
    """
    w = n / n.sum()
    uc = u - w @ u
    sxx = (w * uc) @ uc
    z = np.maximum(u[None, :] - cands[:, None], 0.0)  # (K, P)
    z = z - (z @ w)[:, None] - ((z * w) @ uc / sxx)[:, None] * uc[None, :]
    zz = np.einsum("kp,p,kp->k", z, n, z)
    r = means - (means @ w)[:, None] - ((means * w) @ uc / sxx)[:, None] * uc[None, :]  # (B, P)
    sse_line = np.einsum("bp,p,bp->b", r, n, r)
    return sse_line, ((r * n) @ z.T) ** 2 / np.where(zz > 0, zz, np.inf)


def _hinge_f(sse_line: np.ndarray, gain: np.ndarray, ss_pe: np.ndarray, units: str, n_pts: int, n_runs: int):
    """F of the best broken line (largest gain) against the line, per set of point means.

    The error term counts the points (lack of fit only) or the runs (plus pure error)."""
    best = gain.max(axis=1)
    lof = sse_line - best
    denom = lof / (n_pts - 3) if units == "points" else (lof + ss_pe) / (n_runs - 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, best / denom, np.where(best > 0, np.inf, 0.0))


def hinge(pts: Points, min_arm: int = 2) -> Hinge | None:
    """The best broken line (least squares, breakpoint profiled over the interior points)."""
    cands = hinge_candidates(pts.u, min_arm)
    if len(cands) == 0 or len(pts.u) < 4:
        return None
    sse_line, gain = _hinge_gain(pts.u, pts.n, cands, pts.mean[None, :])
    best = float(cands[int(np.argmax(gain[0]))])  # the least-squares breakpoint
    fit = wls(pts, _arm_design(pts.u, best))
    if fit.df <= 0:
        return None
    stat = _hinge_f(sse_line, gain, np.array([pts.ss_pe]), fit.units, len(pts.u), pts.n_runs)
    return Hinge(best, fit, float(stat[0]), fit.units)


def hinge_null(pts: Points, units: str, min_arm: int = 2, draws: int = HINGE_DRAWS, seed: int = 0) -> np.ndarray:
    """Sorted draws of the maximised broken-line F under a straight line with Gaussian noise.

    The statistic is scale-free, so its null depends only on the design (the
    points, their replicate counts, the candidates and the error term)."""
    cands = hinge_candidates(pts.u, min_arm)
    if len(cands) == 0:
        return np.array([math.inf])
    gen = np.random.default_rng(seed)
    means = gen.standard_normal((draws, len(pts.u))) / np.sqrt(pts.n)[None, :]
    df_pe = pts.n_runs - len(pts.u)
    ss_pe = gen.chisquare(df_pe, draws) if df_pe > 0 else np.zeros(draws)
    sse_line, gain = _hinge_gain(pts.u, pts.n, cands, means)
    return np.sort(_hinge_f(sse_line, gain, ss_pe, units, len(pts.u), pts.n_runs))


def null_p(null: np.ndarray, stat: float) -> float:
    """Monte Carlo p-value: (1 + draws at least as large) / (draws + 1)."""
    above = len(null) - np.searchsorted(null, stat, side="left")
    return float((1 + above) / (len(null) + 1))


# --- the clipped ramp: flat, a linear rise (or fall), flat -----------------------------


@dataclass
class Ramp:
    """Best clipped ramp y = a + b clip(u, c1, c2): flat below c1, linear up to c2, flat above.

    A piecewise-linear sigmoid in log-scale. With c1 at the smallest scale and
    c2 at the largest it is the straight line, so the line is nested in it."""

    c1: float
    c2: float
    a: float
    b: float
    stat: float  # F of the ramp against the straight line, maximised over (c1, c2)
    df: int
    s2: float
    units: str


def ramp_pairs(u: np.ndarray, flat: str, min_flat: int = 2) -> np.ndarray:
    """Candidate (c1, c2) pairs whose `flat` end ("low" or "high") holds at least `min_flat` points."""
    distinct = np.unique(u)
    if len(distinct) < 3:
        return np.zeros((0, 2))
    lo, hi = distinct[0], distinct[-1]
    d = np.unique(np.concatenate([[lo, hi], _thin(distinct)]))
    i, j = np.triu_indices(len(d), k=1)
    keep = ~((i == 0) & (j == len(d) - 1))  # that one is the straight line
    if flat == "low":  # the flat end must hold `min_flat` points
        keep &= d[i] >= distinct[min_flat - 1]
    else:
        keep &= d[j] <= distinct[-min_flat]
    return np.column_stack([d[i[keep]], d[j[keep]]])


def _ramp_gain(u, w, pairs, means):
    """Residual sums of squares of the line and of each ramp, for B sets of point means (weights w)."""
    wn = w / w.sum()
    z = np.clip(u[None, :], pairs[:, :1], pairs[:, 1:])  # (M, P)
    zc = z - (z @ wn)[:, None]
    uc = u - wn @ u
    yc = means - (means @ wn)[:, None]  # (B, P)
    sst = np.einsum("bp,p,bp->b", yc, w, yc)
    sse_line = sst - ((yc * w) @ uc) ** 2 / ((uc * w) @ uc)
    zz = np.einsum("mp,p,mp->m", zc, w, zc)
    sse_ramp = sst[:, None] - ((yc * w) @ zc.T) ** 2 / np.where(zz > 0, zz, np.inf)  # (B, M)
    return sse_line, sse_ramp


def _ramp_f(sse_line, sse_ramp, ss_pe, units: str, n_pts: int, n_runs: int):
    if units == "points":
        df = n_pts - 4
        denom = sse_ramp / df
    else:
        df = n_runs - 4
        denom = (sse_ramp + ss_pe[:, None]) / df
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, (sse_line[:, None] - sse_ramp) / denom, 0.0), df


def ramp(pts: Points, flat: str) -> Ramp | None:
    """The least-squares clipped ramp with its flat end `flat`, and its error term."""
    pairs = ramp_pairs(pts.u, flat)
    if len(pairs) == 0 or len(pts.u) < 5:
        return None
    sse_line, sse_ramp = _ramp_gain(pts.u, pts.n, pairs, pts.mean[None, :])
    m = int(np.argmin(sse_ramp[0]))
    c1, c2 = pairs[m]
    fit = wls(pts, np.column_stack([np.ones_like(pts.u), np.clip(pts.u, c1, c2)]))
    units = fit.units
    stat, df = _ramp_f(sse_line, sse_ramp, np.array([pts.ss_pe]), units, len(pts.u), pts.n_runs)
    if df <= 0:
        return None
    s2 = float(sse_ramp[0, m] / df) if units == "points" else float((sse_ramp[0, m] + pts.ss_pe) / df)
    return Ramp(float(c1), float(c2), float(fit.coef[0]), float(fit.coef[1]), float(stat[0].max()), df, s2, units)


def ramp_p(pts: Points, found: Ramp, flat: str, line: Fit, draws: int = 299, seed: int = 0) -> float:
    """Parametric-bootstrap p of the ramp against the fitted straight line.

    The ramp does not contain every line, so its statistic depends on the
    line's slope: the null is simulated from the fitted line, with its noise
    (point means drawn with variance s2 / n, pure error as s2 chi-squared)."""
    pairs = ramp_pairs(pts.u, flat)
    gen = np.random.default_rng(seed)
    centre = float(pts.u @ pts.n / pts.n.sum())
    mean = line.coef[0] + line.coef[1] * (pts.u - centre)
    s2 = line.s2 if np.isfinite(line.s2) else 0.0
    means = mean[None, :] + gen.standard_normal((draws, len(pts.u))) * np.sqrt(s2 / pts.n)[None, :]
    df_pe = pts.n_runs - len(pts.u)
    pe_s2 = pts.ss_pe / df_pe if df_pe > 0 else 0.0
    ss_pe = pe_s2 * gen.chisquare(df_pe, draws) if df_pe > 0 else np.zeros(draws)
    sse_line, sse_ramp = _ramp_gain(pts.u, pts.n, pairs, means)
    stat, _ = _ramp_f(sse_line, sse_ramp, ss_pe, found.units, len(pts.u), pts.n_runs)
    null = np.sort(stat.max(axis=1))
    return null_p(null, found.stat)


def robust_ramp_onset(pts: Points, flat: str, iterations: int = 5) -> tuple[float, float]:
    """(c1, c2) of the clipped ramp refitted with Huber weights (delta = 1.345 robust SDs).

    Least squares lets one outlying model drag the breakpoints; reweighting each
    point by min(1, delta / |residual|) (Huber 1964), with the breakpoints
    profiled again at every step, does not."""
    pairs = ramp_pairs(pts.u, flat)
    w = pts.n.copy()
    best = None
    for _ in range(iterations):
        _, sse_ramp = _ramp_gain(pts.u, w, pairs, pts.mean[None, :])
        best = pairs[int(np.argmin(sse_ramp[0]))]
        design = np.column_stack([np.ones_like(pts.u), np.clip(pts.u, *best)])
        sw = np.sqrt(w)
        coef = np.linalg.lstsq(design * sw[:, None], pts.mean * sw, rcond=None)[0]
        r = pts.mean - design @ coef
        scale = 1.4826 * float(np.median(np.abs(r - np.median(r)))) + 1e-12
        w = pts.n * np.minimum(1.0, 1.345 * scale / np.maximum(np.abs(r), 1e-300))
    return float(best[0]), float(best[1])
