"""Ray: run a sweep's missing runs as tasks, stream their rows to MLflow.

Each group of runs that train as one vectorised model (`plan.group_by_stack`:
a seed ensemble, or several when they differ only in data size, lr or weight
decay and stacking them pays) is one Ray *streaming* task: the worker yields
events (see `train.py`) and the driver, the single MLflow writer (a
`store.Tracker`, or any writer with its methods), records them as they arrive.
What to run is the ledger's answer (`ledger.py`): a run key already FINISHED
is skipped, a RUNNING one left by a killed driver is marked KILLED and run
again, so a sweep stopped at any moment and started again ends with exactly
one finished run per grid point.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from scalesweep import cluster, store
from scalesweep.errors import first_line
from scalesweep.ledger import Ledger
from scalesweep.plan import RunConfig, group_by_stack, plan
from scalesweep.preview import axis_warnings
from scalesweep.spec import SweepSpec
from scalesweep.startup import mark
from scalesweep.worker import train_task, warm_up

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
    resumed: int = 0  # runs that went on from a checkpoint
    checkpoints: int = 0  # checkpoints stored (one per run: an ensemble's counts once per seed)
    checkpoint_seconds: float = 0.0  # the workers' time to make them (torch.save)

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
    checkpoint: bytes | None = None  # the latest checkpoint: a retried or resumed attempt goes on from it
    holders: list[str] = field(default_factory=list)  # the key's runs that store one (deleted when it finishes)

    def flush(self, tracker: store.Tracker) -> None:
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
    writer: Callable[..., store.Tracker] | None = None,
) -> SweepOutcome:
    """Run every run of `spec` that the store does not already hold as finished.

    Both services are checked before any child run is written: the tracking
    store by `client_for`, the Ray address by a TCP probe (ray.init itself
    would retry a dead address for minutes), the runs' resources against the
    cluster's nodes. `writer` makes the sweep's writer from (client, sweep,
    experiment, notify=...): `store.Tracker` unless given (a benchmark passes
    one that writes nothing)."""
    mark("driver_imported")
    console = console or Console(stderr=True)
    configs = plan(spec)
    mark("planned")
    address = cluster.resolve_address(address)
    mark("store_start")
    if not address:  # a local instance: it starts while the store opens (unless `commands.run` started it)
        cluster.start_local(lambda: warm_workers(spec, configs))
    try:
        client = store.client_for(tracking_uri or spec.tracking.uri)
        mark("store_opened")
        if address:
            cluster.check_reachable(address)
        notify = lambda message: console.print(f"[yellow]{escape(message)}[/yellow]")  # noqa: E731
        tracker = (writer or store.Tracker)(client, spec.name, spec.experiment_name, notify=notify)
        tracker.take_lease()  # one driver per sweep: a second one stops here, naming the first
        mark("lease_taken")
        try:
            return _sweep(spec, configs, tracker, address, console, force=force, rerun_failed=rerun_failed)
        finally:
            tracker.release_lease()
    finally:
        cluster.settle()  # a Ray start still under way (nothing to run, or an error) ends before the driver


def warm_workers(spec: SweepSpec, configs: list[RunConfig]) -> int:
    """Submit one `warm_up` task per worker the sweep will use at once (no more: an idle extra
    worker holds ~300 MiB and competes for the CPUs), with the first ensembles' resources."""
    if not ray.is_initialized() or not configs:
        return 0
    groups = group_by_stack(configs)
    cpus, gpus = spec.resources.for_model_size(groups[0][0].model_size)
    n = min(len(groups), spec.resources.max_concurrent or len(groups), cluster.slots(cpus, gpus))
    task = ray.remote(warm_up).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    for _ in range(n):
        task.remote()
    return n


