"""The one definition of a slice: the runs that share every other axis and grid value.

A verdict is about one phenomenon along one axis *in one slice*. The
classifier, the report's figures and `scalesweep refine` must group runs the
same way and name the groups the same way ("model_size=64, lr=0.01"), or a
figure's legend, a verdict and a proposal would talk about different runs. So
they all call `slices` (or `label_slices`) here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

# Axes computed from other columns (compute ≈ 6 · n_params · tokens seen). Never a slice
# column along another axis (each run would be its own slice); along one, the columns it is
# made of vary with it, so they do not slice either: "along compute" is the study's diagonal.
DERIVED_AXES = {"compute": ("model_size", "data_size", "n_params", "budget")}


def slice_columns(runs: pd.DataFrame, axis: str, axes: Sequence[str], grid: Sequence[str]) -> list[str]:
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


def slices(
    runs: pd.DataFrame, axis: str, axes: Sequence[str], grid: Sequence[str]
) -> Iterator[tuple[str, pd.DataFrame]]:
    """(label, runs) of every slice along `axis`, in a stable order; one slice "all" when nothing else varies."""
    cols = slice_columns(runs, axis, axes, grid)
    if not cols:
        yield "all", runs
        return
    for key, group in runs.groupby(cols, dropna=False, sort=True):
        yield slice_label(cols, key), group


def label_slices(runs: pd.DataFrame, axis: str, axes: Sequence[str], grid: Sequence[str]) -> tuple[pd.Series, list]:
    """Each run's slice label along `axis`, and the labels in order."""
    labels = pd.Series("all", index=runs.index, dtype=object)
    order = []
    for label, group in slices(runs, axis, axes, grid):
        labels[group.index] = label
        order.append(label)
    return labels, order


def slice_label(cols: Sequence[str], key) -> str:
    if not cols:
        return "all"
    key = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{c}={_fmt(v)}" for c, v in zip(cols, key, strict=True))


def _fmt(value) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:g}"
    return str(value)
