"""Whole-study operations behind the CLI: report, status, classify a table.

Each function joins two layers (tracking and analysis) and nothing more, so
the CLI stays a list of thin commands.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from scalesweep import track
from scalesweep.analysis import series
from scalesweep.analysis.classify import classify_runs
from scalesweep.analysis.load import runs_from_mlflow
from scalesweep.analysis.phenomena import Phenomenon, load_phenomenon
from scalesweep.analysis.report import Study, write_report
from scalesweep.errors import UserError
from scalesweep.plan import plan
from scalesweep.spec import SweepSpec

AXES = ["model_size", "data_size", "compute"]
EXAMPLE_NOUNS = {"modular_arithmetic": "training pairs"}  # what one training example of a task is, in words


def study_axes(spec: SweepSpec) -> tuple[list[str], list[str]]:
    """The axes and grid columns a sweep is classified along. An IsoFLOP design varies
    model size within each budget (its data size follows), so budget slices like a grid value."""
    grid = [path.split(".")[-1] for path in spec.grid]
    if spec.design.kind == "isoflop":
        return ["model_size", "compute"], [*grid, "budget"]
    return AXES, grid


def with_compute(runs: pd.DataFrame, spec: SweepSpec) -> pd.DataFrame:
    """Add each run's compute (6 · n_params · tokens seen, from its planned config)."""
    by_key = {config.run_key: config.compute for config in plan(spec)}
    keys = runs["run_key"] if "run_key" in runs.columns else pd.Series("", index=runs.index)
    return runs.assign(compute=keys.map(by_key).astype(float))


def sweep_runs(spec: SweepSpec, tracking_uri: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(finished, failed): the runs of the spec as it is now, one finished run per grid point.

    Runs of an earlier version of the spec (other steps, other params) share the
    sweep's name but not its run keys, and `run --force` leaves a key with two
    finished runs: neither may count as extra seeds, so only the plan's keys are
    kept, each with its latest finished run."""
    uri = track.require_store(tracking_uri)  # a reader: no store is an error, never a new store
    all_runs = runs_from_mlflow(spec.name, spec.experiment_name, uri, finished_only=False)
    if all_runs.empty:
        raise UserError(f'sweep "{spec.name}" has no runs in MLflow yet; run `scalesweep run` on its spec first.')
    current = all_runs[all_runs["run_key"].astype(str).isin({c.run_key for c in plan(spec)})]
    finished = current[current["status"] == "FINISHED"].sort_values("start_time")
    finished = finished.drop_duplicates("run_key", keep="last").reset_index(drop=True)
    if finished.empty:
        raise UserError(
            f'sweep "{spec.name}" has no finished run of its current spec yet; `scalesweep status SPEC` shows '
            f"where it stands."
        )
    failed = current[(current["status"] == "FAILED") & ~current["run_key"].isin(finished["run_key"])]
    return with_compute(finished, spec), failed.drop_duplicates("run_key", keep="last")


def load_phenomena(spec: SweepSpec) -> list[Phenomenon]:
    return [
        load_phenomenon(ref.name, overrides={"params": ref.params} if ref.params else None)
        for ref in spec.phenomenon_refs
    ]


def with_step_series(runs: pd.DataFrame, phenomena: list[Phenomenon], client) -> pd.DataFrame:
    """The runs with the step series their phenomena read (`first_step(...)`, `series_max(...)`),
    fetched for the whole sweep at once; the runs unchanged when no phenomenon reads one."""
    exprs = [expr for ph in phenomena for expr in ph.expressions_used()]
    params = {name for ph in phenomena for name in ph.params}
    needed = series.series_needed(exprs, params)
    if not needed:
        return runs
    return series.attach(runs, series.read_step_series(client, list(runs["run_id"].astype(str)), needed))


def report_sweep(
    spec: SweepSpec, tracking_uri: str | None = None, out_dir: Path | None = None
) -> tuple[Path, pd.DataFrame]:
    """Read the sweep's runs back from MLflow, classify, write and log the report."""
    uri = tracking_uri or spec.tracking.uri
    runs, failed = sweep_runs(spec, uri)
    phenomena = load_phenomena(spec)
    client = track.client_for(uri, create=False)
    runs = with_step_series(runs, phenomena, client)
    axes, grid = study_axes(spec)
    verdicts = classify_runs(runs, phenomena, axes=axes, grid=grid, seed="seed")
    tracker = track.Tracker(client, spec.name, spec.experiment_name)
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
        axis_nouns={"data_size": EXAMPLE_NOUNS[spec.task.name]} if spec.task.name in EXAMPLE_NOUNS else {},
    )
    out_dir = out_dir or Path("reports") / track.slug(spec.name)
    try:
        path = write_report(out_dir, study, runs, phenomena, verdicts)
    except OSError as err:
        raise UserError(f"cannot write the report to {out_dir} ({err.strerror or err}); pass another --out.") from None
    _log_report(tracker, out_dir)
    return path, verdicts


def _log_report(tracker: track.Tracker, out_dir: Path) -> None:
    """Log what the report wrote (not whatever else --out holds) to the parent run."""
    for name in ("report.html", "verdicts.csv", "runs.csv"):
        if (out_dir / name).is_file():
            tracker.client.log_artifact(tracker.parent_id, str(out_dir / name), artifact_path="report")
    if (out_dir / "figures").is_dir():
        tracker.client.log_artifacts(tracker.parent_id, str(out_dir / "figures"), artifact_path="report/figures")


def sweep_status(spec: SweepSpec, tracking_uri: str | None = None) -> tuple[dict[str, int], list[tuple[str, ...]]]:
    """Each planned run's state in MLflow: finished, failed, running or missing."""
    client = track.client_for(tracking_uri or spec.tracking.uri, create=False)  # read-only: never creates one
    by_key: dict[str, list[track.ChildRun]] = {}
    for child in track.existing_children(client, spec.name, spec.experiment_name):  # read-only
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


def isoflop_study(spec: SweepSpec, tracking_uri: str | None = None, loss: str = "final_test_loss", n_boot: int = 400):
    """A sweep's IsoFLOP optima per budget and, with two or more budgets, the fitted exponents.

    Read through `sweep_runs`, like the report: only the plan's current keys, each with its
    latest finished run, so runs of an edited spec or a `run --force` never enter the fit."""
    from scalesweep.analysis.isoflop import fit_exponents, isoflop_optima

    if spec.design.kind != "isoflop":
        raise UserError(
            f'sweep "{spec.name}" has a {spec.design.kind} design; the IsoFLOP analysis needs '
            f"design: {{kind: isoflop, budgets: [...]}} (see docs/designs.md)."
        )
    runs, _ = sweep_runs(spec, tracking_uri or spec.tracking.uri)
    optima, replicates = isoflop_optima(runs, loss=loss, n_boot=n_boot)
    exponents = fit_exponents(optima, replicates) if len(optima) >= 2 else None
    return optima, exponents
