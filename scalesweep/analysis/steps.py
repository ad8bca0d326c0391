"""Phenomena over training steps: a per-step strength, classified along `step`.

A phenomenon with `over: step` has a strength that is an expression over a
run's *step series* (`test_acc`, `attention_entropy_min`, `fourier_sparsity`,
`step`, the phenomenon's params), evaluated at every logged step. That gives a
tidy table, one row per (run, logged step), with the run's own columns (axes,
grid values, seed) beside `step` and `strength` (`step_rows`). The classifier
then reads it exactly as it reads a sweep along a scale axis, with `step` as
the axis:

* the slice is the **scale point**: the runs sharing every scale axis and grid
  value (`slices.slices(rows, "step", axes, grid)`), so each verdict says how
  the phenomenon develops over training at one width and data size;
* the unit of evidence is the **step-point mean over seeds** (the seeds of a
  scale point at one logged step are its replicates), with the same lack-of-fit
  rule, tests and Benjamini-Hochberg family (one phenomenon along `step`) as for
  any other axis (docs/classifier.md);
* steps are on a log axis, as scale is (training curves are read in log-steps),
  so step 0 (the model at initialisation) is not a point; and at most
  `MAX_STEP_POINTS` logged steps, spread evenly in log-step, enter a slice
  (`thin_steps`): the evaluations of one run are not independent draws (the
  same weights, a few updates apart), and eighty nearly equal neighbours would
  count as eighty points of evidence where a dozen carry the same information.

What this cannot separate, honestly: with one seed per scale point, a run's
own slow wander over training is its trend; the seeds are what make the
step-point means an average rather than one trajectory.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scalesweep.analysis import expressions
from scalesweep.analysis import series as step_series
from scalesweep.analysis.phenomena import Phenomenon
from scalesweep.errors import UserError

AXIS = "step"
MAX_STEP_POINTS = 8


def over_steps(ph: Phenomenon) -> bool:
    return ph.over == "step"


def thin_steps(steps: np.ndarray, max_points: int = MAX_STEP_POINTS) -> np.ndarray:
    """The logged steps (> 0) nearest in log-step to `max_points` targets spread evenly in log10 from
    the first positive step to the last, without repeats: the points a slice along `step` uses."""
    positive = np.unique(np.asarray(steps, dtype=float))
    positive = positive[np.isfinite(positive) & (positive > 0)]
    if len(positive) <= max_points:
        return positive
    logs = np.log10(positive)
    targets = np.linspace(logs[0], logs[-1], max_points)
    nearest = np.abs(logs[None, :] - targets[:, None]).argmin(axis=1)
    return positive[np.unique(nearest)]


def _series_index(runs: pd.DataFrame, ph: Phenomenon, series) -> step_series.SeriesIndex:
    found = series if series is not None else runs.attrs.get(step_series.SERIES_ATTR)
    if found is None:
        raise UserError(
            f'phenomenon "{ph.name}" has over: step, so its strength "{ph.strength}" is evaluated on the step '
            "series of each run, but no step series came with the runs (a sweep's report reads them from "
            "MLflow; a CSV table has none). Classify a sweep, or give the series table."
        )
    index = step_series.index_of(found)
    if index.key not in runs.columns:
        raise UserError(
            f'phenomenon "{ph.name}" (over: step): the runs table has no {index.key} to find the series by.'
        )
    return index


def series_rows(
    runs: pd.DataFrame, index: step_series.SeriesIndex, max_points: int | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """(rows, run columns): one row per (run, logged step), the run's columns beside `step` and its
    step series (a series wins over a run column of the same name, e.g. `weight_norm`, which is
    also logged once as a summary). With `max_points`, only the steps `thin_steps` picks from the
    steps any run logged."""
    frames = [index.by_run[k] for k in runs[index.key].tolist() if k in index.by_run]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[index.key, *index.columns])
    if max_points is not None and len(table):
        table = table[table["step"].isin(thin_steps(table["step"].to_numpy(), max_points))]
    run_columns = runs.drop(columns=[c for c in runs.columns if c != index.key and c in table.columns])
    run_columns = run_columns.drop(columns=[c for c in ("strength", "present", "alternative") if c in run_columns])
    rows = table.reset_index(drop=True).merge(run_columns, on=index.key, how="inner", validate="many_to_one")
    return rows, list(run_columns.columns)


def step_rows(
    runs: pd.DataFrame,
    ph: Phenomenon,
    series: pd.DataFrame | step_series.StepSeries | None = None,
    max_points: int | None = MAX_STEP_POINTS,
) -> pd.DataFrame:
    """One row per (run, logged step) of the runs' step series: the run's columns, `step`,
    `strength`, `present` and (if any) `alternative`, evaluated at that step.

    The series come as `series` or with the runs (`runs.attrs["step_series"]`, see
    `series.attach`). Only the steps `thin_steps` picks (from the steps logged by any run) are
    kept, unless `max_points` is None. A name of the strength that is not a step series is a
    `UserError` listing the series there are."""
    index = _series_index(runs, ph, series)
    rows, run_columns = series_rows(runs, index, max_points)
    series_table = rows[[c for c in rows.columns if c in index.columns or c == "step"]]
    out = rows[[*run_columns, "step"]].copy()
    out["strength"] = _evaluate(ph, ph.strength, series_table)
    out["present"] = ph.is_present(out["strength"].to_numpy())
    if ph.alternative:
        out["alternative"] = _evaluate(ph, ph.alternative, series_table)
    return out


def _evaluate(ph: Phenomenon, expr: str, table: pd.DataFrame) -> np.ndarray:
    """`expr` row-wise over the step series (one evaluation for all runs and steps at once)."""
    try:
        expressions.check_names(expr, table.columns, ph.params)
        return np.asarray(expressions.evaluate(expr, table, ph.params), dtype=float)
    except UserError as err:
        raise UserError(
            f'phenomenon "{ph.name}" (over: step, so its names are step series of each run): {err}'
        ) from None
