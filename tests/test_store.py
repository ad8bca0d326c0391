"""What the tracking layout puts in MLflow, read back from a real (sqlite) store: the experiment's
kind, the parent run's params, outcome metrics and description, the children's names."""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient

from scalesweep import store
from scalesweep.ledger import Ledger
from scalesweep.plan import plan
from scalesweep.spec import parse_spec
from tests.conftest import TINY_SPEC, fresh_store

SPEC = parse_spec(
    TINY_SPEC.format(name="tracked", steps=20).replace("name: tracked", "name: tracked\ndescription: A test sweep.")
    + "grid: {training.weight_decay: [0.1, 1.0]}\n"
)


@pytest.fixture(scope="module")
def uri(tmp_path_factory, empty_store) -> str:
    """One sqlite store for the tests of this file (a copy of the session's empty one)."""
    return fresh_store(tmp_path_factory.mktemp("store"), empty_store)


def test_experiment_parent_params_outcome_and_description_read_back(workdir, uri):
    configs = plan(SPEC)
    tracker = store.Tracker(store.client_for(uri), SPEC.name, SPEC.experiment_name)
    tracker.log_spec("name: tracked\n", len(configs), store.sweep_params(SPEC, configs), "A test sweep.")
    child_id = tracker.start_child(configs[0])
    tracker.finish(child_id, {"final_test_acc": 1.0}, 20, 0)
    tracker.log_outcome(Ledger(tracker.child_runs()).outcome(configs), 0)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("scalesweep/tracked")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the runs table
    parent = client.get_run(tracker.parent_id)
    assert parent.data.tags["mlflow.note.content"] == "A test sweep."
    params = parent.data.params
    assert params["axes.model_size"] == "[8, 16, 32]" and params["axes.data_size"] == "[30, 60, 120]"
    assert params["axes.seeds"] == "[0, 1]" and params["grid.training.weight_decay"] == "[0.1, 1.0]"
    assert (params["n_model_sizes"], params["n_data_sizes"], params["n_seeds"], params["n_runs"]) == (
        "3", "3", "2", "36",
    )  # fmt: skip
    assert params["task"] == "modular_arithmetic" and params["design"] == "grid"
    metrics = parent.data.metrics
    assert metrics == {"runs_planned": 36, "runs_finished": 1, "runs_failed": 0, "runs_missing": 35}
    child = client.get_run(child_id)
    assert child.info.run_name == "seed=0 w=8 n=30 weight_decay=0.1"  # the seed first: never cut off

    # The same sweep again, one run more (as after `scalesweep refine`): params stay, the new count is a tag.
    again = store.Tracker(store.client_for(uri), SPEC.name, SPEC.experiment_name)
    assert again.parent_id == tracker.parent_id
    again.log_spec("name: tracked\n", 37, {**store.sweep_params(SPEC, configs), "n_runs": 37}, "A test sweep.")
    parent = client.get_run(tracker.parent_id)
    assert parent.data.params["n_runs"] == "36" and parent.data.tags["scalesweep.now.n_runs"] == "37"


def test_an_existing_experiment_gets_the_kind_unless_it_has_one(workdir, uri):
    client = MlflowClient(uri)
    old = client.create_experiment("scalesweep/old")
    mine = client.create_experiment("scalesweep/mine", tags={"mlflow.experimentKind": "finetuning"})
    assert store.ensure_experiment(client, "scalesweep/old") == old
    assert store.ensure_experiment(client, "scalesweep/mine") == mine
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(mine).tags["mlflow.experimentKind"] == "finetuning"


