"""Functions of the expression language over a run's logged step series.

A phenomenon may be defined on the course of training, not only on its end:
"the step at which test accuracy first reaches 0.9", "the peak of the train
loss", "the mean attention entropy over the first thousand steps". Each
function below takes, as its first argument, an expression over one run's
*step series* (the columns an observable logs at every evaluation, plus
`step`), evaluates it on every logged step of that run, and reduces it to one
number per run (one per row of the runs table):

| function | value |
|---|---|
| `first_step(cond)` | the first logged step at which `cond` holds (NaN if never) |
| `value_at(x, frac)` | `x` at the first logged step >= frac * the run's last logged step |
| `series_max(x)`, `series_min(x)` | the largest / smallest finite value of `x` |
| `step_of_max(x)`, `step_of_min(x)` | the (first) step where it is reached |
| `step_of_jump(x)` | the step ending the largest increase of `x` between two evaluations |
| `mean_over(x, start, end)` | the mean of `x` over the logged steps in [start, end] |

The other arguments (`frac`, `start`, `end`) are ordinary expressions over the
runs table (a number, a parameter, or a summary column such as
`steps_to_fit_train`). Inside the first argument only the run's step series,
`step` and the phenomenon's parameters are names; step functions do not nest.

The series are a table (`run_id` or `run_key`, `step`, one column per logged
metric; or the long `run_key, metric, step, value` of a phenomenon record),
given to `expressions.evaluate(..., series=...)` or attached to the runs table
with `attach(runs, table)` (as `runs.attrs["step_series"]`); rows of the
runs table are matched to their series by `run_id` (else `run_key`).
Everything stays inside the safe evaluator: no Python is run, only the
whitelisted AST of `expressions.py`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from scalesweep.errors import UserError, did_you_mean

if TYPE_CHECKING:  # pandas is imported where a table is read: checking a spec needs none
    import pandas as pd

SERIES_ATTR = "step_series"  # runs.attrs key the step series may travel under

# name -> number of arguments; the first is always a step-series expression
STEP_FUNCTIONS: dict[str, int] = {
    "first_step": 1,
    "value_at": 2,
    "series_max": 1,
    "series_min": 1,
    "step_of_max": 1,
    "step_of_min": 1,
    "step_of_jump": 1,
    "mean_over": 3,
}


def is_step_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in STEP_FUNCTIONS


def series_names(tree: ast.AST) -> set[str]:
    """Names used inside the series argument of any step function of a parsed expression."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if is_step_call(node):
            called = {id(n.func) for n in ast.walk(node.args[0]) if isinstance(n, ast.Call)}
            found |= {n.id for n in ast.walk(node.args[0]) if isinstance(n, ast.Name) and id(n) not in called}
    return found


def _first_step(steps: np.ndarray, values: np.ndarray) -> float:
    from scalesweep.analysis.expressions import truth  # expressions imports this module

    hit = truth(values)
    return float(steps[hit][0]) if hit.any() else np.nan


def _extreme(pick: Callable[[np.ndarray], int], want_step: bool) -> Callable[[np.ndarray, np.ndarray], float]:
    def reduce(steps: np.ndarray, values: np.ndarray) -> float:
        finite = np.isfinite(values)
        if not finite.any():
            return np.nan
        i = pick(np.where(finite, values, np.nan))
        return float(steps[i] if want_step else values[i])

    return reduce


def _step_of_jump(steps: np.ndarray, values: np.ndarray) -> float:
    rises = np.diff(values)
    if not np.isfinite(rises).any():
        return np.nan
    return float(steps[1:][int(np.nanargmax(rises))])


def _value_at(steps: np.ndarray, values: np.ndarray, frac: float) -> float:
    if not np.isfinite(frac) or not len(steps):
        return np.nan
    at = np.flatnonzero(steps >= frac * steps[-1])
    return float(values[at[0]]) if len(at) else np.nan


def _mean_over(steps: np.ndarray, values: np.ndarray, start: float, end: float) -> float:
    inside = (steps >= start) & (steps <= end) & np.isfinite(values)
    return float(values[inside].mean()) if inside.any() else np.nan


REDUCERS: dict[str, Callable[..., float]] = {
    "first_step": _first_step,
    "value_at": _value_at,
    "series_max": _extreme(np.nanargmax, want_step=False),
    "series_min": _extreme(np.nanargmin, want_step=False),
    "step_of_max": _extreme(np.nanargmax, want_step=True),
    "step_of_min": _extreme(np.nanargmin, want_step=True),
    "step_of_jump": _step_of_jump,
    "mean_over": _mean_over,
}


