"""Checkpoints: a run stopped at a checkpoint and resumed from its bytes ends with the numbers
of the run that was never stopped (history and summaries), alone and as a seed ensemble.

In process, through train.py's generator: the "kill" is to stop consuming events right after
a checkpoint event; the resume is a new generator given that event's bytes. Then the driver's
side (which attempt a key goes on from; storing, reading and deleting a checkpoint in a real
sqlite store), and end to end: a driver SIGKILLed once checkpoints are recorded, and `run` again."""

from __future__ import annotations

import re
import signal
import sqlite3

import pytest
import torch

from scalesweep import store, train
from scalesweep.ledger import ChildRun, Ledger
from scalesweep.plan import RunConfig, plan
from scalesweep.spec import CheckpointSpec, parse_spec
from scalesweep.train import Checkpointer, train_ensemble, train_one, train_runs
from tests.conftest import RAY_ENV, fast_spec, fresh_store, kill_session, run_on, wait_until, write_spec
from tests.test_ensemble import configs as ensemble_configs
from tests.test_faults import assert_complete, start_driver

CPU = torch.device("cpu")
EVERY_EVAL = CheckpointSpec(after_seconds=0, every_seconds=0)  # a checkpoint at each evaluation step
OBSERVABLES = [
    "loss",
    "accuracy",
    "fit_steps",  # the first step at which an accuracy was reached: reads the whole history
    "grad_norm",
    "loss_spikes",  # counts over the history
    "activation_rms",  # against the RMS at initialisation
    "weight_displacement",  # against the initial weights
    "weight_norm",
    "effective_rank",
]
NOT_COMPARED = {"train_seconds"}


def configs(seeds=(0, 1, 2), **training) -> list[RunConfig]:
    """test_ensemble's runs (minibatches: the data-order generator matters; AdamW: the optimiser
    state matters), trained 60 steps."""
    return ensemble_configs(seeds, sweep="ckpt", observables=OBSERVABLES, training={"steps": 60, **training})


def results(events) -> dict[str, dict]:
    """Per run: its rows in order, its summary, its checkpoint steps and the step it resumed at."""
    runs: dict[str, dict] = {}
    for event in events:
        run = runs.setdefault(event["run_key"], {"rows": [], "summary": None, "checkpoints": [], "resumed": None})
        if event["kind"] == "metrics":
            run["rows"] += event["rows"]
        elif event["kind"] == "summary":
            run["summary"] = event["summary"]
        elif event["kind"] == "resumed":
            run["resumed"] = event["step"]
        elif event["kind"] == "checkpoint":
            run["checkpoints"].append(event["step"])
        else:
            raise AssertionError(event)
    return runs


def until_checkpoint(events, nth: int) -> dict:
    """Consume events up to the nth checkpoint event, then drop the generator (the "kill")."""
    seen = 0
    for event in events:
        if event["kind"] == "checkpoint":
            seen += 1
            if seen == nth:
                events.close()
                return event
    raise AssertionError(f"fewer than {nth} checkpoints")


def assert_same(whole: dict, resumed: dict, rtol: float = 1e-5) -> None:
    assert whole["summary"] is not None and resumed["summary"] is not None
    assert set(whole["summary"]) == set(resumed["summary"])
    for key in set(whole["summary"]) - NOT_COMPARED:
        assert resumed["summary"][key] == pytest.approx(whole["summary"][key], rel=rtol, abs=1e-6, nan_ok=True), key
    assert [r["step"] for r in resumed["rows"]] == [r["step"] for r in whole["rows"]], "each step once"
    for a, b in zip(whole["rows"], resumed["rows"], strict=True):
        assert b == pytest.approx(a, rel=rtol, abs=1e-6, nan_ok=True)


