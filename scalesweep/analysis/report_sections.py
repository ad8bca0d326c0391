"""Report sections beyond one scale axis: training dynamics per scale point, and levels.

* A phenomenon with `over: step` gets its own section: its per-step strength
  over training, one panel per scale point (small multiples, `figures.over_steps`),
  and the evidence of its verdicts along `step` (one slice per scale point).
* A phenomenon that reduces a step series with a step function
  (`first_step(test_acc >= 0.9)`) gets, below its figures along the scale axes,
  the series it reads over training, one panel per scale point, with each run's
  value of the step function marked when that value is itself a step: so a
  reader sees how the dynamics behind the number change with scale.
* The phenomenon sections are grouped under a heading per level (neuron,
  weight, representation, attention, output; `levels.by_level`), phenomena of
  unknown level last, under "other".

The panels are the scale points exactly as the classifier slices along `step`
(`slices.label_slices(rows, "step", axes, grid)`), so a panel's title is the
`slice` of its verdict in verdicts.csv.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from scalesweep.analysis import expressions, figures, levels, steps
from scalesweep.analysis import series as step_series
from scalesweep.analysis.phenomena import Phenomenon
from scalesweep.analysis.slices import label_slices, slice_columns

MAX_SERIES_FIGURES = 2  # series drawn per step-function phenomenon (the first its expressions read)
STEP_VALUED = ("first_step", "step_of_max", "step_of_min", "step_of_jump")  # step functions whose value is a step
LEVEL_TITLES = {
    "neuron": "Neuron level: units and their activity",
    "weight": "Weight level: parameters, their norms and spectra",
    "representation": "Representation level: hidden activations",
    "attention": "Attention level: attention patterns and heads",
    "output": "Output level: loss, accuracy and when they are reached",
    levels.OTHER: "Other: phenomena over columns no built-in observable records",
}


def _r():
    from scalesweep.analysis import report  # report imports this module lazily: no cycle at import time

    return report


# --- over steps -------------------------------------------------------------------------------


MAX_PANEL_COLUMNS = 8


def _panels(rows: pd.DataFrame, axes: Sequence[str], grid: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    labels, order = label_slices(rows, steps.AXIS, axes, grid)
    return rows.assign(slice=labels), order


def _columns(rows: pd.DataFrame, axes: Sequence[str], grid: Sequence[str]) -> int | None:
    """Panels per row: the number of values of the last slice column that varies (at most
    `MAX_PANEL_COLUMNS`), so that the grid's rows and columns are two scale axes."""
    varying = [c for c in slice_columns(rows, steps.AXIS, axes, grid) if rows[c].nunique() > 1]
    count = rows[varying[-1]].nunique() if varying else 0
    return count if 2 <= count <= MAX_PANEL_COLUMNS else None


def _figure_path(out_dir: Path, name: str, what: str) -> Path:
    return out_dir / "figures" / f"{_r()._slug(name)}__step__{_r()._slug(what)}.png"


def step_section(out_dir: Path, header, runs: pd.DataFrame, ph: Phenomenon, verdicts: pd.DataFrame) -> str:
    """The section of an `over: step` phenomenon: definition, strength over steps per scale point,
    the evidence along `step` and what would decide."""
    r = _r()
    rows, order = _panels(steps.step_rows(runs, ph, max_points=None), header.axes, header.grid)
    png = figures.over_steps(
        rows,
        value="strength",
        panel_col="slice",
        order=order,
        title=f"{ph.name} over training, one panel per scale point",
        ylabel=f"strength: {ph.strength}",
        path=_figure_path(out_dir, ph.name, "strength"),
        presence=ph.presence,
        columns=_columns(rows, header.axes, header.grid),
    )
    kept = len(steps.thin_steps(rows["step"].to_numpy()))
    caption = (
        f"{ph.name} at every logged step (log scale; thin: each seed, bold: their mean), one panel per scale "
        f"point; the classifier uses {kept} of the logged steps, spread evenly in log-step"
    )
    parts = [
        f"<h2 id='{r._anchor(ph.name)}'>{r._e(ph.name)}</h2>",
        r._definition(ph),
        "<p class='formula'>over: step: the strength is evaluated at every logged step of each run and "
        "classified along the training step, one slice per scale point.</p>",
        r._figure(png, caption, ph.name, steps.AXIS, "over_steps"),
    ]
    if len(verdicts):
        thinned = rows[rows["step"].isin(steps.thin_steps(rows["step"].to_numpy()))]
        parts.append("<h3>Evidence</h3>" + r._evidence_table(verdicts, []) + r._advice(verdicts, thinned, ph))
    return "\n".join(parts)