class SeriesIndex:
    """The step series of a runs table, grouped once by run: run id -> frame sorted by step.

    Takes the wide table (run_id or run_key, step, one column per metric) or the long one of a
    phenomenon record (`records.py`: run_key, metric, step, value), pivoted to wide. Runs are
    found by `key`: run_id when the table has it, else run_key."""

    def __init__(self, series: pd.DataFrame):
        if {"metric", "value"} <= set(series.columns):
            ids = [c for c in ("run_id", "run_key") if c in series.columns][:1]
            series = series.pivot_table(index=[*ids, "step"], columns="metric", values="value", aggfunc="last")
            series = series.reset_index().rename_axis(columns=None)
        self.key = next((c for c in ("run_id", "run_key") if c in series.columns), None)
        if self.key is None or "step" not in series.columns:
            raise UserError(
                "the step series table needs a run_id (or run_key) and a step column, and one column per "
                f"logged metric (or metric and value columns); it has: {', '.join(map(str, series.columns))}."
            )
        self.columns = sorted(str(c) for c in series.columns if c not in ("run_id", "run_key"))
        ordered = series.sort_values([self.key, "step"], kind="stable")
        self.by_run = {key: frame.reset_index(drop=True) for key, frame in ordered.groupby(self.key, sort=False)}


class StepSeries:
    """A sweep's step series as they travel with its runs table, in `runs.attrs["step_series"]`:
    compared by identity and never copied (pandas deep-copies and compares `attrs` in most
    operations, and a DataFrame there would make `merge` fail), grouped by run once."""

    def __init__(self, table: pd.DataFrame):
        self.table = table
        self._index: SeriesIndex | None = None

    @property
    def index(self) -> SeriesIndex:
        if self._index is None:
            self._index = SeriesIndex(self.table)
        return self._index

    def __copy__(self) -> StepSeries:
        return self

    def __deepcopy__(self, memo) -> StepSeries:
        return self


def index_of(series: pd.DataFrame | StepSeries) -> SeriesIndex:
    return series.index if isinstance(series, StepSeries) else SeriesIndex(series)


def attach(runs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """`runs` with `table` (run_id, step, metrics) as its step series; returns `runs`."""
    runs.attrs[SERIES_ATTR] = StepSeries(table)
    return runs


def call(
    name: str,
    node: ast.Call,
    expr: str,
    runs: pd.DataFrame,
    params: Mapping[str, float],
    index: SeriesIndex | None,
    evaluate_on: Callable[[ast.AST, pd.DataFrame], np.ndarray],
) -> np.ndarray:
    """One value per row of `runs`: the step function `name` of its run's series.

    `evaluate_on(node, frame)` evaluates a sub-expression on a frame (the runs table for the
    extra arguments, one run's series for the first)."""
    if index is None:
        raise UserError(
            f'expression "{expr}" uses {name}(), a function of the step series, but no step series were '
            "given with the runs (they are read from MLflow with the runs; a CSV table has none unless a "
            "series table comes with it)."
        )
    if index.key not in runs.columns:
        raise UserError(
            f'expression "{expr}" uses {name}(), but the runs table has no {index.key} to find the series by.'
        )
    argument = node.args[0]
    if any(is_step_call(n) for n in ast.walk(argument)):
        raise UserError(f'expression "{expr}": step functions do not nest (inside {name}()).')
    unknown = sorted(series_names(node) - set(index.columns) - set(params))
    if unknown:
        hint = "".join(did_you_mean(u, index.columns) for u in unknown)
        summary = [u for u in unknown if u in runs.columns]
        why = f" ({', '.join(summary)}: a summary, one value per run, not a step series)" if summary else ""
        raise UserError(
            f'expression "{expr}": {name}() needs step series, but {", ".join(unknown)}{hint} is not one{why}; '
            f"the step series are: {', '.join(index.columns)}."
        )
    extra = [np.broadcast_to(np.asarray(evaluate_on(a, runs), dtype=float), (len(runs),)) for a in node.args[1:]]
    reduce = REDUCERS[name]
    out = np.full(len(runs), np.nan)
    for i, run_id in enumerate(runs[index.key].to_numpy()):
        frame = index.by_run.get(run_id)
        if frame is None or frame.empty:
            continue
        values = np.broadcast_to(np.asarray(evaluate_on(argument, frame)), (len(frame),))
        steps = frame["step"].to_numpy(dtype=float)
        out[i] = reduce(steps, values if values.dtype == bool else values.astype(float), *(e[i] for e in extra))
    return out


def series_needed(exprs, params=()) -> list[str]:
    """The step series a list of expressions reads (to fetch with `store.read_step_series`), `step` and
    parameters left out."""
    from scalesweep.analysis.expressions import parse

    found: set[str] = set()
    for expr in exprs:
        found |= series_names(parse(expr))
    return sorted(found - {"step"} - set(params))


def uses_step_function(expr: str) -> bool:
    """Whether `expr` calls any step function (first_step, series_max, ...)."""
    from scalesweep.analysis.expressions import parse

    return any(is_step_call(node) for node in ast.walk(parse(expr)))


SERIES_ARGUMENT = "series_max"  # any one-argument step function: only its argument's names matter


def as_series_argument(expr: str) -> str:
    """`expr` as the argument of a step function: how a per-step expression (a phenomenon with
    `over: step`) states that its names are step series, for every reader of step-series names
    (`series_names`, `series_needed`, `validate`'s check that each is logged at every step)."""
    return f"{SERIES_ARGUMENT}({expr})"