def _sweep(
    spec: SweepSpec,
    configs: list[RunConfig],
    tracker: store.Tracker,
    address: str | None,
    console: Console,
    *,
    force: bool,
    rerun_failed: bool,
) -> SweepOutcome:
    """The sweep, under its lease: select what to run, check the cluster, drive, record the outcome."""
    ledger = Ledger(tracker.child_runs())  # read once: what to run, and what it goes on from
    todo = select_runs(tracker, ledger, configs, force=force, rerun_failed=rerun_failed)
    resume = prepare_checkpoints(tracker, ledger, spec, configs, todo, force=force)
    outcome = SweepOutcome(planned=len(configs), skipped=len(configs) - len(todo))
    if todo:
        try:
            cluster.connect(address)  # a local instance: waits for the start begun before the store opened
            cluster.check_fits({spec.resources.for_model_size(c.model_size) for c in todo})
        except BaseException as err:  # the cluster refused: no run started, the parent must not stay RUNNING
            tracker.not_started(first_line(err))
            raise
    spec_yaml = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    tracker.log_spec(spec_yaml, len(configs), store.sweep_params(spec, configs), _description(spec, configs))
    if not todo:
        console.print(f"[green]all {len(configs)} runs of {escape(spec.name)} already finished[/green]")
        tracker.log_outcome(Ledger(tracker.child_runs()).outcome(configs), int(time.time() * 1000))
        return outcome
    for warning in axis_warnings(spec, configs):  # said before running; the sweep goes on (its runs are data)
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    console.print(f"{escape(spec.name)}: {len(todo)} runs to do, {outcome.skipped} already done")
    if n_resumable := sum(1 for data, _ in resume.values() if data):
        console.print(f"{n_resumable} of them go on from their checkpoints")
    tracker.sweep_started()
    try:
        Driver(spec, tracker, outcome, console).drive(todo, resume)
    except KeyboardInterrupt:
        tracker.sweep_ended("KILLED", outcome.train_seconds)
        raise
    if outcome.resumed:
        console.print(f"resumed {outcome.resumed} runs from checkpoints")
    if outcome.checkpoints:
        console.print(f"checkpoints: {outcome.checkpoints} stored, {outcome.checkpoint_seconds:.2f} s to make them")
    tracker.log_outcome(Ledger(tracker.child_runs()).outcome(configs), int(time.time() * 1000))
    outcome.tracking_seconds, outcome.figure_seconds = tracker.seconds, tracker.figure_seconds
    tracker.sweep_ended("FINISHED" if outcome.ok else "FAILED", outcome.train_seconds)
    return outcome


def _description(spec: SweepSpec, configs: list[RunConfig]) -> str:
    """The parent run's description in the UI: the spec's own, else a line saying what it sweeps."""
    if spec.description.strip():
        return spec.description.strip()
    return f"{spec.task.name} with the {spec.model.family} family: {len(configs)} runs ({spec.design.kind} design)"


def select_runs(
    tracker: store.Tracker, ledger: Ledger, configs: list[RunConfig], *, force: bool, rerun_failed: bool
) -> list[RunConfig]:
    """What to run, by the ledger of what the store holds; end runs left RUNNING by a dead driver
    (KILLED in the store and in the ledger's records)."""
    for child in ledger.stale():
        tracker.abandon(child.run_id, "the driver that ran it stopped before it finished")
        child.status = "KILLED"
    return ledger.to_run(configs, force=force, rerun_failed=rerun_failed)


def prepare_checkpoints(
    tracker: store.Tracker,
    ledger: Ledger,
    spec: SweepSpec,
    configs: list[RunConfig],
    todo: list[RunConfig],
    *,
    force: bool,
) -> dict[str, tuple[bytes | None, list[str]]]:
    """Per run to do: (the checkpoint it goes on from, or None; its runs that may hold one).

    A key goes on from the checkpoint of its latest interrupted attempt (`Ledger.resumable`); a
    group (`group_by_stack`, as the driver forms them) only when each of its runs has one of the
    same step (else it starts over).
    `--force` starts over. Checkpoints left on keys that have finished since (a driver killed
    between FINISHED and deleting them) are deleted here, unless the spec keeps them."""
    todo_keys = {c.run_key for c in todo}
    if not spec.checkpoint.keep:
        for config in configs:
            if config.run_key not in todo_keys and ledger.state(config.run_key).state == "finished":
                for child in ledger.with_checkpoints(config.run_key):
                    tracker.delete_checkpoint(child.run_id)
    found: dict[str, tuple[bytes | None, list[str]]] = {}
    for group in group_by_stack(todo):
        sources = [None if force else ledger.resumable(c.run_key) for c in group]
        same = all(sources) and len({s.checkpoint_step for s in sources}) == 1
        for config, source in zip(group, sources, strict=True):
            data = tracker.read_checkpoint(source.run_id) if same else None
            found[config.run_key] = (data, [c.run_id for c in ledger.may_hold_checkpoints(config.run_key)])
    return found


def largest_first(groups: list[list[RunConfig]]) -> list[list[RunConfig]]:
    """The groups in the order to submit them: most training FLOPs first (ties in plan order).

    Groups start in this order (`InFlightWindow`). In plan order the widest models on the largest
    sets come last, and one worker trains the last of them while the others idle. The
    longest-first rule (Graham 1969, "Bounds on multiprocessing timing anomalies") bounds the wall
    time at 4/3 of the best order's; FLOPs stand in for time (on a CPU small runs cost more per
    FLOP, which only softens the order)."""
    return sorted(groups, key=lambda group: -sum(config.compute for config in group))


