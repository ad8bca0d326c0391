"""Real services on loopback: a two-node Ray cluster (sweep by address, Ray Jobs), an
`mlflow server` over HTTP with proxied artifacts, `scalesweep ui`, and unreachable services.

Every process here is started by the test in its own session and stopped by it
(`kill_session`), never with `ray stop`, which would stop every Ray on the machine.
Ray 2.60 turns token authentication on for a new head when ~/.ray/auth_token exists,
and a worker node started by `ray start --address` does not send the token, so the
cluster and its clients run with RAY_AUTH_MODE=disabled (a loopback-only test cluster).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import (
    answers,
    child_runs,
    clean_env,
    cli,
    fast_spec,
    free_port,
    kill_session,
    planned_keys,
    spawn,
    start_mlflow_server,
    wait_until,
    write_spec,
)

pytestmark = pytest.mark.slow

RAY_ENV = {"RAY_AUTH_MODE": "disabled"}


@dataclass
class Cluster:
    gcs: str  # host:port, for --address
    dashboard: str  # http://host:port, for the Jobs API


def _node_ports() -> list[str]:
    """Every port a node listens on, chosen free: two nodes share this machine (and other engineers' Rays)."""
    names = ["node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc", "runtime-env-agent"]
    names.append("metrics-export")
    return [arg for name in names for arg in (f"--{name}-port", str(free_port()))]


def alive_nodes(gcs: str) -> int:
    """Alive nodes as `ray status` lists them (one ` 1 node_<id>` line each under Active)."""
    status = subprocess.run(
        ["ray", "status", "--address", gcs], capture_output=True, text=True, env=clean_env(**RAY_ENV), timeout=60
    )
    active = status.stdout.partition("Active:")[2].partition("Pending:")[0]
    return len(re.findall(r"^\s*\d+ node_", active, flags=re.MULTILINE))


@pytest.fixture(scope="module")
def ray_cluster():
    """A head (2 CPUs, dashboard) and a worker node (1 CPU) on 127.0.0.1, stopped afterwards."""
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit in 107 chars
    gcs, dashboard = free_port(), free_port()
    env = clean_env(**RAY_ENV)
    head_args = ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs)]
    head_args += ["--num-cpus", "2", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1"]
    head_args += ["--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port())]
    head_args += ["--temp-dir", str(temp), "--disable-usage-stats", *_node_ports()]
    worker_args = ["ray", "start", "--block", "--address", f"127.0.0.1:{gcs}", "--num-cpus", "1"]
    worker_args += ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", *_node_ports()]
    nodes = [spawn(head_args, temp, temp / "head.log", env)]
    try:
        assert wait_until(lambda: answers(f"http://127.0.0.1:{dashboard}/api/version"), 180), "no Ray dashboard"
        nodes.append(spawn(worker_args, temp, temp / "worker.log", env))
        assert wait_until(lambda: alive_nodes(f"127.0.0.1:{gcs}") == 2, 180, interval=2), "no second node"
        yield Cluster(gcs=f"127.0.0.1:{gcs}", dashboard=f"http://127.0.0.1:{dashboard}")
    finally:
        for node in reversed(nodes):
            kill_session(node, signal.SIGTERM)
        wait_until(lambda: all(node.poll() is not None for node in nodes), 10)  # a node drains for up to 30 s
        for node in nodes:
            kill_session(node)
        shutil.rmtree(temp, ignore_errors=True)


def assert_all_finished(uri: str, sweep: str, spec: Path) -> list:
    runs = child_runs(uri, sweep)
    keys = [r.data.tags["scalesweep.run_key"] for r in runs]
    assert sorted(keys) == sorted(planned_keys(spec)), "one run per grid point, none missing"
    assert {r.info.status for r in runs} == {"FINISHED"}
    return runs


def test_sweep_by_address_on_a_two_node_cluster(ray_cluster, workdir):
    spec = write_spec(workdir, fast_spec("cluster", cpus=1))
    result = cli("run", str(spec), "--address", ray_cluster.gcs, cwd=workdir, env=RAY_ENV, timeout=300)
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


def test_sweep_and_report_over_http_with_artifacts(mlflow_server, workdir):
    spec = write_spec(workdir, fast_spec("http"))
    ran = cli("run", str(spec), "--tracking-uri", mlflow_server, cwd=workdir, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "View run" not in ran.stdout + ran.stderr and "View experiment" not in ran.stdout + ran.stderr
    assert "warning: axis model_size [4, 8] has 2 points" in ran.stderr  # warned, and the sweep went on
    assert "8 finished, 0 failed" in ran.stdout
    reported = cli("report", str(spec), "--tracking-uri", mlflow_server, cwd=workdir, timeout=300)
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
    result = cli("run", str(spec), option, value, cwd=workdir, env=RAY_ENV, timeout=60)
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
    finally:
        kill_session(ui, signal.SIGTERM)
        if not wait_until(lambda: ui.poll() is not None, 20):
            kill_session(ui)
