"""Scaling-law fits with bootstrap intervals.

* Saturating power law y = E + A * x^(-alpha) (Kaplan et al. 2020 form).
* Chinchilla L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022),
  fitted as the replication of Besiroglu et al. 2024 does: Huber loss
  (delta = 1e-3) on log-loss residuals with the log-sum-exp parametrisation
  log L = LSE(a - alpha log N, b - beta log D, e), A = exp(a), B = exp(b),
  E = exp(e), L-BFGS-B from a grid of starts.
* One-break broken neural scaling law (Caballero et al. 2022),
  y = a + b x^(-c0) (1 + (x / d1)^(1 / f1))^(-c1 f1), fitted on log(y + 1)
  as they did.

Intervals are percentile bootstrap intervals over resampled points. Bootstrap
replicates start from the point estimate only (one local optimisation each),
which keeps them fast enough for tests.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, special

from scalesweep.errors import UserError


@dataclass
class Fit:
    """Fitted parameters, percentile intervals and the fit's loss."""

    law: str
    params: dict[str, float]
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    loss: float = math.nan
    n: int = 0
    boot: np.ndarray | None = field(default=None, repr=False)

    def table(self) -> dict[str, dict[str, float]]:
        """{name: {"value", "ci_low", "ci_high"}} for reports and the CLI."""
        nan = (math.nan, math.nan)
        return {
            k: {"value": v, "ci_low": self.ci.get(k, nan)[0], "ci_high": self.ci.get(k, nan)[1]}
            for k, v in self.params.items()
        }


def _check(*arrays: np.ndarray, positive: bool = True) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=float) for a in arrays]
    ok = np.all([np.isfinite(a) for a in out], axis=0)
    if positive:
        ok &= np.all([a > 0 for a in out[:-1]], axis=0)
    out = [a[ok] for a in out]
    if len(out[0]) < 4:
        raise UserError(f"a scaling-law fit needs at least 4 usable points, got {len(out[0])}.")
    return out


def _percentiles(boot: np.ndarray, names: list[str], level: float) -> dict:
    lo, hi = 50 * (1 - level), 50 * (1 + level)
    return {
        k: (float(np.nanpercentile(boot[:, i], lo)), float(np.nanpercentile(boot[:, i], hi)))
        for i, k in enumerate(names)
    }


def _bootstrap(fit_once, arrays, n_boot: int, rng) -> np.ndarray:
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n = len(arrays[0])
    rows = []
    for _ in range(n_boot):
        idx = gen.integers(0, n, n)
        try:
            rows.append(fit_once(*[a[idx] for a in arrays]))
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            continue
    return np.array(rows) if rows else np.full((1, 1), np.nan)


# --- saturating power law ---------------------------------------------------------


@dataclass
class PowerLawFit(Fit):
    """y = E + A * x^(-alpha)."""

    def predict(self, x) -> np.ndarray:
        p = self.params
        return p["E"] + p["A"] * np.asarray(x, dtype=float) ** (-p["alpha"])

    def crossing(self, threshold: float, level: float = 0.95) -> tuple[float, float, float]:
        """Scale where the fitted curve crosses `threshold`, with a bootstrap interval.

        For a shrinking phenomenon this is where it drops below its presence
        threshold; inf when the fitted asymptote E never gets there.
        """
        est = _cross(self.params["E"], self.params["A"], self.params["alpha"], threshold)
        if self.boot is None or self.boot.shape[1] != 3:
            return est, math.nan, math.nan
        xs = np.array([_cross(e, a, al, threshold) for e, a, al in self.boot])
        lo, hi = 50 * (1 - level), 50 * (1 + level)
        return est, float(np.percentile(xs, lo)), float(np.percentile(xs, hi))


def _cross(E: float, A: float, alpha: float, threshold: float) -> float:
    gap = (threshold - E) / A
    if alpha <= 0 or gap <= 0:
        return math.inf
    return float(gap ** (-1.0 / alpha))


def _power_once(x, y, start=None) -> np.ndarray:
    lx = np.log(x)
    if start is None:
        starts = [(min(y.min(), 0.0) if y.min() <= 0 else 0.5 * y.min(), al) for al in (0.1, 0.3, 1.0)]
        starts = [(e, math.log(max(y.max() - e, 1e-12)) + al * lx.min(), al) for e, al in starts]
    else:
        starts = [(start[0], math.log(start[1]), start[2])]

    def resid(p):
        return p[0] + np.exp(p[1] - p[2] * lx) - y

    best = None
    for s in starts:
        r = optimize.least_squares(resid, s, method="trf", max_nfev=2000)
        if best is None or r.cost < best.cost:
            best = r
    e, la, al = best.x
    return np.array([e, math.exp(la), al])