class InFlightWindow:
    """When to submit the next group: while the cluster has room for it, and then one more, once
    every task submitted so far has started.

    Ray does not start queued tasks in the order they were submitted (seen on Ray 2.60: a sweep's
    twelve ensembles started in no order related to it), so the driver keeps the queue itself.
    With at most one task waiting in Ray, the next worker to free takes exactly the next group, at
    once, without waiting for the driver. The cluster's size is read again every
    `REFRESH_SECONDS`, for nodes that join (an autoscaler) or leave."""

    REFRESH_SECONDS = 10.0

    def __init__(self, spec: SweepSpec):
        self.spec = spec
        self.known: dict[tuple[float, float], tuple[float, int]] = {}  # request -> (read at, slots)

    def slots(self, group: list[RunConfig]) -> int:
        """How many tasks of this group's request the cluster runs at once (`cluster.slots`)."""
        request = self.spec.resources.for_model_size(group[0].model_size)
        read_at, fits = self.known.get(request, (-math.inf, 0))
        if time.monotonic() - read_at > self.REFRESH_SECONDS:
            fits = cluster.slots(*request)
            self.known[request] = (time.monotonic(), fits)
        return fits

    def admits(self, group: list[RunConfig], in_flight: int, waiting: int) -> bool:
        """Whether to submit `group` now, with `in_flight` tasks submitted of which `waiting` have
        not started yet."""
        fits = self.slots(group)
        return in_flight < fits or (in_flight == fits and waiting == 0)


