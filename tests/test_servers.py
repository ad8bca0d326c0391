"""Real services on loopback: a two-node Ray cluster (sweep by address, Ray Jobs), an
`mlflow server` over HTTP with proxied artifacts, `scalesweep ui`, and unreachable services.

The cluster is conftest's `ray_cluster`, one for the whole session (other tests' sweeps run on
it too). Every process here is started by the test in its own session and stopped by it
(`kill_session`), never with `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import (
    RAY_ENV,
    alive_nodes,
    answers,
    child_runs,
    cli,
    cli_here,
    fast_spec,
    free_port,
    fresh_store,
    kill_session,
    planned_keys,
    run_on,
    session_commands,
    spawn,
    start_mlflow_server,
    wait_until,
    write_spec,
)

pytestmark = pytest.mark.slow


def assert_all_finished(uri: str, sweep: str, spec: Path) -> list:
    runs = child_runs(uri, sweep)
    keys = [r.data.tags["scalesweep.run_key"] for r in runs]
    assert sorted(keys) == sorted(planned_keys(spec)), "one run per grid point, none missing"
    assert {r.info.status for r in runs} == {"FINISHED"}
    return runs


def test_sweep_by_address_on_a_two_node_cluster(ray_cluster, workdir, empty_store):
    spec = write_spec(workdir, fast_spec("cluster", cpus=1))
    fresh_store(workdir, empty_store)
    result = run_on(ray_cluster, spec, cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 finished, 0 failed" in result.stdout
    assert_all_finished(f"sqlite:///{workdir}/mlflow.db", "cluster", spec)
    assert alive_nodes(ray_cluster.gcs) == 2


def test_submit_runs_the_sweep_as_a_ray_job(ray_cluster, workdir, monkeypatch):
    from ray.job_submission import JobStatus, JobSubmissionClient

    spec = write_spec(workdir, fast_spec("job", widths=(4,)))
    store = f"sqlite:///{workdir / 'jobs.db'}"  # absolute: the job runs in its own working directory
    submitted = cli(
        "submit", "spec.yaml", "--address", ray_cluster.dashboard, "--tracking-uri", store, cwd=workdir, env=RAY_ENV
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = re.search(r"submitted job (\S+)", submitted.stdout).group(1)
    assert f"ray job logs --follow --address {ray_cluster.dashboard} {job_id}" in " ".join(submitted.stdout.split())

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    jobs = JobSubmissionClient(ray_cluster.dashboard)
    assert wait_until(lambda: jobs.get_job_status(job_id).is_terminal(), 300, interval=2)
    assert jobs.get_job_status(job_id) == JobStatus.SUCCEEDED, jobs.get_job_logs(job_id)[-3000:]
    assert_all_finished(store, "job", spec)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    server = start_mlflow_server(folder, port)
    yield f"http://127.0.0.1:{port}"
    kill_session(server)


def test_sweep_and_report_over_http_with_artifacts(mlflow_server, workdir, ray_cluster):
    spec = write_spec(workdir, fast_spec("http"))
    ran = run_on(ray_cluster, spec, "--tracking-uri", mlflow_server, cwd=workdir)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "View run" not in ran.stdout + ran.stderr and "View experiment" not in ran.stdout + ran.stderr
    assert "warning: axis model_size [4, 8] has 2 points" in ran.stderr  # warned, and the sweep went on
    assert "8 finished, 0 failed" in ran.stdout
    reported = cli_here("report", str(spec), "--tracking-uri", mlflow_server, cwd=workdir)
    assert reported.returncode == 0, reported.stdout + reported.stderr

    client = MlflowClient(mlflow_server)
    for run in assert_all_finished(mlflow_server, "http", spec):
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [0, 10, 20]
        assert {"final_test_acc", "n_params", "diverged"} <= set(run.data.metrics)
    experiment = client.get_experiment_by_name("scalesweep/http")
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), "artifacts go through the server"
    parent = client.search_runs([experiment.experiment_id], "tags.`scalesweep.role` = 'parent'")[0]
    assert parent.info.status == "FINISHED"
    listed = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"spec.yaml", "report"} <= listed
    spec_copy = Path(client.download_artifacts(parent.info.run_id, "spec.yaml", str(workdir)))
    assert "name: http" in spec_copy.read_text(encoding="utf-8")
    report_dir = Path(client.download_artifacts(parent.info.run_id, "report", str(workdir / "got")))
    assert "<html" in (report_dir / "report.html").read_text(encoding="utf-8").lower()
    assert not (workdir / "mlflow.db").exists(), "nothing recorded to the local default store"


@pytest.mark.parametrize("option", ["--tracking-uri", "--address"])
def test_an_unreachable_service_is_refused_before_any_run(workdir, option):
    port = free_port()  # nothing listens there
    value = f"http://127.0.0.1:{port}" if option == "--tracking-uri" else f"127.0.0.1:{port}"
    spec = write_spec(workdir, fast_spec("unreachable"))
    result = cli_here("run", str(spec), option, value, cwd=workdir, env=RAY_ENV)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    message = result.stderr.strip()
    assert message.startswith("error:") and f"127.0.0.1:{port}" in message
    assert "\n\n" not in message, "one paragraph"
    if (workdir / "mlflow.db").exists():
        assert child_runs(f"sqlite:///{workdir}/mlflow.db", "unreachable") == []


def test_ui_serves_the_store_on_loopback(workdir):
    port = free_port()
    log = workdir / "ui.log"
    ui = spawn([sys.executable, "-m", "scalesweep", "ui", "--port", str(port)], workdir, log)
    try:
        assert wait_until(lambda: answers(f"http://127.0.0.1:{port}/"), 120), log.read_text(encoding="utf-8")
        shown = f"MLflow UI on http://127.0.0.1:{port}"
        assert wait_until(lambda: shown in log.read_text(encoding="utf-8"), 10), log.read_text(encoding="utf-8")
        text = log.read_text(encoding="utf-8")
        assert text.index("starting the MLflow UI") < text.index(shown)
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert {line.split()[3] for line in listening.splitlines()} == {f"127.0.0.1:{port}"}
        # one server process: MLflow's four workers, on a busy machine, were killed by uvicorn's
        # health check in a loop and the UI never answered (CI, 2026-12-01)
        assert text.count("Started server process") == 1, text
        # nor MLflow's GenAI job runner (seven huey consumers, ~20 s of CPU): scalesweep has no such jobs
        assert wait_until(lambda: any("uvicorn" in c for c in session_commands(ui.pid)), 10)
        assert not [c for c in session_commands(ui.pid) if "huey" in c or "_job_runner" in c]
    finally:
        kill_session(ui, signal.SIGTERM)
        if not wait_until(lambda: ui.poll() is not None, 20):
            kill_session(ui)
