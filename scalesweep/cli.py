"""`scalesweep ...`: the command line.

Each command is a thin wrapper: it parses options, calls its verb's function
in `commands.py`, and prints. A `UserError` anywhere becomes one red paragraph on
stderr and exit code 2; no traceback for mistakes a user can fix.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from scalesweep import commands
from scalesweep.errors import UserError
from scalesweep.startup import mark

# One OpenBLAS thread per process (before numpy is first imported; a user's setting wins). The
# analysis works on tiny matrices, where OpenBLAS's threads only spin: `classify TABLE.csv` spent
# 2.5 s of CPU with them and 1.9 s without, and its slices are classified one process per core.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

app = typer.Typer(
    help="Cross-scale scaling studies: run sweeps with Ray, record them in MLflow, classify each phenomenon.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

SpecArg = Annotated[Path, typer.Argument(help="a sweep spec, e.g. sweeps/quickstart.yaml")]
AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
]
TrackingOpt = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"),
]


def user_errors(command):
    """Turn a UserError into a clean message and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            err.print(f"[bold red]error:[/bold red] {escape(str(error))}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted: finished runs are kept; run the same command again to resume.")
            raise typer.Exit(130) from None

    return wrapper


def _load(spec_path: Path):
    return commands.validate(spec_path)


@app.command()
@user_errors
def validate(spec: SpecArg) -> None:
    """Check a spec; exit 0 when it is good, 2 with one clear paragraph when not."""
    loaded = _load(spec)
    out.print(f"[green]ok[/green] {spec}: sweep {escape(repr(loaded.name))}, {loaded.n_runs} runs", highlight=False)


@app.command("list")
@user_errors
def list_command(
    kind: Annotated[
        str | None, typer.Argument(help="tasks | families | observables | phenomena (default: all four)")
    ] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="print docs/zoo.md (all four, Markdown)")] = False,
) -> None:
    """List what a spec can name: tasks, model families, observables, phenomena, with their
    parameters, defaults and a one-line description."""
    from scalesweep import catalog
    from scalesweep.errors import did_you_mean

    if markdown:
        print(catalog.markdown(), end="")
        return
    if kind is not None and kind not in catalog.KINDS:
        raise UserError(
            f'"{kind}" is not something to list{did_you_mean(kind, catalog.KINDS)}; '
            f"give one of {', '.join(catalog.KINDS)}, or nothing for all four."
        )
    for name in [kind] if kind else catalog.KINDS:
        rows = catalog.entries(name)
        extra = list(rows[0].extra) if rows else []
        table = Table(title=escape(catalog.TITLES[name].replace("`", "")), show_lines=True)
        table.add_column("name", style="bold", no_wrap=True)
        if name != "observables":
            table.add_column("parameters (= default)", overflow="fold")
        for column in extra:
            table.add_column(column, overflow="fold")
        table.add_column("description", overflow="fold")
        for row in rows:
            cells = [row.name] + (["\n".join(row.parameters) or "-"] if name != "observables" else [])
            table.add_row(*(escape(c) for c in [*cells, *(row.extra[c] for c in extra), row.description]))
        out.print(table)


