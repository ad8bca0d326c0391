"""The report: one self-contained HTML page, `verdicts.csv`, and the PNGs.

Read top to bottom, the page answers what a researcher asks in order: what
was studied (spec, axes, runs), what the verdicts are (a coloured table),
and then, per phenomenon, what it means, what the data look like, which law
fits, the evidence behind each verdict, what would decide the undecided ones,
and which runs make up each point.

Figures are embedded as base64 so that the page opens from disk with no
network; the same PNGs are written beside it for papers and slides. Every
string that comes from a spec or a run goes through `html.escape`; the page
has no script.
"""

from __future__ import annotations

import ast
import base64
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scalesweep.analysis import classify, expressions, figures, fits, levels, stats, steps, transformations
from scalesweep.analysis import series as step_series
from scalesweep.analysis.advice import advice
from scalesweep.analysis.classify import VERDICT_COLUMNS, VERDICTS
from scalesweep.analysis.phenomena import Phenomenon, evaluate
from scalesweep.analysis.slices import label_slices, slice_columns
from scalesweep.errors import UserError, safe_name

VERDICT_COLOURS = {
    "expansion": "#d7f0d2",
    "shrinkage": "#d6e6f7",
    "transformation": "#f9e2c4",
    "persistent": "#ececec",
    "absent": "#f7f7f7",
    "inconclusive": "#f6d5d5",
}
MEANINGS = {
    "expansion": "more pronounced with scale",
    "shrinkage": "less pronounced with scale",
    "transformation": "changes kind (regime, sign or direction)",
    "persistent": "present, and no change that matters",
    "absent": "never present",
    "inconclusive": "the data cannot decide yet",
}
FITTED = ("expansion", "shrinkage")  # verdicts that get a saturating power law
TREND_DRAWN = ("expansion", "shrinkage", "persistent")  # verdicts whose trend line is drawn
EXTRAPOLATE = 4.0  # fitted laws are drawn up to this factor beyond the largest scale
MIN_FIT_POINTS = 4  # a 3-parameter law needs more scale points than parameters
MIN_ALPHA = 0.01  # below this the power law is a straight line in log scale


@dataclass
class ReportHeader:
    """The report page's header: what the first screen says about the study, and where its runs live."""

    title: str
    axes: list[str]
    grid: list[str] = field(default_factory=list)
    runs_finished: int = 0
    runs_failed: int = 0
    notes: list[str] = field(default_factory=list)
    mlflow_url: str | None = None
    experiment_id: str | None = None
    failed_runs: list[tuple[str, str]] = field(default_factory=list)  # (run name, run id)
    axis_nouns: dict[str, str] = field(default_factory=dict)  # how a value of an axis reads: "training pairs"

    def run_url(self, run_id: str) -> str | None:
        """The run's page in the MLflow UI, when the runs are on a tracking server."""
        base = self.experiment_url()
        return f"{base}/runs/{run_id}" if base else None

    def experiment_url(self) -> str | None:
        if self.mlflow_url and self.experiment_id and self.mlflow_url.startswith(("http://", "https://")):
            return f"{self.mlflow_url.rstrip('/')}/#/experiments/{self.experiment_id}"
        return None


@dataclass
class _Law:
    """A law fitted over one slice: the curve to draw and the words for the evidence."""

    curve: figures.Curve
    words: str


def write_report(
    out_dir: Path, study: ReportHeader, runs: pd.DataFrame, phenomena: list[Phenomenon], verdicts: pd.DataFrame
) -> Path:
    """Write report.html, verdicts.csv, runs.csv and figures/*.png into `out_dir`; return the page's path.
    A folder that takes no files (read-only, full, not a folder) is a UserError naming it."""
    try:
        return _write_files(out_dir, study, runs, phenomena, verdicts)
    except OSError as err:
        raise UserError(f"cannot write the report to {out_dir} ({err.strerror or err}); pass another --out.") from None


