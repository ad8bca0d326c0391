"""One function per CLI verb: what `scalesweep VERB` does, without the printing.

`cli.py` parses the options, calls the verb's function here and prints what it
returns. Each function joins the layers below it (spec, plan, store, ledger,
analysis, records) and nothing more; each imports what it needs when it is
called, so `scalesweep classify TABLE.csv` imports no MLflow, Ray or torch and
`scalesweep validate` no MLflow.

The sweep's current runs, read the same way by `report`, `export`, `isoflop`
and `refine` (`sweep_runs`): the store's runs table, of which the ledger keeps
each planned key's current run (see `ledger.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalesweep.errors import UserError, did_you_mean, safe_name

if TYPE_CHECKING:
    import pandas as pd

    from scalesweep.analysis.phenomena import Phenomenon
    from scalesweep.execute import SweepOutcome
    from scalesweep.plan import RunConfig
    from scalesweep.preview import TimeEstimate
    from scalesweep.spec import SweepSpec

AXES = ["model_size", "data_size", "compute"]
EXAMPLE_NOUNS = {"modular_arithmetic": "training pairs"}  # what one training example of a task is, in words
LAWS = ("power", "chinchilla", "bnsl")


# ---------------------------------------------------------------- spec and plan


def validate(spec_path: Path) -> SweepSpec:
    """`validate`: the spec, loaded and checked (a UserError says what is wrong)."""
    from scalesweep.spec import load_spec

    return load_spec(spec_path)


def confirm_size(spec_path: Path, n_runs: int, yes: bool, verb: str) -> None:
    """Refuse a sweep of more than MAX_RUNS_WITHOUT_CONFIRM runs unless --yes (counted, not expanded)."""
    from scalesweep.spec import MAX_RUNS_WITHOUT_CONFIRM

    if n_runs > MAX_RUNS_WITHOUT_CONFIRM and not yes:
        raise UserError(
            f"{spec_path}: the sweep has {n_runs:,} runs (more than {MAX_RUNS_WITHOUT_CONFIRM:,}); "
            f"pass --yes to {verb} it."
        )


def axis_warnings(spec: SweepSpec, runs: list[RunConfig]) -> list[str]:
    from scalesweep.preview import axis_warnings as warnings

    return warnings(spec, runs)


def plan_runs(spec: SweepSpec) -> list[RunConfig]:
    """`plan`: the spec's runs."""
    from scalesweep.plan import plan

    return plan(spec)


def time_left(spec: SweepSpec, runs: list[RunConfig], tracking_uri: str | None) -> TimeEstimate | None:
    """`plan`'s time estimate, from the finished runs' speed (None until some have finished)."""
    from scalesweep.preview import estimate_time

    return estimate_time(spec, runs, tracking_uri)


# ---------------------------------------------------------------- running


def run(spec: SweepSpec, **options: Any) -> SweepOutcome:
    """`run`: the sweep's missing runs on Ray, recorded to MLflow (options: see `run_sweep`)."""
    from scalesweep import cluster

    if not cluster.resolve_address(options.get("address")):  # a local Ray starts while the driver imports
        cluster.start_local(lambda: _warm_workers(spec))
    from scalesweep.execute import run_sweep

    try:
        return run_sweep(spec, **options)
    finally:
        cluster.leave_local()


def _warm_workers(spec: SweepSpec) -> None:
    from scalesweep.execute import warm_workers
    from scalesweep.plan import plan

    warm_workers(spec, plan(spec))


def submit(spec_path: Path, *, address: str, tracking_uri: str | None) -> str:
    """`submit`: the sweep as a Ray Job; returns the job id."""
    from scalesweep.jobs import submit_job

    validate(spec_path)
    return submit_job(spec_path, address=address, tracking_uri=tracking_uri)


# ---------------------------------------------------------------- reading a sweep back


def study_axes(spec: SweepSpec) -> tuple[list[str], list[str]]:
    """The axes and grid columns a sweep is classified along. An IsoFLOP design varies
    model size within each budget (its data size follows), so budget slices like a grid value."""
    grid = [path.split(".")[-1] for path in spec.grid]
    if spec.design.kind == "isoflop":
        return ["model_size", "compute"], [*grid, "budget"]
    return AXES, grid


def with_compute(runs: pd.DataFrame, spec: SweepSpec) -> pd.DataFrame:
    """Add each run's compute (6 · n_params · tokens seen, from its planned config)."""
    import pandas as pd

    from scalesweep.plan import plan

    by_key = {config.run_key: config.compute for config in plan(spec)}
    keys = runs["run_key"] if "run_key" in runs.columns else pd.Series("", index=runs.index)
    return runs.assign(compute=keys.map(by_key).astype(float))