def fit_power_law(x, y, n_boot: int = 200, level: float = 0.95, rng=0) -> PowerLawFit:
    """Least-squares fit of y = E + A x^(-alpha) with a point-resampling bootstrap."""
    x, y = _check(x, y)
    est = _power_once(x, y)
    resid = y - (est[0] + est[1] * x ** (-est[2]))
    boot = _bootstrap(lambda a, b: _power_once(a, b, est), (x, y), n_boot, rng) if n_boot else None
    names = ["E", "A", "alpha"]
    ci = _percentiles(boot, names, level) if boot is not None and boot.shape[1] == 3 else {}
    params = dict(zip(names, map(float, est), strict=True))
    return PowerLawFit("power", params, ci, float(np.mean(resid**2)), len(x), boot)


# --- Chinchilla ---------------------------------------------------------------------

CHINCHILLA_GRID = dict(
    alpha=np.arange(0, 2.01, 0.5),
    beta=np.arange(0, 2.01, 0.5),
    e=np.arange(-1, 1.01, 0.5),
    a=np.arange(0, 25.1, 5),
    b=np.arange(0, 25.1, 5),
)
HUBER_DELTA = 1e-3
# The Huber objective is ~1e-3 with tiny gradients: scipy's default tolerances
# stop at the start (bootstrap intervals then collapse), so tighten them.
_LBFGS = {"ftol": 1e-15, "gtol": 1e-11, "maxiter": 5000}


@dataclass
class ChinchillaFit(Fit):
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    def predict(self, n, d) -> np.ndarray:
        p = self.params
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]

    def compute_optimal(self, compute) -> tuple[np.ndarray, np.ndarray]:
        """N_opt, D_opt for C = 6 N D (Hoffmann et al. 2022, eq. 4)."""
        p = self.params
        c = np.asarray(compute, dtype=float)
        g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
        n_opt = g * (c / 6) ** (p["beta"] / (p["alpha"] + p["beta"]))
        return n_opt, c / (6 * n_opt)


def _chin_objective(theta, log_n, log_d, log_l):
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    lse = special.logsumexp(terms, axis=0)
    r = lse - log_l
    loss = special.huber(HUBER_DELTA, r).sum()
    w = np.exp(terms - lse) * np.clip(r, -HUBER_DELTA, HUBER_DELTA)
    grad = np.array([w[0].sum(), w[1].sum(), w[2].sum(), -(w[0] * log_n).sum(), -(w[1] * log_d).sum()])
    return loss, grad


def _chin_once(n, d, loss, starts) -> tuple[np.ndarray, float]:
    args = (np.log(n), np.log(d), np.log(loss))
    best_x, best_f = None, math.inf
    for s in starts:
        r = optimize.minimize(_chin_objective, s, args=args, jac=True, method="L-BFGS-B", options=_LBFGS)
        if r.fun < best_f:
            best_x, best_f = r.x, float(r.fun)
    return best_x, best_f


def _chin_params(theta) -> np.ndarray:
    a, b, e, alpha, beta = theta
    return np.array([math.exp(e), math.exp(a), math.exp(b), alpha, beta])


def chinchilla_starts() -> list[np.ndarray]:
    """The grid of starts of Besiroglu et al. 2024 (order: a, b, e, alpha, beta)."""
    g = CHINCHILLA_GRID
    return [
        np.array([a, b, e, al, be])
        for al, be, e, a, b in itertools.product(g["alpha"], g["beta"], g["e"], g["a"], g["b"])
    ]


def screen_starts(starts, n, d, loss, keep: int) -> list[np.ndarray]:
    """The `keep` grid starts with the lowest initial Huber loss (vectorised).

    Running L-BFGS-B from all 4500 grid starts takes about a minute; the
    optimum is reached from the best-screened starts as well (checked on the
    Hoffmann et al. data: identical to 4 digits), so tests and the CLI use
    `keep=64` and `keep=None` runs the full grid.
    """
    if keep is None or keep >= len(starts):
        return list(starts)
    th = np.array(starts)
    ln, ld, ll = np.log(n), np.log(d), np.log(loss)
    terms = np.stack(
        [
            th[:, [0]] - th[:, [3]] * ln,
            th[:, [1]] - th[:, [4]] * ld,
            np.broadcast_to(th[:, [2]], (len(th), len(ln))),
        ]
    )
    obj = special.huber(HUBER_DELTA, special.logsumexp(terms, axis=0) - ll).sum(axis=1)
    return [th[i] for i in np.argsort(obj, kind="stable")[:keep]]


