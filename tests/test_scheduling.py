"""The order a sweep's groups reach the workers: largest first, at most a cluster's worth plus one
submitted at a time (Ray itself starts queued tasks in no set order)."""

from __future__ import annotations

import pytest

from scalesweep import cluster, execute
from scalesweep.plan import group_by_stack, plan
from scalesweep.spec import load_spec
from tests.conftest import RAY_ENV, child_runs, fast_spec, fresh_store, run_on, write_spec

WIDTHS, SIZES = (4, 16, 64), (20, 40)


def _groups(folder, **options):
    spec = load_spec(write_spec(folder, fast_spec("order", widths=WIDTHS, sizes=SIZES, **options)))
    return spec, group_by_stack(plan(spec))


def _point(group) -> tuple[int, int]:
    return group[0].model_size, group[0].data_size


def test_the_largest_groups_go_first_and_ties_keep_the_plan_order(tmp_path):
    _, groups = _groups(tmp_path, seeds=2)
    ordered = execute.largest_first(groups)
    flops = [sum(c.compute for c in group) for group in ordered]
    assert flops == sorted(flops, reverse=True)
    assert sorted(map(_point, ordered)) == sorted(map(_point, groups))  # the same groups, each once
    assert _point(ordered[0]) == (64, 40) and _point(ordered[-1]) == (4, 20)
    twins = [list(groups[0]), list(groups[0])]  # equal compute: plan order kept (a stable sort)
    twins[1][0] = twins[1][0].model_copy(update={"seed": 99})
    assert [g[0].seed for g in execute.largest_first(twins)] == [twins[0][0].seed, 99]


def test_the_window_fills_the_cluster_then_keeps_one_waiting_and_is_read_again(tmp_path, monkeypatch):
    spec, groups = _groups(tmp_path, cpus=0.5)
    asked: list[tuple[float, float]] = []
    fits = {"slots": 6}
    monkeypatch.setattr(cluster, "slots", lambda cpus, gpus: asked.append((cpus, gpus)) or fits["slots"])
    window = execute.InFlightWindow(spec)
    assert window.admits(groups[0], in_flight=5, waiting=5)  # room on the cluster: always
    assert window.admits(groups[0], in_flight=6, waiting=0)  # full, all started: one may wait
    assert not window.admits(groups[0], in_flight=6, waiting=1)  # one waits already
    assert not window.admits(groups[1], in_flight=7, waiting=0)
    assert asked == [(0.5, 0.0)]  # read once while fresh
    window.REFRESH_SECONDS, fits["slots"] = 0.0, 0  # every node left: still one at a time, never none
    assert window.admits(groups[0], in_flight=0, waiting=0) and not window.admits(groups[0], 1, 1)
    assert len(asked) == 3


def test_leaving_stops_only_a_local_instance(monkeypatch):
    stopped: list[bool] = []
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(cluster.ray, "shutdown", lambda: stopped.append(True))
    monkeypatch.setattr(cluster, "_joined_by", "10.0.0.1:6379")
    cluster.leave_local()
    assert stopped == []  # a cluster joined by address stays joined for the next sweep
    monkeypatch.setattr(cluster, "_joined_by", "local")
    cluster.leave_local()
    assert stopped == [True] and cluster._joined_by is None


@pytest.mark.slow
def test_slots_count_what_each_node_fits(ray_cluster, monkeypatch):
    for name, value in RAY_ENV.items():
        monkeypatch.setenv(name, value)
    cluster.connect(ray_cluster.gcs)  # the test cluster: a head of 2 CPUs and a node of 1, no GPU
    assert cluster.slots(1, 0) == 3
    assert cluster.slots(0.5, 0) == 6
    assert cluster.slots(1.5, 0) == 1  # a task never spans nodes
    assert cluster.slots(2, 0) == 1
    assert cluster.slots(1, 1) == 0


@pytest.mark.slow
def test_a_sweep_starts_its_largest_groups_first(workdir, empty_store, ray_cluster):
    """One group at a time fits (2 CPUs each: the head only): each next group is submitted once
    the one before it started, so they start in largest-first order exactly."""
    spec_path = write_spec(workdir, fast_spec("order", widths=WIDTHS, sizes=SIZES, seeds=1, cpus=2))
    uri = fresh_store(workdir, empty_store)
    result = run_on(ray_cluster, spec_path, cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = sorted(child_runs(uri, "order"), key=lambda run: run.info.start_time)
    started = [(int(r.data.tags["scalesweep.model_size"]), int(r.data.tags["scalesweep.data_size"])) for r in runs]
    expected = [_point(g) for g in execute.largest_first(group_by_stack(plan(load_spec(spec_path))))]
    assert len(started) == len(expected) == len(WIDTHS) * len(SIZES)
    assert started == expected


@pytest.mark.slow
def test_runs_that_differ_in_lr_train_as_one_task(workdir, empty_store, ray_cluster):
    """`group_by_stack` in the driver: two learning rates x two seeds need no padding, so the four
    runs train as one vectorised model (one Ray task), and each says so."""
    extra = "grid: {training.lr: [0.01, 0.03]}"
    spec_path = write_spec(workdir, fast_spec("stacked", widths=(4,), sizes=(20,), seeds=2, extra=extra))
    uri = fresh_store(workdir, empty_store)
    result = run_on(ray_cluster, spec_path, cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = child_runs(uri, "stacked")
    assert len(runs) == 4 and {r.data.metrics["ensemble_size"] for r in runs} == {4.0}
    assert {r.data.params["lr"] for r in runs} == {"0.01", "0.03"}
