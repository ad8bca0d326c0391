"""The ledger decides, from a list of child-run records alone, each run key's state, what to run,
and which run of a key counts: pure functions, no MLflow, Ray or torch."""

from __future__ import annotations

import pandas as pd

from scalesweep.ledger import ChildRun, Ledger
from scalesweep.plan import plan
from scalesweep.spec import parse_spec
from tests.conftest import TINY_SPEC

SPEC = parse_spec(TINY_SPEC.format(name="ledger", steps=20) + "grid: {training.weight_decay: [0.1, 1.0]}\n")
CONFIGS = plan(SPEC)[:4]
KEYS = [c.run_key for c in CONFIGS]


def test_outcome_takes_a_later_finish_over_an_earlier_failure():
    children = [
        ChildRun("a", KEYS[0], "FINISHED"),
        ChildRun("b", KEYS[1], "FAILED"),
        ChildRun("c", KEYS[1], "FINISHED"),  # rerun with --rerun-failed
        ChildRun("d", KEYS[2], "FAILED"),
        ChildRun("e", KEYS[3], "KILLED"),
        ChildRun("f", "not-planned", "FINISHED"),
    ]
    assert Ledger(children).outcome(CONFIGS) == {"planned": 4, "finished": 2, "failed": 1, "missing": 1}


def test_a_finished_and_a_later_running_child_of_one_key():
    """The key is done (not run again), its finished run is the current one, and the RUNNING child
    (a dead driver's, after `run --force`) is stale: the next driver ends it."""
    children = [ChildRun("old", KEYS[0], "FINISHED", 1), ChildRun("new", KEYS[0], "RUNNING", 2)]
    ledger = Ledger(children)
    assert ledger.state(KEYS[0]).state == "finished" and ledger.state(KEYS[0]).run_id == "old"
    assert ledger.to_run(CONFIGS[:1]) == []
    assert ledger.to_run(CONFIGS[:1], force=True) == CONFIGS[:1]
    assert [c.run_id for c in ledger.stale()] == ["new"]


def test_a_running_child_alone_runs_again_and_shows_as_running():
    ledger = Ledger([ChildRun("r", KEYS[0], "RUNNING", 5)])
    assert ledger.to_run(CONFIGS[:1]) == CONFIGS[:1]
    counts, rows = ledger.status(CONFIGS[:1])
    assert counts == {"finished": 0, "failed": 0, "running": 1, "missing": 0}
    assert rows == [("running", KEYS[0], CONFIGS[0].label, "r")]


def test_failed_then_finished_is_finished_and_failed_is_skipped_unless_rerun():
    ledger = Ledger([ChildRun("f", KEYS[0], "FAILED", 1), ChildRun("ok", KEYS[0], "FINISHED", 2)])
    assert ledger.state(KEYS[0]).state == "finished"
    finished, failed = ledger.current(KEYS[:1])
    assert finished == {KEYS[0]: "ok"} and failed == {}
    only_failed = Ledger([ChildRun("f", KEYS[1], "FAILED", 1)])
    assert only_failed.to_run(CONFIGS[1:2]) == []
    assert only_failed.to_run(CONFIGS[1:2], rerun_failed=True) == CONFIGS[1:2]


def test_a_stale_key_not_in_the_plan_is_never_counted_or_shown():
    ledger = Ledger([ChildRun("x", "not-planned", "FINISHED", 1), ChildRun("y", "not-planned", "RUNNING", 2)])
    counts, rows = ledger.status(CONFIGS)
    assert counts == {"finished": 0, "failed": 0, "running": 0, "missing": 4}
    assert {row[1] for row in rows} == set(KEYS)
    assert ledger.current(KEYS) == ({}, {})
    assert ledger.to_run(CONFIGS) == CONFIGS
    assert [c.run_id for c in ledger.stale()] == ["y"]  # still ended by the next driver: it was left RUNNING


def test_the_current_run_of_a_key_is_its_latest_whatever_the_stores_order():
    """After `run --force` a key has two finished runs: the later one counts (MLflow lists newest first)."""
    newest_first = [ChildRun("second", KEYS[0], "FINISHED", 20), ChildRun("first", KEYS[0], "FINISHED", 10)]
    assert Ledger(newest_first).state(KEYS[0]).run_id == "second"
    assert Ledger(newest_first[::-1]).current(KEYS[:1])[0] == {KEYS[0]: "second"}
    two_failures = [ChildRun("f2", KEYS[1], "FAILED", 20), ChildRun("f1", KEYS[1], "FAILED", 10)]
    assert Ledger(two_failures).current(KEYS[1:2])[1] == {KEYS[1]: "f2"}


def test_killed_only_is_missing_and_runs_again():
    ledger = Ledger([ChildRun("k", KEYS[2], "KILLED", 1)])
    assert ledger.state(KEYS[2]).state == "missing" and ledger.state(KEYS[2]).run_id == ""
    assert ledger.to_run(CONFIGS[2:3]) == CONFIGS[2:3]


def test_a_ledger_from_a_runs_table():
    table = pd.DataFrame(
        dict(run_id=["a", "b"], run_key=[KEYS[0], KEYS[0]], status=["FINISHED", "FINISHED"], start_time=[2, 1])
    )
    assert Ledger.from_table(table).state(KEYS[0]).run_id == "a"
    assert Ledger.from_table(table.iloc[:0]).children == []
