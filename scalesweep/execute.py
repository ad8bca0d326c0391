"""Ray: run a sweep's missing runs as tasks, stream their rows to MLflow.

Each seed ensemble (runs that differ only in seed) is one Ray *streaming*
task: the worker yields events (see `train.py`) and the driver, the single
MLflow writer, records them as they arrive. The driver also decides what to
run: a run key already FINISHED in MLflow is skipped, a RUNNING one left by a
killed driver is marked KILLED and run again, so a sweep stopped at any
moment and started again ends with exactly one finished run per grid point.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import ray
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from scalesweep import cluster, track
from scalesweep.curves import curves_figure
from scalesweep.errors import first_line
from scalesweep.plan import RunConfig, group_by_ensemble, plan
from scalesweep.preview import axis_warnings
from scalesweep.spec import SweepSpec
from scalesweep.worker import train_task

LIVE_SECONDS = 5.0  # a running run's rows are written at most this often: the UI's curves lag by up to this


@dataclass
class SweepOutcome:
    planned: int
    skipped: int = 0
    finished: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    train_seconds: float = 0.0  # summed over the finished runs
    tracking_seconds: float = 0.0  # spent by the driver in MLflow calls
    figure_seconds: float = 0.0  # of which storing the curves.png figures

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def share(self, seconds: float) -> float:
        """Seconds as a share of the runs' training time."""
        return seconds / self.train_seconds if self.train_seconds else float("nan")


@dataclass
class RunState:
    """What the driver knows of one run of the current sweep."""

    config: RunConfig
    run_id: str | None = None
    done: bool = False
    draw: bool = True  # keep the rows for the run's curves figure
    rows: list[dict[str, float]] = field(default_factory=list)
    pending: list[dict[str, float]] = field(default_factory=list)  # received, not yet written
    written_at: float = 0.0

    def flush(self, tracker: track.Tracker) -> None:
        """Write the rows received since the last write (live curves in the UI)."""
        if self.pending and self.run_id:
            tracker.log_rows(self.run_id, self.pending, int(time.time() * 1000))
        self.pending, self.written_at = [], time.monotonic()


# ---------------------------------------------------------------- the sweep


def run_sweep(
    spec: SweepSpec,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    force: bool = False,
    rerun_failed: bool = False,
    console: Console | None = None,
) -> SweepOutcome:
    """Run every run of `spec` that MLflow does not already hold as finished.

    Both services are checked before any child run is written: the tracking
    store by `client_for`, the Ray address by a TCP probe (ray.init itself
    would retry a dead address for minutes), the runs' resources against the
    cluster's nodes."""
    console = console or Console(stderr=True)
    configs = plan(spec)
    address = cluster.resolve_address(address)
    client = track.client_for(tracking_uri or spec.tracking.uri)
    if address:
        cluster.check_reachable(address)
    notify = lambda message: console.print(f"[yellow]{escape(message)}[/yellow]")  # noqa: E731
    tracker = track.Tracker(client, spec.name, spec.experiment_name, notify=notify)
    todo = select_runs(tracker, configs, force=force, rerun_failed=rerun_failed)
    outcome = SweepOutcome(planned=len(configs), skipped=len(configs) - len(todo))
    if todo:
        try:
            cluster.connect(address)
            cluster.check_fits({spec.resources.for_model_size(c.model_size) for c in todo})
        except BaseException as err:  # the cluster refused: no run started, the parent must not stay RUNNING
            tracker.not_started(first_line(err))
            raise
    spec_yaml = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    tracker.log_spec(spec_yaml, len(configs), track.sweep_params(spec, configs), _description(spec, configs))
    if not todo:
        console.print(f"[green]all {len(configs)} runs of {escape(spec.name)} already finished[/green]")
        tracker.log_outcome(track.sweep_counts(tracker.child_runs(), configs), int(time.time() * 1000))
        return outcome
    for warning in axis_warnings(spec, configs):  # said before running; the sweep goes on (its runs are data)
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    console.print(f"{escape(spec.name)}: {len(todo)} runs to do, {outcome.skipped} already done")
    tracker.sweep_started()
    try:
        _drive(spec, todo, tracker, outcome, console)
    except KeyboardInterrupt:
        tracker.sweep_ended("KILLED", outcome.train_seconds)
        raise
    tracker.log_outcome(track.sweep_counts(tracker.child_runs(), configs), int(time.time() * 1000))
    outcome.tracking_seconds, outcome.figure_seconds = tracker.seconds, tracker.figure_seconds
    tracker.sweep_ended("FINISHED" if outcome.ok else "FAILED", outcome.train_seconds)
    return outcome


def _description(spec: SweepSpec, configs: list[RunConfig]) -> str:
    """The parent run's description in the UI: the spec's own, else a line saying what it sweeps."""
    if spec.description.strip():
        return spec.description.strip()
    return f"{spec.task.name} with the {spec.model.family} family: {len(configs)} runs ({spec.design.kind} design)"


def select_runs(
    tracker: track.Tracker, configs: list[RunConfig], *, force: bool, rerun_failed: bool
) -> list[RunConfig]:
    """Decide what to run from what MLflow holds; end runs left RUNNING by a dead driver."""
    by_key: dict[str, list[track.ChildRun]] = {}
    for child in tracker.child_runs():
        by_key.setdefault(child.run_key, []).append(child)
        if child.status == "RUNNING":
            tracker.abandon(child.run_id, "the driver that ran it stopped before it finished")
            child.status = "KILLED"
    todo = []
    for config in configs:
        statuses = {c.status for c in by_key.get(config.run_key, [])}
        if force or not ("FINISHED" in statuses or ("FAILED" in statuses and not rerun_failed)):
            todo.append(config)
    return todo