@app.command("plan")
@user_errors
def plan_command(
    spec: SpecArg,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="list a sweep of more than 10,000 runs")] = False,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Expand the design into runs (run key, steps, compute), with the total compute and,
    once some runs have finished, the time the rest should take."""
    loaded = _load(spec)
    commands.confirm_size(spec, loaded.n_runs, yes, "list")
    runs = commands.plan_runs(loaded)
    _warn_axes(loaded, runs)
    if as_json:
        rows = [
            {"run_key": r.run_key, "label": r.label, **r.axes_row(), "compute": r.compute, "config": r.content()}
            for r in runs
        ]
        print(json.dumps(rows, indent=1))
        return
    table = Table(title=f"{len(runs)} runs")
    for column in ["run_key", "model_size", "data_size", "seed", *runs[0].grid, "steps", "FLOPs"]:
        table.add_column(column)
    for run in runs:
        cells = [*(escape(str(v)) for v in run.axes_row().values()), str(run.training.steps), f"{run.compute:.3g}"]
        table.add_row(run.run_key, *cells)
    out.print(table)
    _print_preview(loaded, runs, tracking_uri)


def _print_preview(loaded, runs, tracking_uri: str | None) -> None:
    from scalesweep.preview import format_seconds

    out.print(f"{len(runs)} runs, about {sum(r.compute for r in runs):.3g} FLOPs in all", highlight=False)
    estimate = commands.time_left(loaded, runs, tracking_uri)
    if estimate is None:
        out.print("time: unknown until some runs have finished (then `scalesweep plan` estimates it)")
    elif estimate.remaining == 0:
        out.print(f"time: all {estimate.finished} runs have finished")
    else:
        out.print(
            f"time: about {format_seconds(estimate.wall_seconds)} for the {estimate.remaining} runs left "
            f"({format_seconds(estimate.run_seconds)} of training on {estimate.slots} parallel slot(s)), "
            f"from the speed of {estimate.finished} finished runs",
            highlight=False,
        )


@app.command()
@user_errors
def run(
    spec: SpecArg,
    address: AddressOpt = None,
    tracking_uri: TrackingOpt = None,
    force: Annotated[bool, typer.Option("--force", help="rerun every run, even finished ones")] = False,
    rerun_failed: Annotated[bool, typer.Option("--rerun-failed", help="rerun runs that failed before")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="confirm a sweep of more than 10,000 runs")] = False,
) -> None:
    """Run the sweep's missing runs on Ray, recording each to MLflow."""
    mark("cli_imported")
    loaded = _load(spec)
    mark("spec_loaded")
    commands.confirm_size(spec, loaded.n_runs, yes, "run")
    outcome = commands.run(
        loaded, address=address, tracking_uri=tracking_uri, force=force, rerun_failed=rerun_failed, console=err
    )
    out.print(
        f"{loaded.name}: {outcome.finished} finished, {outcome.failed} failed, "
        f"{outcome.skipped} already done (of {outcome.planned})"
    )
    if outcome.train_seconds:
        writes = outcome.tracking_seconds - outcome.figure_seconds
        out.print(
            f"tracking: {writes:.1f} s of MLflow writes ({100 * outcome.share(writes):.1f}% of "
            f"{outcome.train_seconds:.1f} s of training) + {outcome.figure_seconds:.1f} s for the runs' "
            f"curves.png ({100 * outcome.share(outcome.figure_seconds):.1f}%)",
            highlight=False,
        )
    for label, error in outcome.failures[:20]:
        out.print(f"  [red]FAILED[/red] {escape(label)}: {escape(error)}", highlight=False)
    if not outcome.ok:
        raise typer.Exit(1)


def _warn_axes(loaded, runs) -> None:
    """Before anything runs: axes whose verdicts can only be inconclusive (on stderr)."""
    for warning in commands.axis_warnings(loaded, runs):
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def report(
    spec: Annotated[Path, typer.Argument(help="a sweep spec (sweeps/quickstart.yaml) or a phenomenon record (.zip)")],
    tracking_uri: TrackingOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="output folder (default reports/<sweep>)")] = None,
) -> None:
    """Classify the sweep's phenomena and write report.html and verdicts.csv (a record: no MLflow needed)."""
    path, verdicts = commands.report(spec, tracking_uri=tracking_uri, out_dir=out_dir)
    _print_verdicts(verdicts)
    out.print(f"report: {path}", highlight=False)


