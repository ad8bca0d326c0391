"""The small figure each child run carries: its loss and accuracy curves.

MLflow's UI plots metrics one by one; a single PNG of train and test curves
side by side is what a researcher glances at when drilling into a run.
Built on a bare `matplotlib.figure.Figure` (no pyplot): no global state, so
the driver can draw while it keeps recording.
"""

from __future__ import annotations

import math

from matplotlib.figure import Figure

PANELS = [("loss", ["train_loss", "test_loss"], "log"), ("accuracy", ["train_acc", "test_acc"], "linear")]


def curves_figure(rows: list[dict[str, float]], title: str) -> Figure | None:
    """Train/test loss (log scale) and accuracy against step; None when there is nothing to draw."""
    panels = [(name, [c for c in cols if _has(rows, c)], scale) for name, cols, scale in PANELS]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    figure = Figure(figsize=(3.2 * len(panels), 2.4), dpi=80)  # a fixed layout: constrained doubles the cost
    for axes, (name, columns, scale) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for column in columns:
            points = [(r["step"], r[column]) for r in rows if _finite(r.get(column))]
            axes.plot(*zip(*points, strict=True), label=column.split("_")[0], lw=1.2)
        if scale == "log" and all(v > 0 for r in rows for c in columns if _finite(v := r.get(c))):
            axes.set_yscale("log")
        axes.set(xlabel="step", ylabel=name)
        axes.legend(fontsize=7, frameon=False)
    figure.suptitle(title, fontsize=9)
    figure.subplots_adjust(left=0.1, right=0.97, bottom=0.2, top=0.85, wspace=0.35)
    return figure


def _has(rows: list[dict[str, float]], column: str) -> bool:
    return any(_finite(r.get(column)) for r in rows)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
