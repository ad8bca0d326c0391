"""Processes killed, each with real processes, real Ray and real MLflow: the driver SIGKILLed
at random moments, a store left mid-write by a killed driver, a worker killed mid-run. (Failing
runs, a stopped MLflow server and load: test_outage_and_load.py.)

The invariant checked after each: every grid point has exactly one FINISHED child run with
its whole metric history and its summaries, and nothing is left RUNNING (`assert_complete`).
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import (
    child_runs,
    clean_env,
    fast_spec,
    kill_session,
    planned_keys,
    run_on,
    spawn,
    wait_until,
    write_spec,
)

pytestmark = pytest.mark.slow

SUMMARIES = {"final_train_loss", "final_test_acc", "n_params", "diverged", "train_seconds"}


def start_driver(
    spec: Path, workdir: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, Path]:
    """`scalesweep run` in its own session, so that killing the session takes its local Ray along.
    Returns the process and the file its output goes to."""
    command = [sys.executable, "-m", "scalesweep", "run", str(spec), *args]
    log = workdir / f"driver-{time.time_ns()}.log"
    return spawn(command, workdir, log, clean_env(**(env or {}))), log


def count_children(db: Path) -> int:
    """Child runs in a sqlite store, read with sqlite itself: an MlflowClient here could race the
    driver's schema creation on a new file."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as store:
            query = "SELECT count(*) FROM tags WHERE key = 'scalesweep.role' AND value = 'child'"
            return store.execute(query).fetchone()[0]
    except sqlite3.Error:  # not created yet, or no schema yet
        return 0


def assert_complete(uri: str, sweep: str, spec: Path, steps: int, eval_every: int = 10) -> list:
    """One FINISHED child per run key, none missing, none RUNNING; each with its history and summaries.
    Returns every child run (the ended attempts included)."""
    client = MlflowClient(uri)
    runs = child_runs(uri, sweep)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    keys = sorted(r.data.tags["scalesweep.run_key"] for r in finished)
    assert keys == sorted(planned_keys(spec)), "exactly one finished run per grid point"
    assert "RUNNING" not in {r.info.status for r in runs}
    expected = list(range(0, steps + 1, eval_every))
    logged = _train_loss_steps(uri, client, [r.info.run_id for r in finished])
    for run in finished:
        assert sorted(logged[run.info.run_id]) == expected, run.data.tags["scalesweep.run_key"]
        assert set(run.data.metrics) >= SUMMARIES
    for run in runs:
        if run.info.status == "KILLED":
            assert run.data.tags.get("scalesweep.abandoned"), "an ended attempt says why"
    return runs


def _train_loss_steps(uri: str, client: MlflowClient, run_ids: list[str]) -> dict[str, list[int]]:
    """Each run's logged train_loss steps: one SQL query on an sqlite store (a 200-run sweep would
    take 200 history requests), MLflow's history API on a server."""
    steps: dict[str, list[int]] = {run_id: [] for run_id in run_ids}
    if uri.startswith("sqlite:///"):
        with sqlite3.connect(f"file:{uri.removeprefix('sqlite:///')}?mode=ro", uri=True, timeout=30) as store:
            rows = store.execute("SELECT run_uuid, step FROM metrics WHERE key = 'train_loss'").fetchall()
        for run_id, step in rows:
            if run_id in steps:
                steps[run_id].append(step)
        return steps
    return {run_id: [m.step for m in client.get_metric_history(run_id, "train_loss")] for run_id in run_ids}


def test_driver_sigkilled_at_random_moments_then_rerun(workdir, ray_cluster):
    # Six ensembles, two at a time: three waves, so that a kill a few seconds in finds work half done.
    # Long enough (5000 steps) that on an idle machine a kill a few seconds in still finds work left:
    # at 1500 steps, with a worker's first step at 3.6 s and no torch._dynamo, two trials of kills
    # 0.2 - 2 s into training could finish all twelve runs, and the rerun had nothing to resume.
    spec = write_spec(workdir, fast_spec("resume", widths=(4, 8, 16), steps=5000, cpus=1))
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for trial in range(3):
        driver, _ = start_driver(spec, workdir)
        if trial > 0:  # the first trial may die before any run starts, the later ones mid-run
            wait_until(lambda d=driver: count_children(workdir / "mlflow.db") > 0 or d.poll() is not None, 120)
        time.sleep(rng.uniform(0.2, 2.0))
        kill_session(driver)
    rerun = run_on(ray_cluster, spec, cwd=workdir)  # where it trains is not what is tested
    assert rerun.returncode == 0, f"random seed {seed}\n{rerun.stdout}{rerun.stderr}"
    assert " 0 finished" not in rerun.stdout, f"random seed {seed}: the kills left nothing to resume"
    assert_complete(f"sqlite:///{workdir}/mlflow.db", "resume", spec, steps=5000)


# A process killed inside an sqlite write transaction, after the page cache spilled to the file:
# it leaves a *hot* rollback journal (mlflow.db-journal), as a driver SIGKILLed mid-write does.
KILLED_MID_WRITE = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size = 1")
db.execute("BEGIN IMMEDIATE")
db.execute("CREATE TABLE scratch (blob)")
db.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) "
           "INSERT INTO scratch SELECT randomblob(2000) FROM n")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_store_left_mid_write_by_a_killed_driver_is_resumed(workdir, ray_cluster):
    uri = f"sqlite:///{workdir}/mlflow.db"
    MlflowClient(uri).create_experiment("made before the crash")
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(workdir / "mlflow.db")], check=False)
    assert killed.returncode == -signal.SIGKILL and (workdir / "mlflow.db-journal").exists()
    spec = write_spec(workdir, fast_spec("journal", widths=(4,), sizes=(20,)))
    result = run_on(ray_cluster, spec, cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_complete(uri, "journal", spec, steps=20)
    assert MlflowClient(uri).get_experiment_by_name("made before the crash") is not None


def _train_task_worker(driver: subprocess.Popen) -> int | None:
    """The pid of a Ray worker of this driver's local Ray that is running `train_task`."""
    listing = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        pid, sid, args = line.split(maxsplit=2)
        if int(sid) == driver.pid and "train_task" in args:
            return int(pid)
    return None


def test_a_killed_worker_is_retried_and_the_sweep_completes(workdir):
    spec = write_spec(workdir, fast_spec("worker", widths=(8,), sizes=(30,), steps=4000, cpus=1))
    driver, log = start_driver(spec, workdir)
    assert wait_until(lambda: _train_task_worker(driver) or driver.poll() is not None, 180, 0.2)
    worker = _train_task_worker(driver)
    assert driver.poll() is None and worker, "the sweep ended before its worker could be killed"
    subprocess.run(["kill", "-9", str(worker)], check=True)
    assert driver.wait(timeout=400) == 0, log.read_text(encoding="utf-8")
    runs = assert_complete(f"sqlite:///{workdir}/mlflow.db", "worker", spec, steps=4000)
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert len(killed) == 2, "both seeds of the ensemble lost their first attempt"
    assert all("worker died" in r.data.tags["scalesweep.abandoned"] for r in killed)
