"""Shared fixtures: specs written to temporary folders, and a clean working dir."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

# One torch thread in the test processes and everything they start (a user's setting wins): the
# models here are tiny, and on a loaded 2-core machine a second thread only spin-waits for a core
# (an optimiser step 50 ms instead of 0.1 ms), so the in-process training tests would slow down
# most exactly when the suite runs its sweeps beside them. Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

TINY_SPEC = """
name: {name}
task:
  name: modular_arithmetic
  params: {{p: 11, op: "+"}}
model:
  family: mlp
  params: {{depth: 1, embed_dim: 8}}
axes:
  model_size: [8, 16, 32]
  data_size: [30, 60, 120]
  seeds: 2
training:
  steps: {steps}
  batch_size: 128
  lr: 0.01
  weight_decay: 1.0
  eval_every: 10
phenomena:
  - name: grokking
    params: {{gap: 20}}
  - generalization_gap
"""


# A grokking spec with explicit observables and phenomena, for tests that edit those lists
# (the first quickstart; sweeps/quickstart.yaml itself changes with the study's design).
GROKKING_SPEC = """
name: quickstart
description: >
  Modular addition mod 31 with a small MLP. Does the grokking delay, and the
  phase a run ends in, change with width and with the number of training pairs?
task:
  name: modular_arithmetic
  params: {p: 31, op: "+"}
model:
  family: mlp
  params: {depth: 1, embed_dim: 16}
axes:
  model_size: [32, 64, 128]      # hidden width (4x span)
  data_size: [200, 400, 800]     # training pairs out of 961 (4x span)
  seeds: 2
training:
  steps: 2000
  batch_size: 512
  optimizer: adamw
  lr: 0.01
  weight_decay: 1.0
  eval_every: 25
observables: [loss, accuracy, fit_steps, weight_norm, grad_norm, loss_spikes]
phenomena:
  - name: grokking
    params: {gap: 150}
  - generalization_gap