def _drive(
    spec: SweepSpec, todo: list[RunConfig], tracker: track.Tracker, outcome: SweepOutcome, console: Console
) -> None:
    groups = group_by_ensemble(todo)
    cap = spec.resources.max_concurrent or len(groups)
    states = {c.run_key: RunState(c, draw=spec.tracking.curves_figure) for c in todo}
    attempts: dict[int, int] = {}
    queue = list(enumerate(groups))
    in_flight: dict[Any, tuple[int, list[RunConfig]]] = {}
    with _progress(console) as progress:
        bar = progress.add_task(escape(spec.name), total=len(todo), status="")
        try:
            while queue or in_flight:
                while queue and len(in_flight) < cap:
                    index, group = queue.pop(0)
                    in_flight[_submit(spec, group)] = (index, group)
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                for generator in ready:
                    index, group = in_flight.pop(generator)
                    still_open, crash = _pump(generator, states, tracker, outcome)
                    if still_open:
                        in_flight[generator] = (index, group)
                    elif crash is not None:
                        _retry_or_fail(index, group, crash, states, attempts, spec.max_retries, queue, tracker, outcome)
                running = sum(1 for s in states.values() if s.run_id and not s.done)
                progress.update(bar, completed=outcome.finished + outcome.failed, status=_status(outcome, running))
        except track.TrackingLost:
            _cancel(in_flight)  # cannot write: leave the runs RUNNING; the next `run` marks them KILLED
            raise
        except KeyboardInterrupt:
            _cancel(in_flight)
            _abandon_running(states, tracker, "the sweep was interrupted (Ctrl-C)")
            raise


def _submit(spec: SweepSpec, group: list[RunConfig]) -> Any:
    """One streaming Ray task for a seed ensemble, with the resources its width asks for."""
    cpus, gpus = spec.resources.for_model_size(group[0].model_size)
    task = ray.remote(train_task).options(num_returns="streaming", num_cpus=cpus, num_gpus=gpus, max_retries=0)
    return task.remote([c.model_dump(mode="json") for c in group], gpus)


def _cancel(in_flight: dict[Any, Any]) -> None:
    for generator in in_flight:
        with contextlib.suppress(Exception):  # already finished, or a Ray without generator cancellation
            ray.cancel(generator, force=True)


def _pump(
    generator, states: dict[str, RunState], tracker: track.Tracker, outcome: SweepOutcome
) -> tuple[bool, BaseException | None]:
    """Record every event the generator has ready.

    Returns (still open, crash): a generator that broke (its worker died, or
    Ray failed it) returns the exception, so that its runs can be retried.
    """
    while ray.wait([generator], num_returns=1, timeout=0)[0]:
        try:
            ref = next(generator)
        except StopIteration:
            return False, None
        try:
            event = ray.get(ref)
        except Exception as err:  # WorkerCrashedError, RayTaskError, ...
            return False, err
        _record(event, states, tracker, outcome)
    return True, None


def _record(event: dict[str, Any], states: dict[str, RunState], tracker: track.Tracker, outcome: SweepOutcome) -> None:
    state = states[event["run_key"]]
    now = int(time.time() * 1000)
    kind = event["kind"]
    if kind == "started":
        state.run_id = tracker.start_child(state.config)
        state.written_at = time.monotonic()
    elif kind == "metrics":
        state.pending.extend(event["rows"])
        if state.draw:
            state.rows.extend(event["rows"])
        if time.monotonic() - state.written_at >= LIVE_SECONDS:
            state.flush(tracker)
    elif kind == "summary":
        figure = curves_figure(state.rows, state.config.label) if state.rows else None
        steps = state.config.training.steps
        tracker.finish(state.run_id, event["summary"], steps, now, rows=state.pending, figure=figure)
        state.done, state.rows, state.pending = True, [], []
        outcome.finished += 1
        summary = event["summary"]  # an ensemble's seeds share one training time
        outcome.train_seconds += summary.get("train_seconds", 0.0) / summary.get("ensemble_size", 1.0)
    elif kind == "failed":
        state.flush(tracker)
        tracker.fail(state.run_id, event["error"], event["traceback"])
        state.done = True
        outcome.failed += 1
        outcome.failures.append((state.config.label, event["error"]))


def _retry_or_fail(index, group, crash, states, attempts, max_retries, queue, tracker, outcome) -> None:
    """A worker process died: end its unfinished runs' records, then retry or fail them."""
    unfinished = [c for c in group if not states[c.run_key].done]
    attempts[index] = attempts.get(index, 0) + 1
    message = f"worker died: {type(crash).__name__}: {first_line(crash)}"
    retry = attempts[index] <= max_retries
    for config in unfinished:
        state = states[config.run_key]
        if state.run_id is None:
            state.run_id = tracker.start_child(config)
        state.flush(tracker)  # the dead attempt's curves stay on its record
        state.rows = []
        if retry:
            tracker.abandon(state.run_id, f"{message}; retried (attempt {attempts[index] + 1})")
            state.run_id = None
        else:
            tracker.fail(state.run_id, message, str(crash))
            state.done = True
            outcome.failed += 1
            outcome.failures.append((config.label, message))
    if retry and unfinished:
        queue.append((index, unfinished))


def _abandon_running(states: dict[str, RunState], tracker: track.Tracker, reason: str) -> None:
    for state in states.values():
        if state.run_id and not state.done:
            state.flush(tracker)
            tracker.abandon(state.run_id, reason)


def _status(outcome: SweepOutcome, running: int) -> str:
    failed = f"[red]{outcome.failed} failed[/red]" if outcome.failed else "0 failed"
    return f"{outcome.finished} done · {running} running · {failed}"


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
