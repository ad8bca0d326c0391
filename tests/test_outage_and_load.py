"""Failures around the runs, each with real processes, real Ray and real MLflow: a run that
raises and a NaN loss, the MLflow server stopped mid-sweep, and a 208-run sweep with sixteen
seed ensembles at a time on sqlite. (Processes killed: test_faults.py, whose invariant,
`assert_complete`, is checked here too.) A module of its own so that these waits (a server
restarted, a patience running out) run beside the kills rather than after them.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import (
    RAY_ENV,
    child_runs,
    fast_spec,
    free_port,
    fresh_store,
    kill_session,
    run_on,
    start_mlflow_server,
    wait_until,
    write_spec,
)
from tests.test_faults import assert_complete, start_driver

pytestmark = pytest.mark.slow


def test_a_failing_run_is_recorded_a_nan_loss_diverges_and_the_others_finish(workdir, empty_store, ray_cluster):
    # One sweep for both (a driver start costs more than these runs): fail_at_step 1000 is past the
    # last step, so those runs finish; lr 100 with SGD makes the loss NaN by the step-10 evaluation.
    grid = "grid: {training.fail_at_step: [5, 1000], training.lr: [0.01, 100]}"
    spec = write_spec(workdir, fast_spec("faulty", widths=(8,), sizes=(30,), optimizer="sgd", extra=grid))
    fresh_store(workdir, empty_store)
    result = run_on(ray_cluster, spec, cwd=workdir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "4 finished, 4 failed" in result.stdout
    assert result.stdout.count("FAILED") == 4 and "InjectedFailure" in result.stdout

    uri = f"sqlite:///{workdir}/mlflow.db"
    client = MlflowClient(uri)
    runs = child_runs(uri, "faulty")
    assert len(runs) == 8
    failed = [r for r in runs if r.info.status == "FAILED"]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert {r.data.params["fail_at_step"] for r in failed} == {"5"}
    assert {r.data.params["fail_at_step"] for r in finished} == {"1000"}
    for run in failed:
        assert "InjectedFailure" in run.data.tags["scalesweep.error"]
        traceback = Path(client.download_artifacts(run.info.run_id, "traceback.txt", str(workdir)))
        assert "Traceback" in traceback.read_text(encoding="utf-8")
        assert "fail_at_step" in traceback.read_text(encoding="utf-8")
    diverged = {r.data.params["lr"]: r.data.metrics["diverged"] for r in finished}
    assert diverged == {"0.01": 0.0, "100.0": 1.0}


def test_mlflow_server_stopped_mid_sweep(workdir, ray_cluster):
    port = free_port()
    server = start_mlflow_server(workdir, port)
    uri = f"http://127.0.0.1:{port}"
    env = {"SCALESWEEP_TRACKING_PATIENCE": "20", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", **RAY_ENV}
    spec = write_spec(workdir, fast_spec("outage", steps=3000, cpus=2))
    try:
        address = ("--address", ray_cluster.gcs)
        driver, log = start_driver(spec, workdir, "--tracking-uri", uri, *address, env=env)
        assert wait_until(lambda: child_runs(uri, "outage") or driver.poll() is not None, 180)
        assert driver.poll() is None, "the sweep ended before the server could be stopped"
        kill_session(server, signal.SIGTERM)
        assert wait_until(lambda: server.poll() is not None, 30)
        kill_session(server)
        # The outage lasts until the driver has met it (it writes rows every few seconds), no longer.
        noticed = wait_until(lambda: "unreachable" in log.read_text(encoding="utf-8") or driver.poll() is not None, 60)
        assert noticed, log.read_text(encoding="utf-8")
        server = start_mlflow_server(workdir, port)  # same port, same store
        code, output = driver.wait(timeout=400), log.read_text(encoding="utf-8")
        assert code in (0, 2), output
        assert "Traceback" not in output
        assert "unreachable" in output, "the outage is reported, not silent"
        if code == 2:
            assert "run the same command again" in output
        rerun = run_on(ray_cluster, spec, "--tracking-uri", uri, cwd=workdir, env=env)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert_complete(uri, "outage", spec, steps=3000)
    finally:
        kill_session(server)


def test_two_hundred_runs_sixteen_at_a_time_on_sqlite_lose_nothing(workdir, empty_store, ray_cluster):
    # 16 grid points x 13 seeds: 16 seed ensembles in flight at once (1/8 CPU each, two nodes), each
    # streaming its rows to the one driver writing sqlite, and 208 runs in all.
    spec = fast_spec("load", widths=(4, 5, 6, 7), sizes=(20, 25, 30, 35), seeds=13, cpus=0.125)
    spec_path = write_spec(workdir, spec)
    fresh_store(workdir, empty_store)
    result = run_on(ray_cluster, spec_path, cwd=workdir)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "database is locked" not in output.lower()
    assert "208 finished, 0 failed" in result.stdout
    runs = assert_complete(f"sqlite:///{workdir}/mlflow.db", "load", spec_path, steps=20)
    assert len(runs) == 208