@pytest.mark.parametrize("nth", [1, 3])
def test_a_run_resumed_from_a_checkpoint_ends_as_if_never_stopped(nth):
    (config,) = configs(seeds=(0,))
    whole = results(train_one(config, CPU))[config.run_key]
    with_checkpoints = results(train_one(config, CPU, EVERY_EVAL))[config.run_key]
    assert with_checkpoints["checkpoints"] == [0, 10, 20, 30, 40, 50], "at evaluation steps, never the last"
    assert_same(whole, with_checkpoints, rtol=0)  # taking a checkpoint changes nothing
    saved = until_checkpoint(train_one(config, CPU, EVERY_EVAL), nth)
    assert saved["run_keys"] == [config.run_key] and saved["step"] == 10 * (nth - 1)
    resumed = results(train_one(config, CPU, EVERY_EVAL, resume=saved["data"]))[config.run_key]
    assert resumed["resumed"] == saved["step"]
    assert resumed["checkpoints"][0] > saved["step"]
    assert_same(whole, resumed)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_an_ensemble_resumed_from_a_checkpoint_ends_as_if_never_stopped(optimizer):
    runs = configs(optimizer=optimizer)
    whole = results(train_ensemble(runs, CPU))
    saved = until_checkpoint(train_ensemble(runs, CPU, EVERY_EVAL), 3)
    assert saved["run_keys"] == [c.run_key for c in runs], "one checkpoint for the whole ensemble"
    resume = {c.run_key: saved["data"] for c in runs}
    resumed = results(train_runs(runs, 0.0, EVERY_EVAL, resume))
    for config in runs:
        assert resumed[config.run_key]["resumed"] == 20
        assert_same(whole[config.run_key], resumed[config.run_key])


@pytest.mark.parametrize("steps_per_block", [3, 5])
@pytest.mark.parametrize("together", [False, True], ids=["alone", "ensemble"])
def test_a_resume_inside_a_block_of_draws_or_at_its_end_draws_what_it_would_have(
    monkeypatch, steps_per_block, together
):
    """Minibatches are drawn a block of steps at a time (`train.BlockDraws`); a checkpoint at step
    20 falls inside a block of 3 steps (18-20) and at the end of one of 5: either way the resumed
    run must end as the run never stopped, exactly."""
    runs = configs(seeds=(0, 1) if together else (0,))
    monkeypatch.setattr(train, "BLOCK_ROWS", steps_per_block * runs[0].training.batch_size)

    def trained(*args, **kwargs):
        return train_runs(runs, 0.0, *args, **kwargs) if together else train_one(runs[0], CPU, *args, **kwargs)

    whole = results(trained())
    saved = until_checkpoint(trained(EVERY_EVAL), 3)
    assert saved["step"] == 20
    resumed = results(trained(EVERY_EVAL, {c.run_key: saved["data"] for c in runs} if together else saved["data"]))
    for config in runs:
        assert resumed[config.run_key]["resumed"] == 20
        assert_same(whole[config.run_key], resumed[config.run_key], rtol=0)


def test_a_checkpoint_that_does_not_fit_is_ignored_and_the_run_starts_over():
    runs = configs()
    whole = results(train_ensemble(runs, CPU))
    saved = until_checkpoint(train_ensemble(runs, CPU, EVERY_EVAL), 2)
    solo = until_checkpoint(train_one(runs[0], CPU, EVERY_EVAL), 2)
    cases = [
        {c.run_key: b"not a checkpoint" for c in runs},  # unreadable bytes
        {runs[0].run_key: saved["data"], runs[1].run_key: saved["data"]},  # one seed has none
        {c.run_key: solo["data"] for c in runs},  # a checkpoint of another run
    ]
    for resume in cases:
        again = results(train_runs(runs, 0.0, None, resume))
        for config in runs:
            assert again[config.run_key]["resumed"] is None
            assert_same(whole[config.run_key], again[config.run_key], rtol=0)


def test_short_runs_never_checkpoint_and_enabled_false_turns_checkpoints_off():
    """The default waits a minute of training before the first checkpoint: a test-sized run has none."""
    for policy in (CheckpointSpec(), CheckpointSpec(enabled=False, after_seconds=0)):
        assert "checkpoint" not in {e["kind"] for e in train_runs(configs(), 0.0, policy)}