def _write_files(
    out_dir: Path, study: ReportHeader, runs: pd.DataFrame, phenomena: list[Phenomenon], verdicts: pd.DataFrame
) -> Path:
    runs = classify.usable_runs(runs, [*study.axes, *study.grid])  # the runs the classifier used
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / "figures").glob("*__*.png"):  # figures of an earlier report of this study
        stale.unlink()
    verdicts = stable_columns(verdicts)
    verdicts.to_csv(out_dir / "verdicts.csv", index=False)
    pairs = transformations.find_pairs(verdicts, phenomena)
    pairs.to_csv(out_dir / "transformations.csv", index=False)
    runs.to_csv(out_dir / "runs.csv", index=False)  # the tidy table: input to `scalesweep fit` / `classify`
    sections = [_phenomenon_section(out_dir, study, runs, ph, verdicts) for ph in phenomena]
    path = out_dir / "report.html"
    found = _found(verdicts, phenomena, pairs, study.axis_nouns)
    path.write_text(_page(study, runs, phenomena, verdicts, sections, found), encoding="utf-8")
    return path


def stable_columns(verdicts: pd.DataFrame) -> pd.DataFrame:
    """`VERDICT_COLUMNS` first and in order (the CSV's stable interface), then the rest."""
    out = verdicts.copy()
    for column in VERDICT_COLUMNS:
        if column not in out:
            out[column] = math.nan
    return out[[*VERDICT_COLUMNS, *(c for c in out.columns if c not in VERDICT_COLUMNS)]]


# --- one phenomenon ------------------------------------------------------------


def _phenomenon_section(
    out_dir: Path, study: ReportHeader, runs: pd.DataFrame, ph: Phenomenon, verdicts: pd.DataFrame
) -> str:
    if steps.over_steps(ph):  # a per-step strength: its own section, over training per scale point
        mine = verdicts[verdicts["phenomenon"] == ph.name]
        return step_section(out_dir, study, runs, ph, mine)
    table = evaluate(runs, ph)
    mine = verdicts[verdicts["phenomenon"] == ph.name]
    parts = [f"<h2 id='{_anchor(ph.name)}'>{_e(ph.name)}</h2>", _definition(ph)]
    laws: list[tuple[pd.Series, _Law]] = []
    for axis in study.axes:
        if axis in table and table[axis].nunique() > 1:
            part, found = _axis_part(out_dir, study, table, ph, axis, mine[mine["axis"] == axis])
            parts.append(part)
            laws += found
    x, y = study.axes[:2] if len(study.axes) >= 2 else (None, None)
    if ph.regimes and x and all(a in table and table[a].nunique() > 1 for a in (x, y)):
        png = figures.regime_phase_diagram(
            table,
            x=x,
            y=y,
            labels=[*ph.regimes, "other"],
            title=f"{ph.name}: dominant regime",
            path=out_dir / "figures" / f"{_slug(ph.name)}__phases.png",
        )
        caption = f"{ph.name}: dominant regime over {x} x {y} (share of runs in each cell)"
        parts.append(_figure(png, caption, ph.name, f"{x} x {y}", "phases"))
    parts += series_parts(out_dir, study, runs, ph)  # the step series it reads, per scale point
    if len(mine):
        parts.append("<h3>Evidence</h3>" + _evidence_table(mine, laws) + _advice(mine, table, ph))
    return "\n".join(parts)


def _definition(ph: Phenomenon) -> str:
    words = f"<p class='definition'>{_e(ph.description)}</p>" if ph.description else ""
    formula = (
        f"<p class='formula'>strength = <code>{_e(ph.strength)}</code>; more pronounced = {_e(ph.direction)}; "
        f"present when strength is {'above' if ph.direction == 'higher' else 'below'} {_e(_fmt(ph.presence))}; "
        f"smallest change that matters (min_effect) {_e(_fmt(ph.min_effect))}"
        + ("; signed (a sign change is a transformation)" if ph.signed else "")
        + "</p>"
    )
    regimes = ""
    if ph.regimes:
        items = "".join(f"<li><b>{_e(k)}</b>: <code>{_e(v)}</code></li>" for k, v in ph.regimes.items())
        regimes = f"<p>Regimes (the first that holds; otherwise <i>other</i>):</p><ul class='regimes'>{items}</ul>"
    return words + formula + regimes