def _series_read(ph: Phenomenon) -> list[str]:
    """The step series a phenomenon's step functions read, in the order they first appear."""
    found: list[str] = []
    for expr in ph.expressions_used():
        for node in ast.walk(expressions.parse(expr)):
            if step_series.is_step_call(node):
                names = step_series.series_names(node) - {"step"} - set(ph.params)
                found += sorted(n for n in names if n not in found)
    return found


def _step_marks(ph: Phenomenon, runs: pd.DataFrame, rows: pd.DataFrame, key: str) -> dict[str, list[float]]:
    """Each panel's runs' strengths, when the strength is a step (`first_step(...)`, `step_of_max(...)`):
    the panels as `rows` (labelled with their slice) name them, the runs found by `key`."""
    body = expressions.parse(ph.strength).body
    if not (isinstance(body, ast.Call) and isinstance(body.func, ast.Name) and body.func.id in STEP_VALUED):
        return {}
    strength = dict(zip(runs[key], expressions.evaluate(ph.strength, runs, ph.params).astype(float), strict=True))
    panels = rows.drop_duplicates(key).groupby("slice")[key]
    return {str(label): [strength[k] for k in keys if k in strength] for label, keys in panels}


def series_parts(out_dir: Path, header, runs: pd.DataFrame, ph: Phenomenon) -> list[str]:
    """Figures of the step series a phenomenon's step functions read, over training, one panel per
    scale point; [] when it reads none or the runs came without their series."""
    names = _series_read(ph)[:MAX_SERIES_FIGURES]
    found = runs.attrs.get(step_series.SERIES_ATTR)
    if not names or found is None:
        return []
    index = step_series.index_of(found)
    if index.key not in runs.columns:
        return []
    rows, _ = steps.series_rows(runs, index)
    rows, order = _panels(rows, header.axes, header.grid)
    marks = _step_marks(ph, runs, rows, index.key)
    parts = []
    for name in (n for n in names if n in rows.columns):
        png = figures.over_steps(
            rows,
            value=name,
            panel_col="slice",
            order=order,
            title=f"{name} over training, one panel per scale point",
            ylabel=name,
            path=_figure_path(out_dir, ph.name, name),
            marks=marks,
            columns=_columns(rows, header.axes, header.grid),
        )
        caption = (
            f"{name}, the step series {ph.name} reads, at every logged step (log scale; thin: each seed, bold: "
            "their mean), one panel per scale point" + ("; dotted: each run's strength (a step)" if marks else "")
        )
        parts.append(_r()._figure(png, caption, ph.name, steps.AXIS, "over_steps"))
    return ["<h3>Over training</h3>", *parts] if parts else []


# --- grouped by level -------------------------------------------------------------------------


def grouped(phenomena: Sequence[Phenomenon], sections: Sequence[str]) -> str:
    """The phenomenon sections (in `phenomena` order) under a heading per level, with a line
    naming the phenomena of each level first."""
    r = _r()
    html_of = {ph.name: s for ph, s in zip(phenomena, sections, strict=True)}
    groups = levels.by_level(phenomena)
    index = "; ".join(
        f"<a href='#level-{level}'>{r._e(level)}</a>: "
        + ", ".join(f"<a href='#{r._anchor(ph.name)}'>{r._e(ph.name)}</a>" for ph in members)
        for level, members in groups
    )
    body = [f"<p class='levels'>Phenomena by level: {index}</p>"] if groups else []
    for level, members in groups:
        body.append(
            f"<div class='level' data-level='{r._e(level)}'><h2 class='level' id='level-{r._e(level)}'>"
            f"{r._e(LEVEL_TITLES[level])}</h2>"
            + "".join(f"<section class='phenomenon'>{html_of[ph.name]}</section>" for ph in members)
            + "</div>"
        )
    return "".join(body)