def sweep_runs(spec: SweepSpec, tracking_uri: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(finished, failed): the runs of the spec as it is now, one run per planned key (its current
    run, see `ledger.py`): runs of an earlier version of the spec (other steps, other params) share
    the sweep's name but not its run keys, and `run --force` leaves a key with two finished runs:
    neither may count as extra seeds."""
    from scalesweep import store, uris
    from scalesweep.ledger import Ledger
    from scalesweep.plan import plan

    uri = uris.require_store(tracking_uri)  # a reader: no store is an error, never a new store
    all_runs = store.runs_table(spec.name, spec.experiment_name, uri, finished_only=False)
    if all_runs.empty:
        raise UserError(f'sweep "{spec.name}" has no runs in MLflow yet; run `scalesweep run` on its spec first.')
    finished_ids, failed_ids = Ledger.from_table(all_runs).current(c.run_key for c in plan(spec))
    # in run key order (store.runs_table): the same table, hence the same bootstraps, whatever
    # order the runs started in
    finished = all_runs[all_runs["run_id"].isin(set(finished_ids.values()))].reset_index(drop=True)
    if finished.empty:
        raise UserError(
            f'sweep "{spec.name}" has no finished run of its current spec yet; `scalesweep status SPEC` shows '
            f"where it stands."
        )
    failed = all_runs[all_runs["run_id"].isin(set(failed_ids.values()))]
    return with_compute(finished, spec), failed


def load_phenomena(spec: SweepSpec) -> list[Phenomenon]:
    from scalesweep.analysis.phenomena import load_phenomenon

    return [
        load_phenomenon(ref.name, overrides={"params": ref.params} if ref.params else None)
        for ref in spec.phenomenon_refs
    ]


def with_step_series(runs: pd.DataFrame, phenomena: list[Phenomenon], client: Any) -> pd.DataFrame:
    """The runs with the step series their phenomena read (`first_step(...)`, `series_max(...)`),
    fetched for the whole sweep at once; the runs unchanged when no phenomenon reads one."""
    from scalesweep import store
    from scalesweep.analysis import series

    exprs = [expr for ph in phenomena for expr in ph.expressions_used()]
    params = {name for ph in phenomena for name in ph.params}
    needed = series.series_needed(exprs, params)
    if not needed:
        return runs
    return series.attach(runs, store.read_step_series(client, list(runs["run_id"].astype(str)), needed))


def current_verdicts(
    spec: SweepSpec, tracking_uri: str | None
) -> tuple[pd.DataFrame, pd.DataFrame, list[Phenomenon], list[str], list[str]]:
    """The sweep's finished runs and their verdicts, as `scalesweep report` computes them."""
    from scalesweep import store
    from scalesweep.analysis.classify import classify_runs

    uri = tracking_uri or spec.tracking.uri
    runs, _ = sweep_runs(spec, uri)
    phenomena = load_phenomena(spec)
    runs = with_step_series(runs, phenomena, store.client_for(uri, create=False))
    axes, grid = study_axes(spec)
    verdicts = classify_runs(runs, phenomena, axes=axes, grid=grid, seed="seed", n_boot=0)
    return runs, verdicts, phenomena, axes, grid


# ---------------------------------------------------------------- the verbs that read


def report_sweep(
    spec: SweepSpec, tracking_uri: str | None = None, out_dir: Path | None = None
) -> tuple[Path, pd.DataFrame]:
    """`report SPEC`: read the sweep's runs back from MLflow, classify, write and log the report."""
    from scalesweep import store, uris
    from scalesweep.analysis.classify import classify_runs
    from scalesweep.analysis.report import ReportHeader, write_report

    uri = tracking_uri or spec.tracking.uri
    runs, failed = sweep_runs(spec, uri)
    phenomena = load_phenomena(spec)
    client = store.client_for(uri, create=False)
    runs = with_step_series(runs, phenomena, client)
    axes, grid = study_axes(spec)
    verdicts = classify_runs(runs, phenomena, axes=axes, grid=grid, seed="seed")
    tracker = store.Tracker(client, spec.name, spec.experiment_name)
    header = ReportHeader(
        title=f"scalesweep report: {spec.name}",
        axes=axes,
        grid=grid,
        runs_finished=len(runs),
        runs_failed=len(failed),
        notes=[spec.description] if spec.description else [],
        mlflow_url=uri if uri and uris.is_server(uri) else None,
        experiment_id=tracker.experiment_id,
        failed_runs=list(zip(failed["run_name"].astype(str), failed["run_id"].astype(str), strict=True)),
        axis_nouns={"data_size": EXAMPLE_NOUNS[spec.task.name]} if spec.task.name in EXAMPLE_NOUNS else {},
    )
    out_dir = out_dir or Path("reports") / safe_name(spec.name)
    path = write_report(out_dir, header, runs, phenomena, verdicts)
    tracker.log_report(out_dir)
    return path, verdicts


def report(target: Path, tracking_uri: str | None = None, out_dir: Path | None = None) -> tuple[Path, pd.DataFrame]:
    """`report`: of a spec (read from MLflow) or of a phenomenon record (.zip: no MLflow, Ray or torch)."""
    from scalesweep.records import is_record

    if is_record(target):
        from scalesweep.records import report_record

        return report_record(target, out_dir=out_dir)
    return report_sweep(validate(target), tracking_uri=tracking_uri, out_dir=out_dir)


def sweep_status(spec: SweepSpec, tracking_uri: str | None = None) -> tuple[dict[str, int], list[tuple[str, ...]]]:
    """`status`: each planned run's state in the store: finished, failed, running or missing."""
    from scalesweep import store
    from scalesweep.ledger import Ledger
    from scalesweep.plan import plan

    client = store.client_for(tracking_uri or spec.tracking.uri, create=False)  # read-only: never creates one
    experiment_id = store.experiment_named(client, spec.experiment_name)
    return Ledger(store.child_runs(client, spec.name, experiment_id)).status(plan(spec))


def sweep_driver(spec: SweepSpec, tracking_uri: str | None = None) -> str | None:
    """`status`: which driver runs the sweep now (its lease), if one does."""
    from scalesweep import store

    client = store.client_for(tracking_uri or spec.tracking.uri, create=False)
    held = store.live_lease(client, spec.name, store.experiment_named(client, spec.experiment_name))
    return None if held is None else f"running now: the driver on {held.describe()}"


def isoflop_study(spec: SweepSpec, tracking_uri: str | None = None, loss: str = "final_test_loss", n_boot: int = 400):
    """`isoflop`: a sweep's IsoFLOP optima per budget and, with two or more budgets, the fitted exponents.

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


def export(
    spec: SweepSpec,
    tracking_uri: str | None = None,
    out: Path | None = None,
    with_series: bool = True,
    cite: str | None = None,
    license: str | None = None,
) -> Path:
    """`export SPEC`: the sweep's runs read back from MLflow, written as a phenomenon record.

    The runs table and the failed runs come from `sweep_runs` (the report's own reader), so a
    record holds exactly the runs `scalesweep report` classifies."""
    import pandas as pd
    import yaml

    from scalesweep import records, store, uris
    from scalesweep.plan import plan

    out = records.record_path(out or Path("records") / f"{safe_name(spec.name)}.zip")
    uri = uris.require_store(tracking_uri or spec.tracking.uri)
    finished, failed = sweep_runs(spec, uri)
    runs = pd.concat([finished, failed], ignore_index=True) if len(failed) else finished
    axes, grid = study_axes(spec)
    series, note = (
        records.step_series(store.client_for(uri, create=False), runs)
        if with_series
        else (None, "left out (--no-series)")
    )
    return records.build_record(
        out,
        runs,
        load_phenomena(spec),
        axes,
        grid,
        name=spec.name,
        spec_text=yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False),
        run_keys=records.planned_keys(plan(spec), finished, failed),
        series=series,
        series_note=note,
        description=spec.description or "",
        cite=cite,
        license=license,
        packages=records.package_versions(("mlflow", "ray", "torch")),  # the packages that made the runs
    )


# ---------------------------------------------------------------- refine


def refine_proposals(spec: SweepSpec, tracking_uri: str | None, budget: int) -> list:
    """`refine`'s proposal: at most `budget` runs where the current verdicts are least sure."""
    from scalesweep.refine import propose

    runs, verdicts, phenomena, axes, grid = current_verdicts(spec, tracking_uri)
    return propose(spec, runs, verdicts, phenomena, budget, axes, grid)


def refine_record(spec_path: Path, proposals: list) -> Path:
    """Record the proposed runs in the spec's refine sidecar; return its path."""
    from scalesweep.refine import record

    return record(spec_path, proposals)


# ---------------------------------------------------------------- tables and records


def classify(
    table: Path,
    *,
    out_dir: Path,
    phenomenon: list[str] | None = None,
    axis: str | None = None,
    value: str | None = None,
    group: list[str] | None = None,
    seed: str | None = None,
    direction: str | None = None,
    presence: float | None = None,
    min_effect: float | None = None,
    signed: bool = False,
) -> tuple[Path, pd.DataFrame]:
    """`classify`: a phenomenon measured in any CSV table, or a phenomenon record re-classified
    with its phenomena (the options override their fields); no MLflow, Ray or torch either way."""
    from scalesweep.records import is_record

    if is_record(table):
        from scalesweep.records import classify_record_command

        return classify_record_command(
            table, out_dir, phenomenon or [], axis, value, group, seed, direction, presence, min_effect, signed
        )
    if axis is None or value is None:
        raise UserError(
            f"{table}: classifying a table needs --axis (the scale column) and --value (the strength column)."
        )
    from scalesweep.analysis.table import classify_table

    return classify_table(
        table,
        axis=axis,
        value=value,
        group=group or [],
        seed=seed,
        direction=direction or "higher",
        presence=presence,
        min_effect=min_effect,
        out_dir=out_dir,
        signed=signed,
    )


def compare(record_a: Path, record_b: Path) -> tuple[pd.DataFrame, list[str]]:
    """`compare`: two records side by side, phenomenon by phenomenon and axis by axis."""
    from scalesweep.records import compare_records

    return compare_records(record_a, record_b)


def _truthy(col: pd.Series) -> Any:
    import pandas as pd

    num = pd.to_numeric(col, errors="coerce")
    text = col.astype(str).str.strip().str.lower().isin(("true", "yes", "y", "t"))
    return ((num.fillna(0) != 0) | text).to_numpy()


def fit_command(
    table: Path,
    law: str,
    y: str,
    x: str | None = None,
    n: str | None = None,
    d: str | None = None,
    exclude_col: str | None = None,
    n_boot: int = 100,
) -> dict:
    """`fit`: fit `law` to the table; returns {param: {"value", "ci_low", "ci_high"}}.

    power: y = E + A x^-alpha (needs x); chinchilla: L = E + A/N^alpha + B/D^beta
    (needs n, d); bnsl: one-break BNSL of Caballero et al. 2022 (needs x).
    Rows where `exclude_col` is truthy (1, true, yes) are dropped first. The result's
    `notes` say what the fit left out; a fit that does not converge is a UserError.
    """
    import pandas as pd

    from scalesweep.analysis import fits
    from scalesweep.analysis.load import require_option_columns, runs_from_csv

    if law not in LAWS:
        raise UserError(f'unknown law "{law}"{did_you_mean(law, LAWS)}; valid laws are: {", ".join(LAWS)}.')
    frame = runs_from_csv(table)
    require_option_columns(frame, table, y=y, x=x, n=n, d=d, exclude_col=exclude_col)
    if exclude_col:
        frame = frame[~_truthy(frame[exclude_col])]
    need = {"power": ("x",), "bnsl": ("x",), "chinchilla": ("n", "d")}[law]
    given = dict(x=x, n=n, d=d)
    for opt in need:
        if given[opt] is None:
            raise UserError(f"law {law} needs --{opt} (a column of {table}).")
    col = {k: pd.to_numeric(frame[v], errors="coerce") for k, v in {**given, "y": y}.items() if v}
    try:
        if law == "power":
            result = fits.fit_power_law(col["x"], col["y"], n_boot=n_boot)
        elif law == "bnsl":
            result = fits.fit_bnsl(col["x"], col["y"], n_boot=n_boot)
        else:
            result = fits.fit_chinchilla(col["n"], col["d"], col["y"], n_boot=n_boot)
    except UserError as err:
        raise type(err)(f"{table}: {err}") from None
    return FitTable(result.table(), notes=result.notes)


class FitTable(dict):
    """{param: {"value", "ci_low", "ci_high"}}, with `notes`: what the fit dropped or could not do
    (rows left out, resamples that did not converge, NaN intervals). The CLI prints the notes."""

    def __init__(self, table: dict, notes: list[str] | None = None):
        super().__init__(table)
        self.notes = list(notes or [])


# ---------------------------------------------------------------- the UI


def ui(tracking_uri: str | None, host: str, port: int) -> tuple[str, list[str], str, str]:
    """`ui`: (store URI, the `mlflow ui` command line, the URL to probe, the URL to show), the store
    checked first. `cli.ui` refuses a port that already answers; `cli.serve_ui` runs the server."""
    from scalesweep import store, uris

    uri = uris.resolve_uri(tracking_uri)
    uris.check_store(uri)
    url = f"http://{host}:{port}"
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # a wildcard bind answers on loopback
    probe = f"http://{'[' + local + ']' if ':' in local else local}:{port}/"
    return uri, store.ui_command(uri, host, port), probe, url
