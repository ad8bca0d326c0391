"""One driver per sweep: the lease on the parent run.

Before the lease, `scalesweep run q.yaml & sleep 12; scalesweep run q.yaml` gave two drivers that
both said "18 runs to do" and both exited 0, and the store ended with every key FINISHED twice.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
from mlflow.tracking import MlflowClient

from scalesweep import lease, store
from scalesweep.lease import Lease
from tests.conftest import (
    RAY_ENV,
    child_runs,
    cli_here,
    fast_spec,
    fresh_store,
    kill_session,
    run_on,
    wait_until,
    write_spec,
)
from tests.test_faults import assert_complete, start_driver

# ---------------------------------------------------------------- the lease itself (pure)


def test_a_lease_survives_its_tags_and_a_handed_back_one_is_none():
    mine = Lease.mine(now=1000.0)
    assert Lease.from_tags(mine.tags()) == mine
    assert Lease.from_tags({**mine.tags(), **lease.RELEASED}) is None
    assert Lease.from_tags({}) is None
    assert Lease.from_tags({**mine.tags(), f"{lease.PREFIX}.pid": "not a pid"}) is None


def test_a_lease_lives_while_its_heartbeat_is_fresh_and_its_local_pid_runs():
    now = time.time()
    here = Lease(socket.gethostname(), os.getpid(), "t", now - 100, now - 1)
    assert here.alive(now)
    assert not here.beat(now - lease.TTL_SECONDS - 1).alive(now)  # the heartbeat stopped
    dead_pid = Lease(socket.gethostname(), _a_dead_pid(), "t", now - 100, now - 1)
    assert not dead_pid.alive(now)  # killed on this host: over at once
    elsewhere = Lease("another-host", _a_dead_pid(), "t", now - 100, now - 1)
    assert elsewhere.alive(now)  # another host's PID says nothing here: only the heartbeat counts
    assert not elsewhere.beat(now - lease.TTL_SECONDS - 1).alive(now)


def _a_dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


# ---------------------------------------------------------------- drivers against a real store


def _parent(uri: str, sweep: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(f"scalesweep/{sweep}")
    query = f"tags.`scalesweep.role` = 'parent' and tags.`scalesweep.sweep` = '{sweep}'"
    return client, client.search_runs([experiment.experiment_id], query)[0]


def _plant(uri: str, sweep: str, held: Lease) -> None:
    """A lease of someone else's on the sweep's parent run (made by a Tracker, as a driver makes it)."""
    client = MlflowClient(uri)
    store.Tracker(client, sweep, f"scalesweep/{sweep}")
    client, parent = _parent(uri, sweep)
    for key, value in held.tags().items():
        client.set_tag(parent.info.run_id, key, value)


def test_a_live_lease_of_another_host_refuses_a_second_driver_before_anything_runs(workdir, empty_store):
    spec = write_spec(workdir, fast_spec("held"))
    uri = fresh_store(workdir, empty_store)
    now = time.time()
    _plant(uri, "held", Lease("gpu-box-7", 4242, "theirs", now - 600, now))
    result = cli_here("run", str(spec), cwd=workdir)
    text = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, text
    assert "Traceback" not in text
    assert "already being run by another driver" in text and "gpu-box-7" in text and "PID 4242" in text
    assert child_runs(uri, "held") == []  # nothing ran
    status = cli_here("status", str(spec), cwd=workdir)
    assert "running now: the driver on host gpu-box-7, PID 4242, since" in " ".join(status.stdout.split())
    _, parent = _parent(uri, "held")
    assert parent.data.tags[f"{lease.PREFIX}.token"] == "theirs"  # the holder's lease is left alone


def test_a_store_lock_is_one_drivers_until_released(tmp_path):
    store_file = tmp_path / "mlflow.db"
    first, second = lease.StoreLock(store_file, "s"), lease.StoreLock(store_file, "s")
    assert first.acquire() is True
    assert second.acquire() is False  # flock: refused even within one process
    assert lease.StoreLock(store_file, "another sweep").acquire() is True
    assert lease.StoreLock(tmp_path / "other.db", "s").acquire() is True
    first.release()
    assert second.acquire() is True
    (tmp_path / "a file").write_text("")
    assert lease.StoreLock(tmp_path / "a file" / "mlflow.db", "s").acquire() is None  # no folder: no say


def _settles(monkeypatch) -> list[float]:
    """The settle waits the lease makes from now on (recorded, not slept)."""
    waits: list[float] = []
    monkeypatch.setattr(lease, "settle", lambda: waits.append(lease.SETTLE_SECONDS))
    return waits


def test_on_sqlite_the_store_lock_decides_at_once(workdir, empty_store, monkeypatch):
    uri = fresh_store(workdir, empty_store)
    first = store.Tracker(MlflowClient(uri), "locked", "scalesweep/locked")
    second = store.Tracker(MlflowClient(uri), "locked", "scalesweep/locked")
    waits = _settles(monkeypatch)
    mine = first.take_lease()
    try:
        with pytest.raises(lease.SweepBusy, match=f"PID {os.getpid()}"):
            second.take_lease()
    finally:
        first.release_lease()
    assert waits == []  # no settle: the OS lock said who was first
    assert second.take_lease().token != mine.token  # handed back: the next driver takes it
    second.release_lease()


def test_where_no_lock_file_can_be_made_the_settle_decides(workdir, empty_store, monkeypatch):
    uri = fresh_store(workdir, empty_store)
    monkeypatch.setattr(lease.StoreLock, "acquire", lambda self: None)
    tracker = store.Tracker(MlflowClient(uri), "unlocked", "scalesweep/unlocked")
    waits = _settles(monkeypatch)
    tracker.take_lease()
    tracker.release_lease()
    assert waits == [lease.SETTLE_SECONDS]


def _on(cluster) -> tuple[str, ...]:
    """Run on the session's Ray cluster."""
    return ("--address", cluster.gcs)