def test_the_report_is_logged_through_the_writers_patience(workdir, uri, tmp_path):
    """`report` logs what it wrote (not whatever else --out holds) to the parent run, every call
    through `Tracker._call` (so a lost server is waited out, as for every other write)."""
    out = tmp_path / "report"
    (out / "figures").mkdir(parents=True)
    for name in ("report.html", "verdicts.csv", "notes.txt"):
        (out / name).write_text(name, encoding="utf-8")
    (out / "figures" / "a.png").write_bytes(b"png")
    tracker = store.Tracker(store.client_for(uri), "reported", "scalesweep/reported")
    called, original = [], tracker._call
    tracker._call = lambda fn, *args, **kwargs: called.append(fn.__name__) or original(fn, *args, **kwargs)
    tracker.log_report(out)
    assert called == ["log_artifact", "log_artifact", "log_artifacts"]
    logged = {a.path for a in MlflowClient(uri).list_artifacts(tracker.parent_id, "report")}
    assert logged == {"report/report.html", "report/verdicts.csv", "report/figures"}


def test_child_runs_are_ledger_records_and_an_absent_experiment_has_none(workdir, uri):
    client = store.client_for(uri, create=False)
    assert store.experiment_named(client, "scalesweep/never-made") is None
    assert store.child_runs(client, "never-made", None) == []
    tracker = store.Tracker(client, "ledgered", "scalesweep/ledgered")
    run_id = tracker.start_child(plan(SPEC)[0])
    (child,) = store.child_runs(client, "ledgered", store.experiment_named(client, "scalesweep/ledgered"))
    assert (child.run_id, child.run_key, child.status) == (run_id, plan(SPEC)[0].run_key, "RUNNING")
    assert child.start_time > 0 and tracker.child_runs() == [child]


def test_the_runs_table_is_in_run_key_order_whatever_order_the_runs_started_in(workdir, uri):
    """Verdict confidences come from bootstraps over the table's rows, so two sweeps that trained
    the same runs must read the same table: rows by run key (then start), not by start time."""
    configs = plan(SPEC)[:6]
    tracker = store.Tracker(store.client_for(uri), "ordered", "scalesweep/ordered")
    by_key = sorted(configs, key=lambda c: c.run_key)
    for i in (2, 5, 0, 3, 1, 4):  # started in neither key order nor its reverse, a millisecond apart
        tracker.finish(tracker.start_child(by_key[i]), {"final_test_acc": 0.5}, 20, 0)
        time.sleep(0.002)
    table = store.runs_table("ordered", "scalesweep/ordered", uri)
    assert list(table["run_key"]) == sorted(c.run_key for c in configs)


def test_a_new_sqlite_store_is_a_copy_of_the_cached_schema_and_a_bad_cache_is_not_used(tmp_path, monkeypatch):
    """A new store starts as a copy of the empty schema this MLflow version made once (cached under
    XDG_CACHE_HOME), its Default experiment's folder where MLflow would put it; a cache that is
    not an MLflow schema, or of another schema revision, is dropped and MLflow makes the store."""
    import sqlite3

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    first = store.client_for(f"sqlite:///{tmp_path / 'first.db'}")  # made by MLflow, then cached
    cache = store.schema_cache()
    assert cache.is_file() and first.search_experiments()

    copied = store.client_for(f"sqlite:///{tmp_path / 'copied.db'}")
    assert copied.get_experiment("0").artifact_location == str(tmp_path / "mlruns" / "0")
    experiment = store.ensure_experiment(copied, "scalesweep/x")
    copied.create_run(experiment)
    assert len(copied.search_runs([experiment])) == 1
    assert not list(tmp_path.glob(".*.partial"))

    cache.write_bytes(b"not a database")
    corrupt = store.client_for(f"sqlite:///{tmp_path / 'after_corrupt.db'}")
    assert corrupt.search_experiments() and cache.is_file()  # made by MLflow, cached again

    with sqlite3.connect(cache) as con:
        con.execute("UPDATE alembic_version SET version_num = '0584bdc529eb'")  # an older revision
    older = store.client_for(f"sqlite:///{tmp_path / 'after_older.db'}")
    experiment = store.ensure_experiment(older, "scalesweep/y")
    assert older.create_run(experiment).info.run_id
    with sqlite3.connect(cache) as con:
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] != "0584bdc529eb"
