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

Fits never end in a traceback: unusable rows (missing, non-finite, outside the
law's domain) are dropped and counted in `Fit.notes`; a point fit that does not
converge (an optimiser error, an overflow, non-finite parameters) is a
`FitFailed` (a `UserError`) naming the law and the points; a resample whose fit
fails or overflows is left out of the intervals, and when fewer than half of the
resamples converge the intervals are NaN, with a note saying so.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import special

from scalesweep.errors import UserError
from scalesweep.flops import FLOPS_PER_PARAM_TOKEN


@dataclass
class Fit:
    """Fitted parameters, percentile intervals and the fit's loss."""

    law: str
    params: dict[str, float]
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    loss: float = math.nan
    n: int = 0
    boot: np.ndarray | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    def table(self) -> dict[str, dict[str, float]]:
        """{name: {"value", "ci_low", "ci_high"}} for reports and the CLI."""
        nan = (math.nan, math.nan)
        return {
            k: {"value": v, "ci_low": self.ci.get(k, nan)[0], "ci_high": self.ci.get(k, nan)[1]}
            for k, v in self.params.items()
        }


class FitFailed(UserError):
    """A scaling-law fit that did not converge (or overflowed) on the given points."""


# What a numerical optimisation may raise on hostile data: overflow in exp, non-finite
# residuals at a start (scipy's ValueError), a singular Jacobian.
NUMERIC_ERRORS = (ArithmeticError, ValueError, np.linalg.LinAlgError)
MIN_CONVERGED_SHARE = 0.5  # fewer converged resamples than this share: no interval


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No numpy/scipy warnings on the terminal: what matters is reported in `Fit.notes`."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _point_fit(law: str, n: int) -> Iterator[None]:
    """Turn a numerical failure of the point fit into one clear `FitFailed`."""
    try:
        yield
    except NUMERIC_ERRORS as err:
        raise FitFailed(
            f"the {law} fit did not converge on these {n} points ({type(err).__name__}: {_first_line(err)}); "
            f"check the columns (scales should be positive and span a range, values finite), or try another law."
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else "no message"


def _finite_or_fail(law: str, n: int, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        raise FitFailed(
            f"the {law} fit did not converge on these {n} points: its parameters came out non-finite "
            f"(an overflow); check the columns, or try another law."
        )


def _exp(value: float) -> float:
    """exp that gives inf instead of raising OverflowError (inf is then reported, not raised)."""
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def _check(*arrays, positive: bool = True, y_above: float | None = None, notes: list[str] | None = None):
    """Finite rows with positive scales (and y above `y_above` where the law needs it).
    Dropped rows are counted in `notes`; fewer than 4 usable points, or a single scale
    value, is a UserError."""
    try:
        out = [np.asarray(a, dtype=float).reshape(-1) for a in arrays]
    except (TypeError, ValueError) as err:
        raise UserError(f"a scaling-law fit needs numeric columns ({_first_line(err)}).") from None
    with np.errstate(invalid="ignore"):
        ok = np.all([np.isfinite(a) for a in out], axis=0)
        if positive:
            ok &= np.all([a > 0 for a in out[:-1]], axis=0)
        if y_above is not None:
            ok &= out[-1] > y_above
    dropped = int((~ok).sum())
    out = [a[ok] for a in out]
    if dropped and notes is not None:
        domain = "; scales must be positive" if positive else ""
        domain += f"; values must be above {y_above:g}" if y_above is not None else ""
        notes.append(f"{dropped} of {len(ok)} rows dropped: missing or non-finite values{domain}.")
    if len(out[0]) < 4:
        raise UserError(
            f"a scaling-law fit needs at least 4 usable points, got {len(out[0])}"
            f"{f' ({dropped} rows dropped as missing, non-finite or out of range)' if dropped else ''}."
        )
    for i, a in enumerate(out[:-1]):
        if np.unique(a).size < 2:
            which = "the scale (--x)" if len(out) == 2 else ("the --n", "the --d")[i]
            raise UserError(
                f"{which} column takes a single value ({a[0]:g}) in the {len(a)} usable rows"
                f"{f' ({dropped} rows dropped as missing, non-finite or out of range)' if dropped else ''}: "
                f"a scaling law needs scales that vary (at least 2 distinct values, better 4 or more)."
            )
    return out


def _identifiability_note(x_columns: list[np.ndarray], n_params: int, notes: list[str]) -> None:
    distinct = len({tuple(row) for row in np.column_stack(x_columns)})
    if distinct <= n_params:
        notes.append(
            f"only {distinct} distinct scale points for {n_params} parameters: the curve can pass through every "
            f"point, so the parameters are poorly determined and the intervals are wide or meaningless."
        )


def _percentiles(boot: np.ndarray | None, names: list[str], level: float) -> dict:
    if boot is None or boot.ndim != 2 or boot.shape[1] != len(names) or len(boot) == 0:
        return {k: (math.nan, math.nan) for k in names}
    lo, hi = 50 * (1 - level), 50 * (1 + level)
    return {
        k: (float(np.percentile(boot[:, i], lo)), float(np.percentile(boot[:, i], hi))) for i, k in enumerate(names)
    }


def _bootstrap(fit_once, arrays, n_boot: int, rng, notes: list[str] | None = None) -> np.ndarray:
    """Refit on `n_boot` resamples. A resample whose fit raises, overflows or gives a
    non-finite parameter is left out (and counted in `notes`); when fewer than half
    converge the result is empty, so every interval is NaN."""
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n = len(arrays[0])
    rows = []
    for _ in range(n_boot):
        idx = gen.integers(0, n, n)
        try:
            row = np.asarray(fit_once(*[a[idx] for a in arrays]), dtype=float)
        except NUMERIC_ERRORS:
            continue
        if np.all(np.isfinite(row)):
            rows.append(row)
    failed = n_boot - len(rows)
    if failed and notes is not None:
        if len(rows) < MIN_CONVERGED_SHARE * n_boot:
            notes.append(
                f"only {len(rows)} of {n_boot} bootstrap resamples converged (the others did not converge or "
                f"overflowed): no interval is given (NaN)."
            )
        else:
            notes.append(
                f"{failed} of {n_boot} bootstrap resamples did not converge or overflowed; the intervals use "
                f"the other {len(rows)}."
            )
    if len(rows) < MIN_CONVERGED_SHARE * n_boot:
        return np.empty((0, 0))
    return np.array(rows)


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
        if len(self.boot) == 0:
            return est, math.nan, math.nan
        xs = np.array([_cross(e, a, al, threshold) for e, a, al in self.boot])
        lo, hi = 50 * (1 - level), 50 * (1 + level)
        return est, float(np.percentile(xs, lo)), float(np.percentile(xs, hi))


def _cross(E: float, A: float, alpha: float, threshold: float) -> float:
    if A == 0 or not math.isfinite(A):
        return math.inf
    gap = (threshold - E) / A
    if alpha <= 0 or gap <= 0:
        return math.inf
    try:
        return float(gap ** (-1.0 / alpha))
    except (OverflowError, ZeroDivisionError):
        return math.inf


POWER_ALPHAS = np.geomspace(1e-3, 4.0, 80)  # the profile grid of alpha for the starts


def _power_once(x, y, start=None) -> np.ndarray:
    """y = E + A x^-alpha by least squares, A > 0.

    Given alpha the model is linear in (E, A), so alpha is profiled on a grid
    first (variable projection, Golub & Pereyra 1973) and the best feasible
    point refined with an analytic Jacobian: fast, and no start far from the
    optimum (a numerical-Jacobian fit from three fixed starts took seconds)."""
    lx = np.log(x)
    first = _profiled_start(x, y, lx) if start is None else (start[0], math.log(max(start[1], 1e-300)), start[2])

    def resid(p):
        return p[0] + np.exp(p[1] - p[2] * lx) - y

    def jac(p):
        term = np.exp(p[1] - p[2] * lx)
        return np.column_stack([np.ones_like(lx), term, -lx * term])

    from scipy import optimize  # imported by the fits that need it: a report of onsets needs none

    e, la, al = optimize.least_squares(resid, first, jac=jac, method="trf", max_nfev=200).x
    return np.array([e, _exp(la), al])


def _profiled_start(x, y, lx) -> tuple[float, float, float]:
    """(E, log A, alpha) of the best grid alpha whose linear fit has A > 0."""
    z = np.exp(-POWER_ALPHAS[:, None] * lx[None, :])  # (K, n)
    zc = z - z.mean(axis=1, keepdims=True)
    yc = y - y.mean()
    a = (zc @ yc) / np.maximum((zc * zc).sum(axis=1), 1e-300)
    e = y.mean() - a * z.mean(axis=1)
    sse = ((y[None, :] - e[:, None] - a[:, None] * z) ** 2).sum(axis=1)
    sse = np.where(a > 0, sse, np.inf)
    k = int(np.argmin(sse)) if np.isfinite(sse).any() else 0
    e0 = float(e[k]) if np.isfinite(sse[k]) else float(min(y.min(), 0.0))
    a0 = float(a[k]) if a[k] > 0 else max(float(y.max() - e0), 1e-12) * float(x.min()) ** POWER_ALPHAS[k]
    return e0, math.log(max(a0, 1e-300)), float(POWER_ALPHAS[k])


def fit_power_law(x, y, n_boot: int = 200, level: float = 0.95, rng=0) -> PowerLawFit:
    """Least-squares fit of y = E + A x^(-alpha) with a point-resampling bootstrap."""
    notes: list[str] = []
    x, y = _check(x, y, notes=notes)
    names = ["E", "A", "alpha"]
    with _quiet():
        with _point_fit("power", len(x)):
            est = _power_once(x, y)
            _finite_or_fail("power", len(x), est)
            resid = y - (est[0] + est[1] * x ** (-est[2]))
            loss = float(np.mean(resid**2))  # inf when it overflows
        _identifiability_note([x], len(names), notes)
        boot = _bootstrap(lambda a, b: _power_once(a, b, est), (x, y), n_boot, rng, notes) if n_boot else None
    ci = _percentiles(boot, names, level) if boot is not None else {}
    params = dict(zip(names, map(float, est), strict=True))
    return PowerLawFit("power", params, ci, loss, len(x), boot, notes)


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
        n_opt = g * (c / FLOPS_PER_PARAM_TOKEN) ** (p["beta"] / (p["alpha"] + p["beta"]))
        return n_opt, c / (FLOPS_PER_PARAM_TOKEN * n_opt)


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
    from scipy import optimize

    args = (np.log(n), np.log(d), np.log(loss))
    best_x, best_f = None, math.inf
    for s in starts:
        r = optimize.minimize(_chin_objective, s, args=args, jac=True, method="L-BFGS-B", options=_LBFGS)
        if r.fun < best_f:
            best_x, best_f = r.x, float(r.fun)
    if best_x is None:
        raise ValueError("the Huber loss is not finite from any start")
    return best_x, best_f


def _chin_params(theta) -> np.ndarray:
    a, b, e, alpha, beta = theta
    return np.array([_exp(e), _exp(a), _exp(b), alpha, beta])


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
    notes: list[str] = []
    n, d, loss = _check(n, d, loss, y_above=0.0, notes=notes)  # fitted on log-loss
    names = ["E", "A", "B", "alpha", "beta"]
    boot = None
    with _quiet():
        with _point_fit("chinchilla", len(n)):
            theta, f = _chin_once(n, d, loss, screen_starts(chinchilla_starts(), n, d, loss, keep))
            values = _chin_params(theta)
            _finite_or_fail("chinchilla", len(n), values)
        _identifiability_note([n, d], len(names), notes)
        if n_boot:
            boot = _bootstrap(
                lambda a, b, c: _chin_params(_chin_once(a, b, c, [theta])[0]), (n, d, loss), n_boot, rng, notes
            )
    ci = _percentiles(boot, names, level) if boot is not None else {}
    params = dict(zip(names, map(float, values), strict=True))
    return ChinchillaFit("chinchilla", params, ci, f, len(n), boot, notes)


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
    return p[0], _exp(p[1]), p[2], p[3], _exp(p[4]), _exp(p[5])


def _bnsl_once(x, y, starts) -> tuple[np.ndarray, float]:
    from scipy import optimize

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
    notes: list[str] = []
    x, y = _check(x, y, y_above=-1.0, notes=notes)  # fitted on log(y + 1)
    boot = None
    with _quiet():
        with _point_fit("bnsl", len(x)):
            p, cost = _bnsl_once(x, y, bnsl_starts(x, y))
            values = np.array(_bnsl_unpack(p))
            _finite_or_fail("bnsl", len(x), values)
        _identifiability_note([x], len(BNSL_NAMES), notes)
        if n_boot:
            boot = _bootstrap(lambda a, b: np.array(_bnsl_unpack(_bnsl_once(a, b, [p])[0])), (x, y), n_boot, rng, notes)
    ci = _percentiles(boot, BNSL_NAMES, level) if boot is not None else {}
    params = dict(zip(BNSL_NAMES, map(float, values), strict=True))
    return BNSLFit("bnsl", params, ci, 2 * cost / len(x), len(x), boot, notes)


def rmsle(pred, true) -> float:
    """Root mean squared log error on log(y + 1), as Caballero et al. 2022 report it."""
    pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    return float(np.sqrt(np.mean((np.log1p(pred) - np.log1p(true)) ** 2)))