@pytest.mark.slow
def test_a_stale_lease_of_another_host_is_taken_over(workdir, empty_store, ray_cluster):
    spec = write_spec(workdir, fast_spec("stale", widths=(4,), sizes=(20,)))
    uri = fresh_store(workdir, empty_store)
    long_ago = time.time() - 10 * lease.TTL_SECONDS
    _plant(uri, "stale", Lease("gpu-box-7", 4242, "theirs", long_ago, long_ago))
    result = run_on(ray_cluster, spec, cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_complete(uri, "stale", spec, steps=20)
    _, parent = _parent(uri, "stale")
    assert Lease.from_tags(parent.data.tags) is None  # handed back at the end


# Sweeps of the drivers below run on the session's Ray cluster: the lease is the driver's, not Ray's,
# and a local Ray per driver would cost seconds of CPU each. The tests wait on events (the first
# driver's "runs to do", a stopped process); 2000 steps so that a driver is still at work when the
# test acts on the event it waited for (at 300 steps a warm worker could finish the sweep first).
SHORT = dict(widths=(4, 8), sizes=(20, 30), steps=2000, cpus=1)


@pytest.mark.slow
def test_two_drivers_on_one_sweep_train_each_run_once(workdir, empty_store, ray_cluster):
    spec = write_spec(workdir, fast_spec("twice", **SHORT))
    fresh_store(workdir, empty_store)
    first, first_log = start_driver(spec, workdir, *_on(ray_cluster), env=RAY_ENV)
    try:
        assert wait_until(lambda: "runs to do" in first_log.read_text() or first.poll() is not None, 180)
        os.kill(first.pid, signal.SIGSTOP)  # the first driver stays at work, however fast its runs train
        try:
            assert first.poll() is None, first_log.read_text()
            second = run_on(ray_cluster, spec, cwd=workdir)  # in this test process, another PID
        finally:
            os.kill(first.pid, signal.SIGCONT)
        text = " ".join((second.stdout + second.stderr).split())
        assert second.returncode == 2, text
        assert "already being run by another driver" in text and f"PID {first.pid}" in text
        first.wait(timeout=400)
    finally:
        kill_session(first)
    assert first.returncode == 0, first_log.read_text()
    runs = assert_complete(f"sqlite:///{workdir}/mlflow.db", "twice", spec, steps=SHORT["steps"])
    assert len(runs) == len({r.data.tags["scalesweep.run_key"] for r in runs})  # no key trained twice


@pytest.mark.slow
def test_two_drivers_started_together_train_each_run_once(workdir, ray_cluster):
    # on a new store: both drivers create it at once (its schema is made under a lock, store.py)
    spec = write_spec(workdir, fast_spec("together", **SHORT))
    drivers = [start_driver(spec, workdir, *_on(ray_cluster), env=RAY_ENV) for _ in range(2)]
    try:
        for driver, _ in drivers:
            driver.wait(timeout=500)
    finally:
        for driver, _ in drivers:
            kill_session(driver)
    codes = sorted(driver.returncode for driver, _ in drivers)
    logs = "\n".join(log.read_text() for _, log in drivers)
    assert codes == [0, 2], logs
    assert "already being run by another driver" in logs
    runs = assert_complete(f"sqlite:///{workdir}/mlflow.db", "together", spec, steps=SHORT["steps"])
    assert len(runs) == len({r.data.tags["scalesweep.run_key"] for r in runs})


@pytest.mark.slow
def test_a_driver_killed_while_holding_the_lease_does_not_block_the_rerun(workdir, empty_store, ray_cluster):
    spec = write_spec(workdir, fast_spec("killed", **SHORT))
    fresh_store(workdir, empty_store)
    driver, log = start_driver(spec, workdir, *_on(ray_cluster), env=RAY_ENV)
    try:
        assert wait_until(lambda: "runs to do" in log.read_text() or driver.poll() is not None, 180)
    finally:
        kill_session(driver, signal.SIGKILL)
    _, parent = _parent(f"sqlite:///{workdir}/mlflow.db", "killed")
    assert Lease.from_tags(parent.data.tags) is not None  # left behind by the kill
    rerun = run_on(ray_cluster, spec, cwd=workdir)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_complete(f"sqlite:///{workdir}/mlflow.db", "killed", spec, steps=SHORT["steps"])