def fit_chinchilla(n, d, loss, n_boot: int = 100, level: float = 0.95, rng=0, keep: int | None = 64) -> ChinchillaFit:
    """Besiroglu et al. 2024 Huber fit of L(N, D); bootstrap replicates start at the estimate.

    `keep`: how many of the grid starts (best initial loss first) are optimised;
    None optimises from every start, as the replication did.
    """
    n, d, loss = _check(n, d, loss)
    theta, f = _chin_once(n, d, loss, screen_starts(chinchilla_starts(), n, d, loss, keep))
    names = ["E", "A", "B", "alpha", "beta"]
    boot = None
    if n_boot:
        boot = _bootstrap(lambda a, b, c: _chin_params(_chin_once(a, b, c, [theta])[0]), (n, d, loss), n_boot, rng)
    ci = _percentiles(boot, names, level) if boot is not None and boot.shape[1] == 5 else {}
    params = dict(zip(names, map(float, _chin_params(theta)), strict=True))
    return ChinchillaFit("chinchilla", params, ci, f, len(n), boot)


# --- broken neural scaling law (one break) -------------------------------------------

BNSL_NAMES = ["a", "b", "c0", "c1", "d1", "f1"]


@dataclass
class BNSLFit(Fit):
    """y = a + b x^(-c0) (1 + (x/d1)^(1/f1))^(-c1 f1)."""

    def predict(self, x) -> np.ndarray:
        return _bnsl(np.asarray(x, dtype=float), *[self.params[k] for k in BNSL_NAMES])


def _bnsl(x, a, b, c0, c1, d1, f1):
    with np.errstate(over="ignore", invalid="ignore"):
        log_break = f1 * np.logaddexp(0.0, (np.log(x) - np.log(d1)) / f1)  # log(1+(x/d1)^(1/f1))^f1
        return a + b * np.exp(-c0 * np.log(x) - c1 * log_break)


def _bnsl_unpack(p):
    return p[0], math.exp(p[1]), p[2], p[3], math.exp(p[4]), math.exp(p[5])


def _bnsl_once(x, y, starts) -> tuple[np.ndarray, float]:
    target = np.log1p(y)

    def resid(p):
        pred = _bnsl(x, *_bnsl_unpack(p))
        return np.log1p(np.maximum(pred, -0.999999)) - target

    best, best_cost = None, math.inf
    for s in starts:
        try:
            r = optimize.least_squares(resid, s, method="trf", max_nfev=3000)
        except ValueError:
            continue
        if np.isfinite(r.cost) and r.cost < best_cost:
            best, best_cost = r.x, float(r.cost)
    if best is None:
        raise ValueError("BNSL fit failed from every start")
    return best, best_cost


def bnsl_starts(x, y) -> list[np.ndarray]:
    """A grid of starts over the break location, sharpness and slopes."""
    lo, hi = np.log(x.min()), np.log(x.max())
    starts = []
    for frac, c1, f1, c0 in itertools.product(
        (0.2, 0.5, 0.8, 1.0), (0.5, 2.0, 8.0, 30.0), (0.03, 0.1, 0.3, 1.0), (0.0, 0.2)
    ):
        log_d1 = lo + frac * (hi - lo)
        log_b = math.log(max(y.max(), 1e-9)) + c0 * lo
        starts.append(np.array([0.0, log_b, c0, c1, log_d1, math.log(f1)]))
    return starts


def fit_bnsl(x, y, n_boot: int = 50, level: float = 0.95, rng=0) -> BNSLFit:
    """Caballero et al. 2022 one-break BNSL, least squares on log(y + 1)."""
    x, y = _check(x, y)
    p, cost = _bnsl_once(x, y, bnsl_starts(x, y))
    boot = None
    if n_boot:
        boot = _bootstrap(lambda a, b: np.array(_bnsl_unpack(_bnsl_once(a, b, [p])[0])), (x, y), n_boot, rng)
    ci = _percentiles(boot, BNSL_NAMES, level) if boot is not None and boot.shape[1] == 6 else {}
    params = dict(zip(BNSL_NAMES, map(float, _bnsl_unpack(p)), strict=True))
    return BNSLFit("bnsl", params, ci, 2 * cost / len(x), len(x), boot)


def rmsle(pred, true) -> float:
    """Root mean squared log error on log(y + 1), as Caballero et al. 2022 report it."""
    pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    return float(np.sqrt(np.mean((np.log1p(pred) - np.log1p(true)) ** 2)))