class Driver:
    """The driver loop of one sweep: groups (`group_by_stack`) submitted as streaming Ray tasks (at most
    `max_concurrent` in flight), their events recorded by the writer as they arrive, and a
    task whose worker died retried up to `max_retries` times, then failed."""

    def __init__(self, spec: SweepSpec, tracker: store.Tracker, outcome: SweepOutcome, console: Console):
        self.spec, self.tracker, self.outcome, self.console = spec, tracker, outcome, console
        self.states: dict[str, RunState] = {}
        self.attempts: dict[int, int] = {}  # per ensemble (its index in the plan): attempts so far
        self.queue: list[tuple[int, list[RunConfig]]] = []
        self.in_flight: dict[Any, tuple[int, list[RunConfig]]] = {}

    def drive(self, todo: list[RunConfig], resume: dict[str, tuple[bytes | None, list[str]]] | None = None) -> None:
        """Run `todo`; `resume`: per run key, the checkpoint to go on from and the runs holding one."""
        groups = largest_first(group_by_stack(todo))
        cap = self.spec.resources.max_concurrent or len(groups)
        window = InFlightWindow(self.spec)
        self.states = {c.run_key: RunState(c, draw=self.spec.tracking.curves_figure) for c in todo}
        for key, (data, holders) in (resume or {}).items():
            self.states[key].checkpoint, self.states[key].holders = data, list(holders)
        self.queue = list(enumerate(groups))
        with _progress(self.console) as progress:
            bar = progress.add_task(escape(self.spec.name), total=len(todo), status="")
            try:
                while self.queue or self.in_flight:
                    while (
                        self.queue
                        and len(self.in_flight) < cap
                        and window.admits(self.queue[0][1], len(self.in_flight), self.waiting())
                    ):
                        index, group = self.queue.pop(0)
                        self.in_flight[self.submit(group)] = (index, group)
                    ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=1.0)
                    for generator in ready:
                        index, group = self.in_flight.pop(generator)
                        still_open, crash = self.pump(generator)
                        if still_open:
                            self.in_flight[generator] = (index, group)
                        elif crash is not None:
                            self.retry_or_fail(index, group, crash)
                    running = sum(1 for s in self.states.values() if s.run_id and not s.done)
                    done = self.outcome.finished + self.outcome.failed
                    progress.update(bar, completed=done, status=_status(self.outcome, running))
            except store.TrackingLost:
                self.cancel()  # cannot write: leave the runs RUNNING; the next `run` marks them KILLED
                raise
            except KeyboardInterrupt:
                self.cancel()
                self.abandon_running("the sweep was interrupted (Ctrl-C)")
                raise

    def waiting(self) -> int:
        """Submitted groups that have not started: none of their runs has a record yet (a task's
        first events are its runs' `started`)."""
        groups = [group for _, group in self.in_flight.values()]
        return sum(1 for group in groups if all(self.states[c.run_key].run_id is None for c in group))

    def submit(self, group: list[RunConfig]) -> Any:
        """One streaming Ray task for a group of runs, with the resources its width asks for."""
        cpus, gpus = self.spec.resources.for_model_size(group[0].model_size)
        task = ray.remote(train_task).options(num_returns="streaming", num_cpus=cpus, num_gpus=gpus, max_retries=0)
        resume = {c.run_key: self.states[c.run_key].checkpoint for c in group if self.states[c.run_key].checkpoint}
        checkpoint = self.spec.checkpoint.model_dump(mode="json")
        mark("submitted")
        return task.remote([c.model_dump(mode="json") for c in group], gpus, checkpoint, resume)

    def cancel(self) -> None:
        for generator in self.in_flight:
            with contextlib.suppress(Exception):  # already finished, or a Ray without generator cancellation
                ray.cancel(generator, force=True)

    def pump(self, generator: Any) -> tuple[bool, BaseException | None]:
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
            self.record(event)
        return True, None

    def record(self, event: dict[str, Any]) -> None:
        tracker, outcome = self.tracker, self.outcome
        state = self.states[event["run_key"]]
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
            figure = None
            if state.rows:
                from scalesweep.curves import curves_figure  # matplotlib: imported at the first figure

                figure = curves_figure(state.rows, state.config.label)
            steps = state.config.training.steps
            tracker.finish(state.run_id, event["summary"], steps, now, rows=state.pending, figure=figure)
            state.done, state.rows, state.pending = True, [], []
            self.drop_checkpoints(state)
            outcome.finished += 1
            summary = event["summary"]  # an ensemble's seeds share one training time
            outcome.train_seconds += summary.get("train_seconds", 0.0) / summary.get("ensemble_size", 1.0)
        elif kind == "checkpoint":
            self.store_checkpoint(event)
        elif kind == "resumed":
            tracker.tag_resumed(state.run_id, event["step"])
            outcome.resumed += 1
        elif kind == "failed":
            state.flush(tracker)
            tracker.fail(state.run_id, event["error"], event["traceback"])
            state.done = True
            outcome.failed += 1
            outcome.failures.append((state.config.label, event["error"]))

    def store_checkpoint(self, event: dict[str, Any]) -> None:
        """A checkpoint (of one run, or of a whole seed ensemble): each run's rows up to its step are
        written first, then the checkpoint, stored on each run it covers (replacing the one before),
        and kept in memory for a retry of a dead worker."""
        for key in event["run_keys"]:
            state = self.states[key]
            state.flush(self.tracker)
            self.tracker.log_checkpoint(state.run_id, event["data"], event["step"])
            state.checkpoint = event["data"]
            if state.run_id not in state.holders:
                state.holders.append(state.run_id)
            self.outcome.checkpoints += 1
        self.outcome.checkpoint_seconds += event.get("seconds", 0.0)

    def drop_checkpoints(self, state: RunState) -> None:
        """A finished run needs no checkpoint: delete those of all its key's attempts, unless kept."""
        state.checkpoint = None
        if not self.spec.checkpoint.keep:
            for run_id in state.holders:
                self.tracker.delete_checkpoint(run_id)
            state.holders = []

    def retry_or_fail(self, index: int, group: list[RunConfig], crash: BaseException) -> None:
        """A worker process died: end its unfinished runs' records, then retry or fail them."""
        unfinished = [c for c in group if not self.states[c.run_key].done]
        self.attempts[index] = self.attempts.get(index, 0) + 1
        message = f"worker died: {type(crash).__name__}: {first_line(crash)}"
        retry = self.attempts[index] <= self.spec.max_retries
        for config in unfinished:
            state = self.states[config.run_key]
            if state.run_id is None:
                state.run_id = self.tracker.start_child(config)
            state.flush(self.tracker)  # the dead attempt's curves stay on its record
            state.rows = []
            if retry:
                self.tracker.abandon(state.run_id, f"{message}; retried (attempt {self.attempts[index] + 1})")
                state.run_id = None
            else:
                self.tracker.fail(state.run_id, message, str(crash))
                state.done = True
                self.outcome.failed += 1
                self.outcome.failures.append((config.label, message))
        if retry and unfinished:
            self.queue.append((index, unfinished))

    def abandon_running(self, reason: str) -> None:
        for state in self.states.values():
            if state.run_id and not state.done:
                state.flush(self.tracker)
                self.tracker.abandon(state.run_id, reason)


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