"""


def write_spec(folder: Path, text: str, filename: str = "spec.yaml") -> Path:
    path = folder / filename
    path.write_text(text, encoding="utf-8")
    return path


# The services of the shell the tests run from, which no test inherits: each names its own.
SHELL_SERVICES = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")


@pytest.fixture
def tiny_spec_text() -> str:
    return TINY_SPEC.format(name="tiny", steps=60)


@pytest.fixture(autouse=True)
def no_background_ray_in_this_process(monkeypatch) -> None:
    """`run` without an address begins a local Ray instance in the background before it checks
    the store (`cluster.start_local`, a head start). A process ends with its command; this one
    does not: a `run` invoked here that refuses bad input would leave a local Ray instance and
    its thread behind, under the later tests' sweeps (`run_on`, which join the session's
    cluster). So not in the test processes; a run that goes on joins Ray in `connect`, as it
    does when the head start failed."""
    monkeypatch.setattr("scalesweep.cluster.start_local", lambda then=None: None)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run in an empty folder, with no tracking or Ray address from the environment."""
    monkeypatch.chdir(tmp_path)
    for name in SHELL_SERVICES:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m scalesweep ARGS` as a user would, capturing its output."""
    full_env = {k: v for k, v in os.environ.items() if k not in SHELL_SERVICES}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "scalesweep", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------- servers and processes on loopback


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; returns whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def answers(url: str) -> bool:
    """Whether GET url returns 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process, without a tracking store or Ray address of our own shell."""
    env = {k: v for k, v in os.environ.items() if k not in SHELL_SERVICES}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def spawn(args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a process in its own session (so that it and everything it starts can be killed together)."""
    handle = log.open("w", encoding="utf-8")
    return subprocess.Popen(
        args, cwd=cwd, env=env or clean_env(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )


def kill_session(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal every process of `process`'s session: the ones this test started, nothing else."""
    _signal_session(process.pid, sig)
    if sig == signal.SIGKILL:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port, sqlite backend and proxied artifacts under `folder`."""
    args = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--backend-store-uri", f"sqlite:///{folder}/m.db", "--artifacts-destination", str(folder / "art")]
    args += ["--workers", "1"]
    from scalesweep.store import SERVER_ENVIRONMENT  # as `scalesweep ui` starts one: no GenAI job runner

    server = spawn(args, folder, folder / f"mlflow-server-{time.time_ns()}.log", clean_env(**SERVER_ENVIRONMENT))
    if not wait_until(lambda: answers(f"http://127.0.0.1:{port}/health") or server.poll() is not None, 120):
        kill_session(server)
        raise RuntimeError(f"mlflow server on port {port} did not answer in 120 s")
    if server.poll() is not None:
        raise RuntimeError(f"mlflow server exited with {server.returncode}; see {folder}")
    return server


# ---------------------------------------------------------------- services shared by the tests of a session

RAY_ENV = {"RAY_AUTH_MODE": "disabled"}  # see Cluster: a loopback-only test cluster


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its tables and nothing else. A new store costs MLflow seconds
    of schema migrations; a test that copies this one into its folder (`fresh_store`) does not."""
    from mlflow.tracking import MlflowClient

    store = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{store}").search_experiments()  # creates the tables
    return store


def fresh_store(folder: Path, empty_store: Path) -> str:
    """A copy of the empty store as `folder`/mlflow.db (the default store of a CLI run there); its URI."""
    shutil.copy(empty_store, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


@dataclass
class Cluster:
    gcs: str  # host:port, for --address
    dashboard: str  # http://host:port, for the Jobs API


# What no test reads, not started on the test cluster's nodes: the log monitor (it forwards
# workers' output to drivers, which run with log_to_driver=False; ~15 s of CPU over a test run).
NODE_OPTIONS = ["--include-log-monitor", "false"]


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


# One Ray cluster for the whole test run, shared by its xdist workers: the first worker that asks
# starts it (under a lock) and records it in the run's folder; the others join it; the controller
# stops it when the run ends (`pytest_unconfigure`). A cluster costs seconds of CPU to start.
RUN_FOLDER = "SCALESWEEP_TEST_RUN_FOLDER"  # made by the controller, inherited by its xdist workers


def pytest_configure(config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or the only process, without xdist)
        os.environ[RUN_FOLDER] = tempfile.mkdtemp(prefix="scalesweep-tests-")


def pytest_collection_modifyitems(config, items) -> None:
    """The slow tests first (stable otherwise): they wait most (on servers, drivers, kills), so
    they start while the quick ones can still fill the cores beside them. xdist hands out whole
    modules in this order (`--dist loadscope --no-loadscope-reorder` in pyproject.toml); its
    default order, most tests first, left the few-test slow modules for last, alone on the
    machine at the end of the run."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_unconfigure(config) -> None:
    if hasattr(config, "workerinput") or RUN_FOLDER not in os.environ:
        return
    folder = Path(os.environ.pop(RUN_FOLDER))
    record = folder / "ray-cluster.json"
    if record.exists():
        _stop_cluster(json.loads(record.read_text(encoding="utf-8")))
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster() -> Cluster:
    """One Ray cluster for the test run: a head (2 CPUs, dashboard) and a worker node (1 CPU) on
    127.0.0.1. Sweeps that need only "a Ray" run on it by --address (each CLI run would otherwise
    start and stop a local instance, seconds each); tests that kill a driver with its local Ray, or
    test the local default itself, keep their own."""
    folder = Path(os.environ[RUN_FOLDER])
    record = folder / "ray-cluster.json"
    with (folder / "ray-cluster.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            record.write_text(json.dumps(_start_cluster()), encoding="utf-8")
        started = json.loads(record.read_text(encoding="utf-8"))
    return Cluster(gcs=started["gcs"], dashboard=started["dashboard"])


# Idle workers a node keeps (Ray's `num_workers_soft_limit`, by default its CPU count; the
# others are stopped after a second idle). A worker belongs to one Ray job, and each test process
# is one job (`run_on`) beside the sweeps' own drivers: with three for the whole cluster, one job's
# next sweep mostly met new workers, each importing torch again (~3 s of CPU). With eight: 65
# worker processes over a test run instead of 109, and the suite 6:49 instead of 10:25 on 2 cores.
WARM_WORKERS = {"RAY_num_workers_soft_limit": "8"}


def _start_cluster() -> dict:
    """Start the head and a worker node, each in its own session; what `_stop_cluster` needs.

    Every process here is started in its own session and stopped by signalling those sessions,
    never with `ray stop`, which would stop every Ray on the machine. Ray 2.60 turns token
    authentication on for a new head when ~/.ray/auth_token exists, and a worker node started by
    `ray start --address` does not send the token, so the cluster and its clients run with
    RAY_AUTH_MODE=disabled (RAY_ENV)."""
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit in 107 chars
    gcs, dashboard = free_port(), free_port()
    env = clean_env(**RAY_ENV, **WARM_WORKERS)
    head_args = ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs)]
    head_args += ["--num-cpus", "2", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1"]
    head_args += ["--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port())]
    head_args += ["--temp-dir", str(temp), "--disable-usage-stats", *NODE_OPTIONS, *_node_ports()]
    worker_args = ["ray", "start", "--block", "--address", f"127.0.0.1:{gcs}", "--num-cpus", "1"]
    worker_args += ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", *NODE_OPTIONS, *_node_ports()]
    nodes = [spawn(head_args, temp, temp / "head.log", env)]
    started = {"gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dashboard}", "temp": str(temp)}
    try:
        assert wait_until(lambda: answers(f"{started['dashboard']}/api/version"), 180), "no Ray dashboard"
        nodes.append(spawn(worker_args, temp, temp / "worker.log", env))
        assert wait_until(lambda: alive_nodes(started["gcs"]) == 2, 180, interval=1), "no second node"
    except BaseException:
        _stop_cluster({**started, "sessions": [node.pid for node in nodes]})
        raise
    return {**started, "sessions": [node.pid for node in nodes]}


def _stop_cluster(started: dict) -> None:
    """SIGTERM every process of the nodes' sessions; a node drains for up to 30 s, but the run's
    work is done, so after 3 s SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for session in reversed(started["sessions"]):
            _signal_session(session, sig)
        if sig == signal.SIGTERM:
            wait_until(lambda: not any(_session_pids(s) for s in started["sessions"]), 3, interval=0.2)
    shutil.rmtree(started["temp"], ignore_errors=True)


def _session_pids(sid: int) -> list[int]:
    listing = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid, s in zip(listing[::2], listing[1::2], strict=True) if int(s) == sid]


def session_commands(sid: int) -> list[str]:
    """The command lines of the processes of session `sid` (those a `spawn`ed process started)."""
    commands = []
    for pid in _session_pids(sid):
        with contextlib.suppress(OSError):
            commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return commands


def _signal_session(sid: int, sig: int) -> None:
    for pid in _session_pids(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@dataclass
class Ran:
    """What a command said and its exit status, as `subprocess.CompletedProcess` has them."""

    returncode: int
    stdout: str
    stderr: str


def cli_here(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Ran:
    """`scalesweep ARGS` run in this test process (typer's runner), in `cwd`, without a tracking
    store or Ray address of our own shell: for tests of what a command does, not of its process.

    Why: a `scalesweep` process imports MLflow, Ray and the analysis again (seconds of CPU), and on
    a cluster it is a new Ray job, whose workers import torch again (~2.4 s each); in this process
    the imports are paid once, and the Ray job and its warm workers stay from one sweep to the
    next. An exception that escapes the command is returned as its traceback on stderr with exit
    status 1, as the process would end, so that "no traceback" checks keep their meaning."""
    from typer.testing import CliRunner

    from scalesweep.cli import app

    here, environment = Path.cwd(), dict(os.environ)
    os.chdir(cwd)
    try:
        unset = dict.fromkeys(SHELL_SERVICES)
        result = CliRunner().invoke(app, list(args), env={**unset, **(env or {})})
    finally:  # what the command set (its working dir, environment variables) ends with it, as a process's would
        os.chdir(here)
        os.environ.clear()
        os.environ.update(environment)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return Ran(1, result.stdout, stderr + "".join(traceback.format_exception(*result.exc_info)))
    return Ran(result.exit_code, result.stdout, stderr)


def run_on(cluster: Cluster, spec: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> Ran:
    """`scalesweep run SPEC ARGS` on the session's shared Ray cluster, in this test process
    (`cli_here`): the tests' sweeps share one Ray job per test process and its warm workers."""
    return cli_here("run", str(spec), "--address", cluster.gcs, *args, cwd=cwd, env={**RAY_ENV, **(env or {})})


# ---------------------------------------------------------------- small fast sweeps, read back from MLflow

FAST_SPEC = """
name: {name}
task: {{name: modular_arithmetic, params: {{p: 7, op: "+"}}}}
model: {{family: mlp, params: {{depth: 1, embed_dim: 4}}}}
axes: {{model_size: {widths}, data_size: {sizes}, seeds: {seeds}}}
training: {{steps: {steps}, batch_size: 64, lr: {lr}, optimizer: {optimizer}, eval_every: 10}}
observables: [loss, accuracy]
resources: {{cpus_per_run: {cpus}}}
tracking: {{curves_figure: false}}
max_retries: 1
{extra}
"""


def fast_spec(
    name: str,
    widths: tuple[int, ...] = (4, 8),
    sizes: tuple[int, ...] = (20, 30),
    seeds: int = 2,
    steps: int = 20,
    lr: float = 0.01,
    optimizer: str = "adamw",
    cpus: float = 0.5,
    extra: str = "",
) -> str:
    """A sweep of tiny MLPs on p=7 modular addition: seconds per run, for tests of the machinery."""
    return FAST_SPEC.format(
        name=name,
        widths=list(widths),
        sizes=list(sizes),
        seeds=seeds,
        steps=steps,
        lr=lr,
        optimizer=optimizer,
        cpus=cpus,
        extra=extra,
    )


def child_runs(uri: str, sweep: str) -> list:
    """Every child run of a sweep in the store at `uri` (all statuses)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(f"scalesweep/{sweep}")
    if experiment is None:
        return []
    query = f"tags.`scalesweep.role` = 'child' and tags.`scalesweep.sweep` = '{sweep}'"
    return client.search_runs([experiment.experiment_id], query, max_results=5000)


def planned_keys(spec_path: Path) -> set[str]:
    """The run keys `scalesweep plan` gives the spec."""
    from scalesweep.plan import plan
    from scalesweep.spec import load_spec

    return {config.run_key for config in plan(load_spec(spec_path))}
