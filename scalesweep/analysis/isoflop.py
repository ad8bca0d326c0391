"""IsoFLOP analysis (Hoffmann et al. 2022, approach 2): the compute-optimal model size.

Per budget C, the final loss of the runs along the IsoFLOP profile is fitted
by a parabola in log N; its minimum is N_opt(C), and D_opt(C) = C / (6 N_opt)
(the design holds 6 · N · D ≈ C, see `scalesweep/plan/designs.py`). The interval
of N_opt is a percentile bootstrap over runs (`scipy.stats.bootstrap`,
paired resampling of (log N, loss)); it covers the noise of the runs, not
the parabola's misfit to an asymmetric profile (a few percent in N over a
64x range of sizes, see tests/test_isoflop.py). The minimum is looked for inside the
sampled range only: a profile whose minimum sits at an end (or that is not
U-shaped) is flagged `at_edge`, because its true optimum lies outside the
sizes tried and the design should widen them.

Across budgets, N_opt ∝ C^a and D_opt ∝ C^b are least-squares lines in
log-log; their intervals come from refitting the line on matched bootstrap
replicates of every budget's optimum, so they carry each profile's
uncertainty. Since D_opt = C / (6 N_opt), b = 1 − a by construction
(Chinchilla found a ≈ b ≈ 0.5).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from scalesweep.analysis.load import require_columns
from scalesweep.errors import UserError
from scalesweep.flops import FLOPS_PER_PARAM_EXAMPLE

MIN_SIZES = 3  # a parabola needs three model sizes


@dataclass
class Exponents:
    """N_opt ∝ C^a and D_opt ∝ C^b with 95% bootstrap intervals."""

    a: float
    a_low: float
    a_high: float
    b: float
    b_low: float
    b_high: float
    n_budgets: int


def profile_minimum(log_n: np.ndarray, loss: np.ndarray, grid_points: int = 400) -> float:
    """log N at the minimum of the least-squares parabola, searched within the sampled range."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", np.exceptions.RankWarning)
        coef = np.polyfit(log_n, loss, 2)
    lo, hi = float(np.min(log_n)), float(np.max(log_n))
    if coef[0] > 0 and lo < (vertex := -coef[1] / (2 * coef[0])) < hi:
        return float(vertex)
    grid = np.linspace(lo, hi, grid_points)
    return float(grid[np.argmin(np.polyval(coef, grid))])


def _boot_minima(log_n: np.ndarray, loss: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of the profile minimum (runs resampled with replacement)."""
    result = stats.bootstrap(
        (log_n, loss),
        profile_minimum,
        paired=True,
        vectorized=False,
        n_resamples=n_boot,
        method="percentile",
        rng=rng,
    )
    return np.asarray(result.bootstrap_distribution, dtype=float)


def isoflop_optima(
    runs: pd.DataFrame,
    *,
    loss: str = "final_test_loss",
    budget: str = "budget",
    n_params: str = "n_params",
    n_boot: int = 400,
    level: float = 0.95,
    rng: int | np.random.Generator = 0,
) -> tuple[pd.DataFrame, dict[float, np.ndarray]]:
    """Per budget: N_opt with its interval, D_opt = C / (6 N_opt), and whether it sits at an edge.

    Returns the table (one row per budget with >= 3 model sizes) and each
    budget's bootstrap replicates of log N_opt (for `fit_exponents`)."""
    require_columns(runs, [loss, budget, n_params], "isoflop analysis")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    table = runs[[budget, n_params, loss]].apply(pd.to_numeric, errors="coerce")
    table = table[np.isfinite(table).all(axis=1) & (table[n_params] > 0)]
    rows, replicates = [], {}
    tail = 100 * (1 - level) / 2
    for c, profile in table.groupby(budget, sort=True):
        sizes = np.sort(profile[n_params].unique())
        if len(sizes) < MIN_SIZES:
            continue
        log_n, y = np.log(profile[n_params].to_numpy(float)), profile[loss].to_numpy(float)
        best = profile_minimum(log_n, y)
        boot = _boot_minima(log_n, y, n_boot, gen)
        replicates[float(c)] = boot
        low, high = np.exp(np.percentile(boot, [tail, 100 - tail]))
        step = float(np.median(np.diff(np.log(sizes))))
        n_opt = float(np.exp(best))
        rows.append(
            dict(
                budget=float(c),
                n_opt=n_opt,
                n_low=float(low),
                n_high=float(high),
                d_opt=float(c) / (FLOPS_PER_PARAM_EXAMPLE * n_opt),
                n_sizes=len(sizes),
                at_edge=bool(best <= np.log(sizes[0]) + step / 4 or best >= np.log(sizes[-1]) - step / 4),
            )
        )
    return pd.DataFrame(rows), replicates


def fit_exponents(optima: pd.DataFrame, replicates: dict[float, np.ndarray], level: float = 0.95) -> Exponents:
    """Slopes of log N_opt and log D_opt on log C, with intervals from matched bootstrap replicates."""
    if len(optima) < 2:
        raise UserError(
            f"fitting N_opt ∝ C^a needs optima at 2 or more budgets (each with >= {MIN_SIZES} model sizes); "
            f"got {len(optima)}. Add budgets to design.budgets."
        )
    log_c = np.log(optima["budget"].to_numpy(float))
    a = float(np.polyfit(log_c, np.log(optima["n_opt"].to_numpy(float)), 1)[0])
    boot = np.stack([replicates[c] for c in optima["budget"]])  # (budgets, replicates)
    slopes = np.polyfit(log_c, boot, 1)[0]
    tail = 100 * (1 - level) / 2
    a_low, a_high = (float(v) for v in np.percentile(slopes, [tail, 100 - tail]))
    return Exponents(a, a_low, a_high, 1 - a, 1 - a_high, 1 - a_low, len(optima))