def _axis_part(
    out_dir: Path, study: ReportHeader, table: pd.DataFrame, ph: Phenomenon, axis: str, verdicts: pd.DataFrame
) -> tuple[str, list[tuple[pd.Series, _Law]]]:
    """One figure of the phenomenon along `axis` (a line per slice, laws drawn) and the runs behind it."""
    table, order = _with_slices(table, study, axis)
    laws = []
    for _, row in verdicts.iterrows():
        law = _law(table[table["slice"] == row["slice"]], axis, row, ph)
        if law is not None:
            laws.append((row, law))
    figure = _axis_figure(out_dir, table, ph, axis, order, [law.curve for _, law in laws])
    return figure + _runs_behind(table, axis, order, study), laws


def _axis_figure(
    out_dir: Path, table: pd.DataFrame, ph: Phenomenon, axis: str, order: list[str], curves: list[figures.Curve]
) -> str:
    """Strength along the axis; the regimes' shares instead when no run has a finite strength."""
    path = out_dir / "figures" / f"{_slug(ph.name)}__{_slug(axis)}.png"
    if ph.regimes and not np.isfinite(table["strength"].to_numpy(dtype=float)).any():
        title = f"{ph.name} along {axis}: regimes (no run has a finite strength)"
        png = figures.regime_shares_vs_axis(table, axis=axis, labels=[*ph.regimes, "other"], title=title, path=path)
        caption = f"{ph.name} along {axis} (log scale): no run has a finite strength; share of runs in each regime"
        return _figure(png, caption, ph.name, axis, "strength")
    png = figures.strength_vs_axis(
        table,
        axis=axis,
        slice_col="slice",
        order=order,
        title=f"{ph.name} along {axis}",
        ylabel=f"strength: {ph.strength}" if len(ph.strength) <= 40 else "strength",
        path=path,
        curves=curves,
        presence=ph.presence,
    )
    spread = (
        "mean over seeds with its 95% interval"
        if _replicated(table, axis)
        else "one value per model; noise from the scatter around the trend"
    )
    caption = (
        f"{ph.name} along {axis} (log scale): {spread}, one line (or panel) per slice; "
        "dashed: the fitted curve of the verdict, dotted: its extrapolation"
    )
    return _figure(png, caption, ph.name, axis, "strength")


def _replicated(table: pd.DataFrame, axis: str) -> bool:
    """As the classifier decides it: most scale points of a slice hold two or more values."""
    finite = table[np.isfinite(pd.to_numeric(table["strength"], errors="coerce"))]
    if finite.empty:
        return False
    counts = finite.groupby(["slice", axis] if "slice" in finite else [axis]).size()
    return bool((counts >= 2).mean() > 0.5)


def _with_slices(table: pd.DataFrame, study: ReportHeader, axis: str) -> tuple[pd.DataFrame, list[str]]:
    """Label each run with its slice exactly as the classifier names it, so that
    the figure's legend, the verdict table and the runs table agree."""
    labels, order = label_slices(table, axis, study.axes, study.grid)
    return table.assign(slice=labels), order


# --- fitted laws ------------------------------------------------------------------