def test_the_checkpointer_waits_then_keeps_its_interval(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("scalesweep.train.time.perf_counter", lambda: clock[0])
    saver = Checkpointer(CheckpointSpec(after_seconds=60, every_seconds=30))
    due = []
    for _ in range(12):
        clock[0] += 10
        due.append(saver.due())
    assert [i for i, d in enumerate(due) if d] == [5, 8, 11]  # at 60 s, then every 30 s
    resumed = Checkpointer(CheckpointSpec(after_seconds=60, every_seconds=30), resumed=True)
    clock[0] += 30
    assert resumed.due(), "a resumed run has trained long already: the interval, not the threshold"


SPEC = """
name: keys
task: {name: modular_arithmetic, params: {p: 7}}
model: {family: mlp}
axes: {model_size: [4, 8], data_size: [20], seeds: 2}
"""


def test_checkpoint_settings_do_not_change_run_keys():
    plain = [c.run_key for c in plan(parse_spec(SPEC))]
    other = SPEC + "checkpoint: {after_seconds: 5, every_seconds: 1, keep: true}\n"
    assert [c.run_key for c in plan(parse_spec(other))] == plain


# ---------------------------------------------------------------- the driver's side: ledger and store


def test_a_key_goes_on_from_its_latest_interrupted_attempt_with_a_checkpoint():
    ledger = Ledger(
        [
            ChildRun("a1", "a", "KILLED", 1, checkpoint_step=100),
            ChildRun("a2", "a", "KILLED", 2),  # resumed from a1, killed before a checkpoint of its own
            ChildRun("b1", "b", "KILLED", 1, checkpoint_step=50),
            ChildRun("b2", "b", "FAILED", 2),  # a run that raised starts over
            ChildRun("c1", "c", "KILLED", 1),
        ]
    )
    assert ledger.resumable("a").run_id == "a1"
    assert ledger.resumable("b") is None and ledger.resumable("c") is None and ledger.resumable("d") is None
    assert [c.run_id for c in ledger.with_checkpoints("a")] == ["a1"]
    # a KILLED attempt may hold an untagged checkpoint (its driver died between storing and tagging)
    assert [c.run_id for c in ledger.may_hold_checkpoints("a")] == ["a1", "a2"]
    assert [c.run_id for c in ledger.may_hold_checkpoints("b")] == ["b1"]


def test_a_checkpoint_is_stored_read_back_and_deleted(workdir, empty_store):
    uri = fresh_store(workdir, empty_store)
    spec = parse_spec(SPEC)
    config = plan(spec)[0]
    tracker = store.Tracker(store.client_for(uri), spec.name, spec.experiment_name)
    run_id = tracker.start_child(config)
    assert tracker.read_checkpoint(run_id) is None
    tracker.log_checkpoint(run_id, b"first", 10)
    tracker.log_checkpoint(run_id, b"second", 20)  # one checkpoint per run: the later replaces it
    assert tracker.read_checkpoint(run_id) == b"second"
    tracker.abandon(run_id, "a test")
    assert Ledger(tracker.child_runs()).resumable(config.run_key).checkpoint_step == 20
    tracker.delete_checkpoint(run_id)
    assert tracker.read_checkpoint(run_id) is None
    assert Ledger(tracker.child_runs()).resumable(config.run_key) is None
    assert not list((workdir / "mlartifacts").rglob("checkpoint.pt"))
    tracker.delete_checkpoint(run_id)  # nothing left to delete: nothing happens

    # A driver killed between storing a checkpoint and tagging it leaves an untagged file; the key's
    # KILLED attempt is among those whose checkpoints go when the key finishes.
    orphan = tracker.start_child(config)
    untagged = workdir / store.CHECKPOINT_FILE
    untagged.write_bytes(b"third")
    tracker.client.log_artifact(orphan, str(untagged), artifact_path=store.CHECKPOINT_DIR)
    tracker.abandon(orphan, "killed before the tag")
    holders = [c.run_id for c in Ledger(tracker.child_runs()).may_hold_checkpoints(config.run_key)]
    assert orphan in holders and len(list((workdir / "mlartifacts").rglob("checkpoint.pt"))) == 1
    for holder in holders:
        tracker.delete_checkpoint(holder)
    assert not list((workdir / "mlartifacts").rglob("checkpoint.pt"))


# ---------------------------------------------------------------- end to end: a driver SIGKILLed after a checkpoint


def checkpoint_tags(db) -> int:
    """Child runs whose checkpoint is recorded (the tag comes after the artifact), read with sqlite."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT count(*) FROM tags WHERE key = 'scalesweep.checkpoint_step'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_a_driver_killed_after_a_checkpoint_is_resumed_from_it(workdir, empty_store, ray_cluster):
    # The kill comes as soon as two checkpoints are recorded (polled every 0.2 s), so four thousand
    # steps leave the runs far from done (a thousand did not always, once workers stepped without
    # torch.optim's wrappers: a run could finish between its checkpoint and the kill); both drivers
    # run on the session's Ray cluster.
    steps = 4000
    extra = "checkpoint: {after_seconds: 0, every_seconds: 1}"
    spec = write_spec(workdir, fast_spec("ckpt", widths=(4, 8), sizes=(20, 30), steps=steps, cpus=1, extra=extra))
    fresh_store(workdir, empty_store)
    on_cluster = ("--address", ray_cluster.gcs)
    driver, log = start_driver(spec, workdir, *on_cluster, env=RAY_ENV)
    recorded = wait_until(lambda: checkpoint_tags(workdir / "mlflow.db") >= 2 or driver.poll() is not None, 240, 0.2)
    kill_session(driver)
    assert recorded and driver.returncode == -signal.SIGKILL, log.read_text()

    rerun = run_on(ray_cluster, spec, cwd=workdir)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output
    resumed = re.search(r"resumed (\d+) runs from checkpoints", output)
    assert resumed and int(resumed.group(1)) >= 2, output
    uri = f"sqlite:///{workdir}/mlflow.db"
    runs = assert_complete(uri, "ckpt", spec, steps=steps)  # each step once, on the finished run
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sum("scalesweep.resumed_from" in r.data.tags for r in finished) == int(resumed.group(1))
    assert not any("scalesweep.checkpoint_step" in r.data.tags for r in runs), "finished keys keep no checkpoint"
    assert not list((workdir / "mlartifacts").rglob("checkpoint.pt"))


class RecordingTracker:
    """The driver's writer, recording the calls the checkpoint events make."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, *args))


@pytest.mark.parametrize("keep", [False, True])
def test_the_driver_stores_a_checkpoint_on_each_seed_and_deletes_it_when_the_run_finishes(keep):
    from rich.console import Console

    from scalesweep import execute

    spec = parse_spec(SPEC + f"checkpoint: {{keep: {str(keep).lower()}}}\n")
    runs = plan(spec)[:2]  # one ensemble: seeds 0 and 1
    tracker, outcome = RecordingTracker(), execute.SweepOutcome(planned=2)
    driver = execute.Driver(spec, tracker, outcome, Console(quiet=True))
    driver.states = {c.run_key: execute.RunState(c, run_id=f"run{i}", draw=False) for i, c in enumerate(runs)}
    driver.states[runs[0].run_key].holders = ["old0"]  # a killed attempt's checkpoint
    keys = [c.run_key for c in runs]
    driver.record({"run_key": keys[0], "kind": "checkpoint", "run_keys": keys, "step": 10, "data": b"x", "seconds": 0})
    stored = [c for c in tracker.calls if c[0] == "log_checkpoint"]
    assert stored == [("log_checkpoint", "run0", b"x", 10), ("log_checkpoint", "run1", b"x", 10)]
    assert driver.states[keys[1]].checkpoint == b"x", "kept for the retry of a dead worker"
    tracker.calls.clear()
    driver.record({"run_key": keys[0], "kind": "summary", "summary": {"train_seconds": 1.0}})
    deleted = [c[1] for c in tracker.calls if c[0] == "delete_checkpoint"]
    assert deleted == ([] if keep else ["old0", "run0"])
