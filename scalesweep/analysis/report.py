"""The report: one self-contained HTML page, `verdicts.csv`, and the PNGs.

Figures are embedded as base64 so that the page opens from disk with no
network; the same PNGs are written beside it for papers and slides. Every
string that comes from a spec or a run goes through `html.escape`.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from scalesweep.analysis import figures
from scalesweep.analysis.phenomena import Phenomenon, evaluate

VERDICT_COLOURS = {
    "expansion": "#d7f0d2",
    "shrinkage": "#d6e6f7",
    "transformation": "#f9e2c4",
    "persistent": "#ececec",
    "absent": "#f7f7f7",
    "inconclusive": "#f6d5d5",
}


@dataclass
class Study:
    """What the first screen says about the study."""

    title: str
    axes: list[str]
    grid: list[str] = field(default_factory=list)
    runs_finished: int = 0
    runs_failed: int = 0
    notes: list[str] = field(default_factory=list)
    mlflow_url: str | None = None


def write_report(
    out_dir: Path, study: Study, runs: pd.DataFrame, phenomena: list[Phenomenon], verdicts: pd.DataFrame
) -> Path:
    """Write report.html, verdicts.csv and figures/*.png into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    verdicts.to_csv(out_dir / "verdicts.csv", index=False)
    sections = [_phenomenon_section(out_dir, study, runs, ph, verdicts) for ph in phenomena]
    page = _page(study, runs, verdicts, sections)
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _phenomenon_section(out_dir: Path, study: Study, runs: pd.DataFrame, ph: Phenomenon, verdicts: pd.DataFrame) -> str:
    table = evaluate(runs, ph)
    parts = [f"<h2 id='{_e(ph.name)}'>{_e(ph.name)}</h2>", f"<p class='definition'>{_e(ph.description)}</p>"]
    parts.append(
        f"<p class='formula'>strength = <code>{_e(ph.strength)}</code>; more pronounced = {_e(ph.direction)}; "
        f"present beyond {ph.presence:g}; minimum effect {ph.min_effect:g}</p>"
    )
    for axis in study.axes:
        if table[axis].nunique() < 2:
            continue
        others = [a for a in study.axes + study.grid if a != axis and a in table and table[a].nunique() > 1]
        slice_col = None
        if others:
            table["slice"] = table[others].astype(str).agg(", ".join, axis=1) if len(others) > 1 else table[others[0]]
            slice_col = "slice" if len(others) > 1 else others[0]
        png = figures.strength_vs_axis(
            table,
            axis=axis,
            slice_col=slice_col,
            title=f"{ph.name} along {axis}",
            ylabel=ph.strength,
            path=out_dir / "figures" / f"{_slug(ph.name)}__{axis}.png",
        )
        parts.append(_figure(png, f"{ph.name} along {axis}"))
    if ph.regimes and len(study.axes) >= 2 and all(table[a].nunique() > 1 for a in study.axes[:2]):
        png = figures.regime_phase_diagram(
            table,
            x=study.axes[0],
            y=study.axes[1],
            title=f"{ph.name}: dominant regime",
            path=out_dir / "figures" / f"{_slug(ph.name)}__phases.png",
        )
        parts.append(_figure(png, f"{ph.name} phase diagram"))
    mine = verdicts[verdicts["phenomenon"] == ph.name]
    if len(mine):
        parts.append("<h3>Evidence</h3>" + _verdict_table(mine, evidence=True))
        parts.extend(_plain_words(row) for _, row in mine.iterrows() if row["verdict"] == "inconclusive")
    return "\n".join(parts)


def _plain_words(row: pd.Series) -> str:
    return (
        f"<p class='note'><b>{_e(row['axis'])}, {_e(row['slice'])}</b>: inconclusive because "
        f"{_e(row['detail'])}. More scale points (a 4x span at least), more seeds, or a wider range "
        "would decide it.</p>"
    )


def _figure(png: Path, alt: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (
        f"<figure><img alt='{_e(alt)}' src='data:image/png;base64,{data}'><figcaption>{_e(alt)}</figcaption></figure>"
    )


def _verdict_table(verdicts: pd.DataFrame, evidence: bool = False) -> str:
    columns = ["phenomenon", "axis", "slice", "verdict", "detail", "confidence"]
    if evidence:
        columns += ["effect", "ci_low", "ci_high", "p_value"] + (["p_adjusted"] if "p_adjusted" in verdicts else [])
        columns += ["transition", "n_points", "n_seeds"]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    rows = []
    for _, row in verdicts.iterrows():
        colour = VERDICT_COLOURS.get(str(row["verdict"]), "#ffffff")
        cells = "".join(f"<td>{_e(_fmt(row.get(c)))}</td>" for c in columns)
        rows.append(f"<tr class='verdict-{_e(row['verdict'])}' style='background:{colour}'>{cells}</tr>")
    return f"<table class='verdicts'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _study_header(study: Study, runs: pd.DataFrame) -> str:
    ranges = []
    for axis in study.axes + study.grid:
        if axis in runs:
            values = sorted(runs[axis].dropna().unique().tolist())
            ranges.append(f"<li><b>{_e(axis)}</b>: {_e(', '.join(_fmt(v) for v in values))}</li>")
    link = f" · <a href='{_e(study.mlflow_url)}'>MLflow</a>" if study.mlflow_url else ""
    notes = "".join(f"<p class='note'>{_e(n)}</p>" for n in study.notes)
    return (
        f"<h1>{_e(study.title)}</h1>"
        f"<p>{study.runs_finished} runs finished · {study.runs_failed} failed{link}</p>"
        f"<ul class='axes'>{''.join(ranges)}</ul>{notes}"
    )


def _page(study: Study, runs: pd.DataFrame, verdicts: pd.DataFrame, sections: list[str]) -> str:
    bh = (
        "<p class='note'>p-values are adjusted for multiple comparisons across this report's verdicts "
        "(Benjamini-Hochberg); <i>p_adjusted</i> is the adjusted value.</p>"
        if "p_adjusted" in verdicts
        else ""
    )
    body = (
        _study_header(study, runs)
        + "<h2>Verdicts</h2>"
        + _verdict_table(verdicts)
        + bh
        + "".join(f"<section>{s}</section>" for s in sections)
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(study.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table.verdicts {{ border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }}
table.verdicts td, table.verdicts th {{ border: 1px solid #ccc; padding: 3px 7px; text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 520px; }}
p.note {{ color: #555; font-size: 0.9em; }} code {{ background: #f3f3f3; padding: 1px 4px; }}
</style></head><body>
{body}
</body></html>
"""


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