def _law(points: pd.DataFrame, axis: str, row: pd.Series, ph: Phenomenon) -> _Law | None:
    """The curve behind a verdict, whatever its kind: the U (quadratic or broken line) of a
    shape, the clipped ramp of an abrupt onset, and for trends, where the classifier found
    the trend curved in log scale and there are enough points, a saturating power law;
    otherwise the classifier's own straight line in log scale. A bounded strength (all
    values within [0, 1], or all non-negative) is never drawn outside its bounds."""
    x = pd.to_numeric(points[axis], errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(points["strength"], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    if len(np.unique(x)) < 2 or not _finite(row["effect"]):
        return None
    law = _shape_law(x, y, axis, row)
    if law is None:
        law = _trend_law(x, y, axis, row, ph)
    if law is not None:
        lo, hi = _bounds(y)
        law.curve.y = np.clip(law.curve.y, lo, hi)
    return law


def _bounds(y: np.ndarray) -> tuple[float, float]:
    if y.min() >= 0 and y.max() <= 1:
        return 0.0, 1.0
    return (0.0, math.inf) if y.min() >= 0 else (-math.inf, math.inf)


def _shape_law(x: np.ndarray, y: np.ndarray, axis: str, row: pd.Series) -> _Law | None:
    """The fitted U (broken line or quadratic) or clipped ramp, over the measured range only."""
    reason = _text(row, "reason")
    if reason not in ("u_shape", "inverted_u", "abrupt_onset", "abrupt_offset"):
        return None
    u = np.log10(x)
    pts = stats.points_of(np.unique(u, return_inverse=True)[1], u, y, stats.is_replicated(u))
    grid = np.geomspace(x.min(), x.max(), 80)
    g = np.log10(grid)
    if reason.startswith("abrupt"):
        ramp = stats.ramp(pts, "low" if reason == "abrupt_onset" else "high")
        if ramp is None:
            return None
        curve_y = ramp.a + ramp.b * np.clip(g, ramp.c1, ramp.c2)
        words = f"clipped ramp: flat to {axis} = {10**ramp.c1:.3g}, linear to {10**ramp.c2:.3g}, then flat"
        return _Law(figures.Curve(str(row["slice"]), grid, curve_y, "onset model", x.max()), words)
    if "broken line" in _text(row, "detail"):
        hinge = stats.hinge(pts)
        if hinge is None:
            return None
        a, left, right = hinge.fit.coef
        curve_y = a + left * np.minimum(g - hinge.c, 0) + right * np.maximum(g - hinge.c, 0)
        words = f"broken line: {left:+.3g} per decade up to {axis} = {10**hinge.c:.3g}, then {right:+.3g}"
        return _Law(figures.Curve(str(row["slice"]), grid, curve_y, "U fit", x.max()), words)
    fit, centre = stats.polynomial(pts, 2)
    curve_y = fit.coef[0] + fit.coef[1] * (g - centre) + fit.coef[2] * (g - centre) ** 2
    words = f"quadratic in log10 {axis}, extremum near {_fmt(row['transition'])}"
    return _Law(figures.Curve(str(row["slice"]), grid, curve_y, "U fit", x.max()), words)


def _trend_law(x: np.ndarray, y: np.ndarray, axis: str, row: pd.Series, ph: Phenomenon) -> _Law | None:
    grid = np.geomspace(x.min(), x.max() * EXTRAPOLATE, 60)
    curved = row.get("shape") in ("accelerating", "decelerating")
    if row["verdict"] in FITTED and curved and len(np.unique(x)) >= MIN_FIT_POINTS:
        law = _power_law(x, y, grid, axis, row, ph)
        if law is not None:
            return law
    if row["verdict"] not in TREND_DRAWN and _text(row, "reason") != "sign_flip":
        return None
    u = np.log10(x)
    intercept = y.mean() - row["effect"] * u.mean()  # least squares on the runs, as the classifier fits it
    curve = figures.Curve(str(row["slice"]), grid, intercept + row["effect"] * np.log10(grid), "trend", x.max())
    return _Law(curve, f"straight line in log scale: {row['effect']:+.3g} per decade of {axis}")


def _power_law(
    x: np.ndarray, y: np.ndarray, grid: np.ndarray, axis: str, row: pd.Series, ph: Phenomenon
) -> _Law | None:
    """y = E + A x^-alpha on the seed means, fitted to rising data as -y so that it may
    saturate either way; None when the fit degenerates (alpha near 0) or fails."""
    sign = -1.0 if row["effect"] > 0 else 1.0
    xs, means = np.unique(x), pd.Series(y).groupby(x).mean().to_numpy()
    try:
        fit = fits.fit_power_law(xs, sign * means, n_boot=0)
    except (UserError, ValueError, FloatingPointError, np.linalg.LinAlgError):
        return None
    curve_y = sign * fit.predict(grid)
    if abs(fit.params["alpha"]) < MIN_ALPHA or not np.all(np.isfinite(curve_y)):
        return None
    p = fit.params
    words = (
        f"power law y = {sign * p['E']:.3g} {'-' if sign < 0 else '+'} {p['A']:.3g} x^-alpha, alpha = {p['alpha']:.3g}"
    )
    if np.isfinite(ph.presence):
        cross = fit.crossing(sign * ph.presence)[0]
        if math.isfinite(cross) and cross > x.max():
            words += f"; extrapolated, it crosses the presence threshold at {axis} = {cross:.3g}"
    return _Law(figures.Curve(str(row["slice"]), grid, curve_y, "power law", x.max()), words)


# --- tables and words ---------------------------------------------------------------


def _evidence_table(verdicts: pd.DataFrame, laws: list[tuple[pd.Series, _Law]]) -> str:
    law_of = {(r["axis"], r["slice"]): law.words for r, law in laws}
    flagged = _any_text(verdicts, "flag")
    alternative = _any_text(verdicts, "alt_verdict")
    replicated = not verdicts["noise"].fillna("").astype(str).str.startswith("one value per model").all()
    head = (
        [
            "axis",
            "slice",
            "verdict",
            "detail",
            "confidence",
            "effect per decade [95% CI]",
            "p",
            "p adjusted",
            "transition",
            "points",
            "seeds" if replicated else "values per point",
            "fitted law",
        ]
        + (["on the alternative metric"] if alternative else [])
        + (["flag"] if flagged else [])
    )
    rows = []
    for _, r in verdicts.iterrows():
        cells = [
            r["axis"],
            r["slice"],
            r["verdict"],
            r["detail"],
            _pct(r["confidence"]),
            f"{_fmt(r['effect'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if _finite(r["effect"]) else "",
            _fmt(r["p_value"]),
            _fmt(r.get("p_adjusted")),
            _fmt(r["transition"]),
            _fmt(r["n_points"]),
            _fmt(r["n_seeds"]) if replicated else "1",
            law_of.get((r["axis"], r["slice"]), ""),
        ]
        if alternative:
            alt = _text(r, "alt_detail")
            cells.append(_text(r, "alt_verdict") + (f" ({alt})" if alt else ""))
        if flagged:
            cells.append(_text(r, "flag"))
        rows.append(_row(r["verdict"], cells))
    units = (
        "over seeds within each point (or over whole points where the point means scatter more than seeds)"
        if replicated
        else "over models (one value per model; noise from the scatter around the trend)"
    )
    note = (
        "<p class='note'>effect: change of the strength per tenfold increase of the axis (least squares on "
        "log10 of the axis, the scale points as the units); p: the test behind the verdict (slope, shape, regime "
        "flip, or equivalence for <i>persistent</i>); p adjusted: Benjamini-Hochberg over the slices of one "
        f"phenomenon along one axis; confidence: share of bootstrap resamples {units} that give the same "
        "verdict; transition: the scale where the phenomenon changes (emerges, vanishes, changes regime or "
        "sign, or the extremum of a U).</p>"
    )
    return _table(head, rows, "evidence") + note


def _any_text(verdicts: pd.DataFrame, column: str) -> bool:
    return column in verdicts and bool(verdicts[column].fillna("").astype(str).str.len().gt(0).any())


def _text(row: pd.Series, column: str) -> str:
    value = row.get(column)
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _advice(verdicts: pd.DataFrame, table: pd.DataFrame, ph: Phenomenon) -> str:
    items = []
    for _, r in verdicts.iterrows():
        values = sorted(pd.to_numeric(table[r["axis"]], errors="coerce").dropna().unique().tolist())
        words = advice(r.to_dict(), values, ph.min_effect)
        if words:
            items.append(f"<li><b>{_e(r['axis'])}, {_e(r['slice'])}</b> ({_e(r['verdict'])}): {_e(words)}</li>")
    return f"<h3>What would decide</h3><ul class='advice'>{''.join(items)}</ul>" if items else ""


def _runs_behind(table: pd.DataFrame, axis: str, order: list[str], study: ReportHeader) -> str:
    """Each point of the figure with the runs it averages, linked to MLflow when possible."""
    if "run_id" not in table:
        return ""
    points = []
    for (label, value), group in table.groupby(["slice", axis], sort=False):
        group = group.sort_values("seed") if "seed" in group else group
        regimes = ", ".join(f"{n} {k}" for k, n in group["regime"].value_counts().items()) if "regime" in group else ""
        text = "".join(f"<td>{_e(c)}</td>" for c in (label, _fmt(value), _fmt(group["strength"].mean()), regimes))
        runs = " ".join(_run_ref(run, study) for _, run in group.iterrows())
        rank = order.index(label) if label in order else len(order)
        points.append(((rank, value), f"<tr>{text}<td>{runs}</td></tr>"))
    body = "".join(row for _, row in sorted(points, key=lambda point: point[0]))
    head = "".join(f"<th>{_e(h)}</th>" for h in ("slice", axis, "mean strength", "regimes", "runs"))
    return (
        f"<details class='runs'><summary>Runs behind each point along {_e(axis)}</summary>"
        f"<table class='runs'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></details>"
    )


def _run_ref(run: pd.Series, study: ReportHeader) -> str:
    run_id = str(run["run_id"])
    seed = f"seed {_e(_fmt(run['seed']))}: " if "seed" in run else ""
    name = f" title='{_e(run['run_name'])}'" if "run_name" in run and isinstance(run["run_name"], str) else ""
    url = study.run_url(run_id)
    code = f"<code{name}>{_e(run_id)}</code>"
    return (
        f"<span class='run'>{seed}<a href='{_e(url)}'>{code}</a></span>"
        if url
        else f"<span class='run'>{seed}{code}</span>"
    )


def _figure(png: Path, caption: str, phenomenon: str, axis: str, kind: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (
        f"<figure><img alt='{_e(caption)}' data-phenomenon='{_e(phenomenon)}' data-axis='{_e(axis)}' "
        f"data-kind='{kind}' data-file='figures/{_e(png.name)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _row(verdict: Any, cells: Iterable[Any], lead: str = "") -> str:
    """A table row coloured by its verdict; `lead` is a first cell that is already HTML."""
    css = f"v-{verdict}" if verdict in VERDICTS else "v-other"
    first = f"<td>{lead}</td>" if lead else ""
    return f"<tr class='{css}'>{first}" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>"


def _table(head: list[str], rows: list[str], css: str) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<table class='{css}'><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


# --- the first screen ---------------------------------------------------------------


def _verdict_table(verdicts: pd.DataFrame, phenomena: list[Phenomenon]) -> str:
    head = ["phenomenon", "axis", "slice", "verdict", "in words", "detail", "confidence"]
    direction = {ph.name: ph.direction for ph in phenomena}
    rows = []
    for _, r in verdicts.iterrows():
        link = f"<a href='#{_anchor(r['phenomenon'])}'>{_e(r['phenomenon'])}</a>"
        detail = r["detail"] + ("; FLAGGED: see the evidence" if _text(r, "flag") else "")
        words = in_words(r, direction.get(r["phenomenon"], "higher"))
        cells = [r["axis"], r["slice"], r["verdict"], words, detail, _pct(r["confidence"])]
        rows.append(_row(r["verdict"], cells, lead=link))
    return _table(head, rows, "verdicts")


def in_words(row: pd.Series | dict, direction: str) -> str:
    """The verdict in the table's own direction: "brier falls with n_params (more pronounced:
    lower counts as more)" beside `expansion`, so that a word never reads against the metric."""
    verdict, name, axis = row["verdict"], row["phenomenon"], row["axis"]
    effect = row.get("effect")
    if verdict not in ("expansion", "shrinkage") or not _finite(effect):
        return MEANINGS.get(verdict, "")
    moves = "rises" if float(effect) > 0 else "falls"
    more = "more" if verdict == "expansion" else "less"
    which = "higher" if direction == "higher" else "lower"
    return f"{name} {moves} with {axis} ({more} pronounced: {which} counts as more)"


def _legend(verdicts: pd.DataFrame) -> str:
    counts = verdicts["verdict"].value_counts()
    chips = "".join(
        f"<span class='chip v-{v}' title='{_e(MEANINGS[v])}'>{v}: {int(counts.get(v, 0))}</span>" for v in VERDICTS
    )
    return f"<p class='legend'>{chips}</p>"


def _axes_table(study: ReportHeader, runs: pd.DataFrame) -> str:
    rows = []
    for name in [*study.axes, *study.grid]:
        if name not in runs:
            continue
        values = sorted(runs[name].dropna().unique().tolist(), key=_sort_key)
        numbers = [float(v) for v in values if isinstance(v, int | float | np.number)]
        span = f"{numbers[-1] / numbers[0]:.3g}x" if len(numbers) > 1 and numbers[0] > 0 else ""
        kind = "axis" if name in study.axes else "grid"
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{kind}</td><td>{_e(', '.join(_fmt(v) for v in values))}</td>"
            f"<td>{len(values)}</td><td>{span}</td></tr>"
        )
    if "seed" in runs:
        seeds = sorted(runs["seed"].dropna().unique().tolist(), key=_sort_key)
        rows.append(
            f"<tr><td>seed</td><td>seeds</td><td>{_e(', '.join(_fmt(s) for s in seeds))}</td>"
            f"<td>{len(seeds)}</td><td></td></tr>"
        )
    head = "<tr><th>name</th><th>kind</th><th>values</th><th>points</th><th>span</th></tr>"
    return f"<table class='axes'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _study_header(study: ReportHeader, runs: pd.DataFrame, phenomena: list[Phenomenon], verdicts: pd.DataFrame) -> str:
    url = study.experiment_url() or (study.mlflow_url if (study.mlflow_url or "").startswith("http") else None)
    link = f" · <a href='{_e(url)}'>MLflow</a>" if url else ""
    notes = "".join(f"<p class='description'>{_e(n)}</p>" for n in study.notes)
    names = ", ".join(f"<a href='#{_anchor(p.name)}'>{_e(p.name)}</a>" for p in phenomena)
    failed = ""
    if study.failed_runs:
        items = "".join(
            f"<li>{_e(name)}: {_run_ref(pd.Series({'run_id': rid}), study)}</li>" for name, rid in study.failed_runs
        )
        failed = f"<details><summary>Failed runs</summary><ul>{items}</ul></details>"
    return (
        f"<header><h1>{_e(study.title)}</h1>{notes}"
        f"<p class='summary'><b>{study.runs_finished}</b> runs finished · <b>{study.runs_failed}</b> failed · "
        f"{len(verdicts)} verdicts on {len(phenomena)} phenomena: {names}{link}</p>"
        f"{_axes_table(study, runs)}{failed}</header>"
    )


def _found(verdicts: pd.DataFrame, phenomena: list[Phenomenon], pairs: pd.DataFrame, nouns: dict) -> list[str]:
    """The first screen's plain sentences: what was found, then A -> B pairs and shared scales."""
    from scalesweep.analysis.summary import summary_sentences

    slices = verdicts.groupby("axis")["slice"].nunique().to_dict()
    said = summary_sentences(verdicts, phenomena, nouns=nouns)
    said += transformations.pair_sentences(pairs, slices)
    said += transformations.shared_sentences(transformations.shared_transitions(verdicts), pairs)
    return said


def _page(
    study: ReportHeader,
    runs: pd.DataFrame,
    phenomena: list[Phenomenon],
    verdicts: pd.DataFrame,
    sections: list[str],
    found: list[str],
) -> str:
    sentences = "".join(f"<p>{_e(line)}</p>" for line in found)
    body = (
        _study_header(study, runs, phenomena, verdicts)
        + (f"<div class='found'><h2 id='found'>What was found</h2>{sentences}</div>" if found else "")
        + "<h2 id='verdicts'>Verdicts</h2>"
        + _legend(verdicts)
        + _verdict_table(verdicts, phenomena)
        + grouped(phenomena, sections)  # under a heading per level
    )
    colours = "\n".join(f".v-{v} {{ background: {c}; }}" for v, c in VERDICT_COLOURS.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(study.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.88em; margin: 0.8em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }}
th {{ background: #f4f4f4; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }} img {{ max-width: min(760px, 100%); }}
figcaption {{ font-size: 0.85em; color: #555; max-width: 760px; }}
p.note, p.description {{ color: #555; font-size: 0.9em; }} code {{ background: #f3f3f3; padding: 1px 4px; }}
.chip {{ display: inline-block; padding: 2px 8px; margin-right: 6px; border: 1px solid #ccc; border-radius: 3px; }}
section.phenomenon {{ border-top: 2px solid #ddd; margin-top: 2em; }}
h2.level {{ margin-top: 2.2em; color: #345; border-bottom: 3px solid #345; }} p.levels {{ font-size: 0.9em; }}
div.found p {{ font-size: 1.05em; margin: 0.3em 0; }}
span.run {{ display: inline-block; margin-right: 8px; font-size: 0.9em; }}
{colours}
</style></head><body>
{body}
</body></html>
"""


# --- formatting ------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _pct(value: Any) -> str:
    return f"{float(value):.0%}" if _finite(value) else ""


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float | np.floating) and value != value):
        return ""
    if isinstance(value, float | np.floating):
        return f"{value:.3g}"
    return str(value)


def _sort_key(value: Any) -> tuple:
    return (0, float(value), "") if isinstance(value, int | float | np.number) else (1, 0.0, str(value))


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _anchor(name: str) -> str:
    return "ph-" + _slug(name)


def _slug(name: str) -> str:
    return safe_name(name, keep="-_")


# --- beyond one scale axis: training dynamics per scale point, and levels ---------------
#
# Report sections beyond one scale axis: training dynamics per scale point, and levels.
#
# * A phenomenon with `over: step` gets its own section: its per-step strength
#   over training, one panel per scale point (small multiples, `figures.over_steps`),
#   and the evidence of its verdicts along `step` (one slice per scale point).
# * A phenomenon that reduces a step series with a step function
#   (`first_step(test_acc >= 0.9)`) gets, below its figures along the scale axes,
#   the series it reads over training, one panel per scale point, with each run's
#   value of the step function marked when that value is itself a step: so a
#   reader sees how the dynamics behind the number change with scale.
# * The phenomenon sections are grouped under a heading per level (neuron,
#   weight, representation, attention, output; `levels.by_level`), phenomena of
#   unknown level last, under "other".
#
# The panels are the scale points exactly as the classifier slices along `step`
# (`slices.label_slices(rows, "step", axes, grid)`), so a panel's title is the
# `slice` of its verdict in verdicts.csv.

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
    return out_dir / "figures" / f"{_slug(name)}__step__{_slug(what)}.png"


def step_section(out_dir: Path, header, runs: pd.DataFrame, ph: Phenomenon, verdicts: pd.DataFrame) -> str:
    """The section of an `over: step` phenomenon: definition, strength over steps per scale point,
    the evidence along `step` and what would decide."""
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
        f"<h2 id='{_anchor(ph.name)}'>{_e(ph.name)}</h2>",
        _definition(ph),
        "<p class='formula'>over: step: the strength is evaluated at every logged step of each run and "
        "classified along the training step, one slice per scale point.</p>",
        _figure(png, caption, ph.name, steps.AXIS, "over_steps"),
    ]
    if len(verdicts):
        thinned = rows[rows["step"].isin(steps.thin_steps(rows["step"].to_numpy()))]
        parts.append("<h3>Evidence</h3>" + _evidence_table(verdicts, []) + _advice(verdicts, thinned, ph))
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
        parts.append(_figure(png, caption, ph.name, steps.AXIS, "over_steps"))
    return ["<h3>Over training</h3>", *parts] if parts else []


# --- grouped by level -------------------------------------------------------------------------


def grouped(phenomena: Sequence[Phenomenon], sections: Sequence[str]) -> str:
    """The phenomenon sections (in `phenomena` order) under a heading per level, with a line
    naming the phenomena of each level first."""
    html_of = {ph.name: s for ph, s in zip(phenomena, sections, strict=True)}
    groups = levels.by_level(phenomena)
    index = "; ".join(
        f"<a href='#level-{level}'>{_e(level)}</a>: "
        + ", ".join(f"<a href='#{_anchor(ph.name)}'>{_e(ph.name)}</a>" for ph in members)
        for level, members in groups
    )
    body = [f"<p class='levels'>Phenomena by level: {index}</p>"] if groups else []
    for level, members in groups:
        body.append(
            f"<div class='level' data-level='{_e(level)}'><h2 class='level' id='level-{_e(level)}'>"
            f"{_e(LEVEL_TITLES[level])}</h2>"
            + "".join(f"<section class='phenomenon'>{html_of[ph.name]}</section>" for ph in members)
            + "</div>"
        )
    return "".join(body)