@app.command()
@user_errors
def refine(
    spec: SpecArg,
    budget: Annotated[int, typer.Option("--budget", min=1, help="add at most this many runs")] = 8,
    address: AddressOpt = None,
    tracking_uri: TrackingOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the proposal, run nothing")] = False,
) -> None:
    """Add at most --budget runs where the verdicts are least sure, run them, and re-report."""
    loaded = _load(spec)
    proposals = commands.refine_proposals(loaded, tracking_uri, budget)
    if not proposals:
        out.print("refine: no verdict would gain from more runs (no bracketed transition, no lack of seeds)")
        return
    table = Table(title=f"{sum(len(p.points) for p in proposals)} runs to add (budget {budget})")
    for column in ["kind", "phenomenon", "axis", "slice", "runs", "why"]:
        table.add_column(column, overflow="fold")
    for p in proposals:
        table.add_row(p.kind, p.phenomenon, p.axis, p.slice, str(len(p.points)), p.reason)
    out.print(table)
    if dry_run:
        return
    out.print(f"recorded in {commands.refine_record(spec, proposals)}", highlight=False)
    loaded = _load(spec)
    outcome = commands.run(loaded, address=address, tracking_uri=tracking_uri, console=err)
    out.print(f"{loaded.name}: {outcome.finished} finished, {outcome.failed} failed (of {outcome.planned})")
    path, verdicts = commands.report_sweep(loaded, tracking_uri=tracking_uri)
    _print_verdicts(verdicts)
    out.print(f"report: {path}", highlight=False)
    if not outcome.ok:
        raise typer.Exit(1)


@app.command()
@user_errors
def isoflop(
    spec: SpecArg,
    tracking_uri: TrackingOpt = None,
    loss: Annotated[str, typer.Option("--loss", help="the loss column to minimise")] = "final_test_loss",
) -> None:
    """IsoFLOP analysis: loss-optimal model size per budget, and N_opt ∝ C^a, D_opt ∝ C^b."""
    optima, exponents = commands.isoflop_study(_load(spec), tracking_uri=tracking_uri, loss=loss)
    table = Table(title="loss-optimal model size per compute budget (95% bootstrap interval)")
    for column in ["budget (FLOPs)", "N_opt", "N low", "N high", "D_opt", "sizes", "note"]:
        table.add_column(column)
    for row in optima.itertuples():
        note = "minimum at an end: widen model_size" if row.at_edge else ""
        cells = [row.budget, row.n_opt, row.n_low, row.n_high, row.d_opt]
        table.add_row(*(f"{v:.3g}" for v in cells), str(row.n_sizes), note)
    out.print(table)
    if exponents is not None:
        e = exponents
        out.print(f"N_opt ∝ C^{e.a:.3f} [{e.a_low:.3f}, {e.a_high:.3f}]", highlight=False)
        out.print(f"D_opt ∝ C^{e.b:.3f} [{e.b_low:.3f}, {e.b_high:.3f}] over {e.n_budgets} budgets", highlight=False)


@app.command()
@user_errors
def status(spec: SpecArg, tracking_uri: TrackingOpt = None) -> None:
    """Finished / failed / running / missing runs of the spec."""
    sweep = _load(spec)
    counts, rows = commands.sweep_status(sweep, tracking_uri=tracking_uri)
    table = Table(title=", ".join(f"{n} {state}" for state, n in counts.items()))
    for column in ["state", "run_key", "label", "run_id"]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    out.print(table)
    if driver := commands.sweep_driver(sweep, tracking_uri=tracking_uri):
        out.print(escape(driver))


