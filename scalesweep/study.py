"""Whole-study operations behind the CLI: report, status, classify a table, submit.

Each function joins two layers (tracking and analysis, or spec and Ray Jobs)
and nothing more, so the CLI stays a list of thin commands.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from scalesweep import track
from scalesweep.analysis.classify import classify_runs
from scalesweep.analysis.commands import require_option_columns
from scalesweep.analysis.load import runs_from_csv, runs_from_mlflow
from scalesweep.analysis.phenomena import Phenomenon, load_phenomenon
from scalesweep.analysis.report import Study, write_report
from scalesweep.errors import UserError
from scalesweep.plan import plan
from scalesweep.spec import SweepSpec

AXES = ["model_size", "data_size", "compute"]


def study_axes(spec: SweepSpec) -> tuple[list[str], list[str]]:
    """The axes and grid columns a sweep is classified along. An IsoFLOP design varies
    model size within each budget (its data size follows), so budget slices like a grid value."""
    grid = [path.split(".")[-1] for path in spec.grid]
    if spec.design.kind == "isoflop":
        return ["model_size", "compute"], [*grid, "budget"]
    return AXES, grid


def with_compute(runs: pd.DataFrame, spec: SweepSpec) -> pd.DataFrame:
    """Add each run's compute (6 · n_params · examples seen, from its planned config)."""
    by_key = {config.run_key: config.compute for config in plan(spec)}
    keys = runs["run_key"] if "run_key" in runs.columns else pd.Series("", index=runs.index)
    return runs.assign(compute=keys.map(by_key).astype(float))


def report_sweep(
    spec: SweepSpec, tracking_uri: str | None = None, out_dir: Path | None = None
) -> tuple[Path, pd.DataFrame]:
    """Read the sweep's runs back from MLflow, classify, write and log the report."""
    uri = tracking_uri or spec.tracking.uri
    all_runs = runs_from_mlflow(spec.name, spec.experiment_name, uri, finished_only=False)
    if all_runs.empty:
        raise UserError(f'sweep "{spec.name}" has no runs in MLflow yet; run `scalesweep run` on its spec first.')
    runs = with_compute(all_runs[all_runs["status"] == "FINISHED"].reset_index(drop=True), spec)
    if runs.empty:
        raise UserError(f'sweep "{spec.name}" has no finished run yet; `scalesweep status SPEC` shows where it stands.')
    phenomena = [
        load_phenomenon(ref.name, overrides={"params": ref.params} if ref.params else None)
        for ref in spec.phenomenon_refs
    ]
    axes, grid = study_axes(spec)
    verdicts = classify_runs(runs, phenomena, axes=axes, grid=grid, seed="seed")
    tracker = track.Tracker(track.client_for(uri), spec.name, spec.experiment_name)
    failed = all_runs[all_runs["status"] == "FAILED"]
    study = Study(
        title=f"scalesweep report: {spec.name}",
        axes=axes,
        grid=grid,
        runs_finished=len(runs),
        runs_failed=len(failed),
        notes=[spec.description] if spec.description else [],
        mlflow_url=uri if uri and uri.startswith("http") else None,
        experiment_id=tracker.experiment_id,
        failed_runs=list(zip(failed["run_name"].astype(str), failed["run_id"].astype(str), strict=True)),
    )
    out_dir = out_dir or Path("reports") / _slug(spec.name)
    path = write_report(out_dir, study, runs, phenomena, verdicts)
    tracker.client.log_artifacts(tracker.parent_id, str(out_dir), artifact_path="report")
    return path, verdicts


def sweep_status(spec: SweepSpec, tracking_uri: str | None = None) -> tuple[dict[str, int], list[tuple[str, ...]]]:
    """Each planned run's state in MLflow: finished, failed, running or missing."""
    tracker = track.Tracker(track.client_for(tracking_uri or spec.tracking.uri), spec.name, spec.experiment_name)
    by_key: dict[str, list[track.ChildRun]] = {}
    for child in tracker.child_runs():
        by_key.setdefault(child.run_key, []).append(child)
    counts = {"finished": 0, "failed": 0, "running": 0, "missing": 0}
    rows = []
    for config in plan(spec):
        children = by_key.get(config.run_key, [])
        state, run_id = _state(children)
        counts[state] += 1
        rows.append((state, config.run_key, config.label, run_id))
    return counts, rows


def _state(children: list[track.ChildRun]) -> tuple[str, str]:
    for status, state in (("FINISHED", "finished"), ("RUNNING", "running"), ("FAILED", "failed")):
        for child in children:
            if child.status == status:
                return state, child.run_id
    return "missing", ""


def classify_table(
    table: Path,
    *,
    axis: str,
    value: str,
    group: list[str],
    seed: str | None,
    direction: str,
    presence: float | None,
    min_effect: float | None,
    out_dir: Path,
    n_boot: int = 200,
) -> tuple[Path, pd.DataFrame]:
    """Classify one column of any CSV along one scale column; write the report."""
    runs = runs_from_csv(table)
    require_option_columns(runs, table, axis=axis, value=value, seed=seed)
    for column in group:
        require_option_columns(runs, table, group=column)
    if direction not in ("higher", "lower"):
        raise UserError(f'--direction must be "higher" or "lower", got "{direction}".')
    runs = runs.dropna(subset=[axis, value])
    runs = runs[runs[axis] > 0]
    if runs.empty:
        raise UserError(f"{table}: no row has both a positive {axis} and a value of {value}.")
    if not value.isidentifier():  # expressions name columns by identifiers
        runs = runs.assign(value=runs[value])
    phenomenon = _ad_hoc_phenomenon(runs, value, direction, presence, min_effect)
    verdicts = classify_runs(runs, [phenomenon], axes=[axis], grid=group, seed=seed, n_boot=n_boot)
    study = Study(
        title=f"scalesweep classify: {value} along {axis} ({table.name})",
        axes=[axis],
        grid=group,
        runs_finished=len(runs),
    )
    return write_report(out_dir, study, runs, [phenomenon], verdicts), verdicts


def _ad_hoc_phenomenon(
    runs: pd.DataFrame, value: str, direction: str, presence: float | None, min_effect: float | None
) -> Phenomenon:
    """A phenomenon whose strength is one column. Without --presence every finite
    value counts as present; without --min-effect a tenth of the column's spread counts."""
    column = runs[value].astype(float)
    if presence is None:
        presence = float(column.min() - 1) if direction == "higher" else float(column.max() + 1)
    if min_effect is None:
        min_effect = float(0.1 * (column.quantile(0.9) - column.quantile(0.1)))
    return Phenomenon(
        name=value,
        description=f"the column {value} of the table",
        strength=value if value.isidentifier() else "value",
        direction=direction,
        presence=presence,
        min_effect=max(min_effect, 0.0),
    )


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
