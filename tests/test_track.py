"""What the tracking layout puts in MLflow, read back from a real (sqlite) store: the experiment's
kind, the parent run's params, outcome metrics and description, the children's names."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from scalesweep import track
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
    tracker = track.Tracker(track.client_for(uri), SPEC.name, SPEC.experiment_name)
    tracker.log_spec("name: tracked\n", len(configs), track.sweep_params(SPEC, configs), "A test sweep.")
    child_id = tracker.start_child(configs[0])
    tracker.finish(child_id, {"final_test_acc": 1.0}, 20, 0)
    tracker.log_outcome(track.sweep_counts(tracker.child_runs(), configs), 0)

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
    again = track.Tracker(track.client_for(uri), SPEC.name, SPEC.experiment_name)
    assert again.parent_id == tracker.parent_id
    again.log_spec("name: tracked\n", 37, {**track.sweep_params(SPEC, configs), "n_runs": 37}, "A test sweep.")
    parent = client.get_run(tracker.parent_id)
    assert parent.data.params["n_runs"] == "36" and parent.data.tags["scalesweep.now.n_runs"] == "37"


def test_an_existing_experiment_gets_the_kind_unless_it_has_one(workdir, uri):
    client = MlflowClient(uri)
    old = client.create_experiment("scalesweep/old")
    mine = client.create_experiment("scalesweep/mine", tags={"mlflow.experimentKind": "finetuning"})
    assert track.ensure_experiment(client, "scalesweep/old") == old
    assert track.ensure_experiment(client, "scalesweep/mine") == mine
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(mine).tags["mlflow.experimentKind"] == "finetuning"


def test_sweep_counts_take_a_later_finish_over_an_earlier_failure():
    configs = plan(SPEC)[:4]
    k = [c.run_key for c in configs]
    children = [
        track.ChildRun("a", k[0], "FINISHED"),
        track.ChildRun("b", k[1], "FAILED"),
        track.ChildRun("c", k[1], "FINISHED"),  # rerun with --rerun-failed
        track.ChildRun("d", k[2], "FAILED"),
        track.ChildRun("e", k[3], "KILLED"),
        track.ChildRun("f", "not-planned", "FINISHED"),
    ]
    assert track.sweep_counts(children, configs) == {"planned": 4, "finished": 2, "failed": 1, "missing": 1}