@app.command()
@user_errors
def classify(
    table: Annotated[Path, typer.Argument(help="a CSV with one row per run or model, or a phenomenon record (.zip)")],
    axis: Annotated[str | None, typer.Option("--axis", help="the scale column (a record: only this axis)")] = None,
    value: Annotated[str | None, typer.Option("--value", help="the phenomenon's strength column")] = None,
    phenomenon: Annotated[
        list[str] | None, typer.Option("--phenomenon", help="a record: only this phenomenon (repeatable)")
    ] = None,
    group: Annotated[list[str] | None, typer.Option("--group", help="slice by this column (repeatable)")] = None,
    seed: Annotated[str | None, typer.Option("--seed", help="the seed column, if any")] = None,
    direction: Annotated[
        str | None, typer.Option("--direction", help="higher|lower: which way is more pronounced (default higher)")
    ] = None,
    presence: Annotated[float | None, typer.Option("--presence", help="present beyond this value")] = None,
    min_effect: Annotated[float | None, typer.Option("--min-effect", help="smallest change that counts")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")] = Path("reports/classify"),
    signed: Annotated[
        bool, typer.Option("--signed", help="the value is signed (a gain): a change of sign is a transformation")
    ] = False,
) -> None:
    """Classify a phenomenon measured in any table (published results too), or re-classify a
    phenomenon record's runs with its phenomena (options override their fields)."""
    path, verdicts = commands.classify(
        table,
        phenomenon=phenomenon,
        axis=axis,
        value=value,
        group=group,
        seed=seed,
        direction=direction,
        presence=presence,
        min_effect=min_effect,
        out_dir=out_dir,
        signed=signed,
    )
    _print_verdicts(verdicts)
    out.print(f"report: {path}", highlight=False)


@app.command()
@user_errors
def export(
    spec: SpecArg,
    out_file: Annotated[Path | None, typer.Option("--out", help="the record (default records/<sweep>.zip)")] = None,
    tracking_uri: TrackingOpt = None,
    no_series: Annotated[
        bool, typer.Option("--no-series", help="leave the step series out (a smaller record)")
    ] = False,
    cite: Annotated[
        str | None, typer.Option("--cite", help="how to cite the record (default: its name and date)")
    ] = None,
    license_: Annotated[str | None, typer.Option("--license", help="the record's license (default CC-BY-4.0)")] = None,
) -> None:
    """Write the sweep's phenomenon record: runs, step series, phenomena, verdicts, spec, run keys,
    manifest, as one .zip that `report`, `classify` and `compare` read without MLflow, Ray or torch."""
    path = commands.export(
        _load(spec), tracking_uri=tracking_uri, out=out_file, with_series=not no_series, cite=cite, license=license_
    )
    out.print(f"record: {path}", highlight=False)


@app.command()
@user_errors
def compare(
    record_a: Annotated[Path, typer.Argument(help="a phenomenon record (.zip)")],
    record_b: Annotated[Path, typer.Argument(help="another phenomenon record (.zip)")],
    out_file: Annotated[Path | None, typer.Option("--out", help="also write the comparison (.csv or .html)")] = None,
) -> None:
    """Where two records agree and disagree, phenomenon by phenomenon and axis by axis: verdict,
    effect with its interval, and transition, side by side."""
    from scalesweep.records import comparison_summary, write_comparison

    frame, notes = commands.compare(record_a, record_b)
    _print_comparison(frame, f"A = {record_a.name}, B = {record_b.name}")
    for note in notes:
        err.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    out.print(comparison_summary(frame), highlight=False)
    if out_file is not None:
        written = write_comparison(frame, notes, out_file, (str(record_a), str(record_b)))
        out.print(f"comparison: {written}", highlight=False)


def _print_comparison(frame, title: str) -> None:
    from scalesweep.records import AGREEMENT_STYLES, evidence_text

    table = Table(title=escape(title), show_lines=True)
    for column in ["phenomenon", "axis", "slice", "agreement", "A: verdict, effect [CI], transition", "B: the same"]:
        table.add_column(column, overflow="fold")
    for row in frame.to_dict("records"):
        style = AGREEMENT_STYLES.get(row["agreement"], "")
        cells = [row["phenomenon"], row["axis"], row["slice"], row["agreement"]]
        cells += [evidence_text(row, "a"), evidence_text(row, "b")]
        table.add_row(*(escape(str(c)) for c in cells), style=style)
    out.print(table)


@app.command()
@user_errors
def fit(
    table: Annotated[Path, typer.Argument(help="a CSV table")],
    law: Annotated[str, typer.Option("--law", help="power | chinchilla | bnsl")],
    y: Annotated[str, typer.Option("--y", help="the fitted column, e.g. loss")],
    x: Annotated[str | None, typer.Option("--x", help="the scale column (power, bnsl)")] = None,
    n: Annotated[str | None, typer.Option("--n", help="parameter-count column (chinchilla)")] = None,
    d: Annotated[str | None, typer.Option("--d", help="data-size column (chinchilla)")] = None,
    exclude_col: Annotated[
        str | None, typer.Option("--exclude-col", help="drop rows where this column is true")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON object keyed by parameter")] = False,
) -> None:
    """Fit a scaling law (with bootstrap intervals) to a table."""
    result = commands.fit_command(table, law=law, y=y, x=x, n=n, d=d, exclude_col=exclude_col)
    for note in getattr(result, "notes", []):  # on stderr, so that --json stays one object
        err.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps(result, indent=1))
        return
    view = Table(title=f"{law} fit of {y}")
    for column in ["parameter", "value", "95% low", "95% high"]:
        view.add_column(column)
    for name, entry in result.items():
        view.add_row(name, f"{entry['value']:.4g}", f"{entry['ci_low']:.4g}", f"{entry['ci_high']:.4g}")
    out.print(view)


@app.command()
@user_errors
def ui(
    tracking_uri: TrackingOpt = None,
    host: Annotated[str, typer.Option("--host", help="bind address; 127.0.0.1 keeps it on this machine")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 5000,
) -> None:
    """Start the MLflow UI on the runs (bound to 127.0.0.1 unless told otherwise)."""
    uri, command, probe, url = commands.ui(tracking_uri, host, port)
    if _http_answers(probe):
        raise UserError(
            f"something already answers on {url} (another `scalesweep ui` or `mlflow ui`?); "
            f"stop it, or pass another --port, e.g. --port {port + 1}."
        )
    out.print(f"starting the MLflow UI on {escape(uri)} (this takes a few seconds) ...", highlight=False)
    raise typer.Exit(serve_ui(command, probe, url))


UI_PATIENCE = 120.0  # seconds `scalesweep ui` waits for the server to answer (SCALESWEEP_UI_TIMEOUT)


def serve_ui(command: list[str], probe: str, url: str) -> int:
    """Run the UI server; print its URL once it answers (polled), not before. A server that
    exits first, or does not answer within SCALESWEEP_UI_TIMEOUT seconds, is a clear error."""
    import time

    raw = os.environ.get("SCALESWEEP_UI_TIMEOUT", str(UI_PATIENCE))
    try:
        patience = float(raw)
    except ValueError:
        raise UserError(f"SCALESWEEP_UI_TIMEOUT={raw!r} is not a number of seconds (e.g. 120).") from None
    from scalesweep.store import server_environment

    server = subprocess.Popen(command, env=server_environment())
    try:
        deadline = time.monotonic() + patience
        while not _http_answers(probe):
            if server.poll() is not None:
                raise UserError(
                    f"the MLflow UI stopped before it answered (exit code {server.returncode}); its own "
                    f"messages are above. If the port is taken, pass another --port."
                )
            if time.monotonic() > deadline:
                raise UserError(
                    f"the MLflow UI did not answer on {url} within {patience:g} s, so it was stopped. "
                    f"A slow machine may need longer: set SCALESWEEP_UI_TIMEOUT (seconds)."
                )
            time.sleep(0.25)
        out.print(f"MLflow UI on {url} (Ctrl-C to stop)", highlight=False)
        try:
            return server.wait()
        except KeyboardInterrupt:
            return 0
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _http_answers(url: str) -> bool:
    """Whether an HTTP server answers at `url` (any status: it is up)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


@app.command()
@user_errors
def submit(
    spec: SpecArg,
    address: Annotated[str, typer.Option("--address", help="the Ray dashboard address, e.g. http://HEAD:8265")],
    tracking_uri: TrackingOpt = None,
) -> None:
    """Submit the sweep to a Ray cluster as a Ray Job (working directory uploaded)."""
    job_id = commands.submit(spec, address=address, tracking_uri=tracking_uri)
    out.print(f"submitted job {job_id}")
    out.print(f"follow it with: ray job logs --follow --address {address} {job_id}", highlight=False)


def _print_verdicts(verdicts) -> None:
    table = Table(title="verdicts")
    for column in ["phenomenon", "axis", "slice", "verdict", "detail", "confidence"]:
        table.add_column(column, overflow="fold")
    for _, row in verdicts.iterrows():
        conf = row["confidence"]
        table.add_row(
            *(escape(str(row[c])) for c in ["phenomenon", "axis", "slice", "verdict", "detail"]),
            "" if conf != conf else f"{conf:.2f}",
        )
    out.print(table)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
