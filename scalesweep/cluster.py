"""Ray: start a local instance or join a cluster, and check the sweep fits on it.

Two checks happen before any run is recorded, because Ray itself is slow to
say no: `ray.init` on an address where nothing listens retries for minutes,
and a task asking for a GPU the cluster lacks waits forever. A TCP probe of
the address answers in seconds; comparing each run's request with the alive
nodes' resources turns the silent wait into a clear error.

Without an address, `ray.init()` joins the local cluster that the last
`ray start --head` recorded (`/tmp/ray/ray_current_cluster`), even when that
head died without `ray stop`: then it retries "Failed to connect to GCS"
forever. So the record is probed first, and a dead one is passed over (with
one line saying so) for a local instance of the sweep's own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray

from scalesweep.errors import UserError, first_line
from scalesweep.startup import mark

PROBE_SECONDS = 5.0


def resolve_address(address: str | None) -> str | None:
    """--address, else RAY_ADDRESS, else None (a local instance)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str) -> None:
    """Fail in seconds, in one paragraph, when nothing listens at a Ray address."""
    if address == "auto":  # Ray finds the cluster this machine belongs to
        return
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=PROBE_SECONDS):
            return
    except OSError as err:
        raise UserError(
            f"cannot reach the Ray cluster at {address} ({err.strerror or err}). Start one with "
            f"`ray start --head`, give its GCS address (host:6379, or ray://host:10001 for Ray Client) "
            f"with --address or RAY_ADDRESS, or leave both out to run on a local Ray instance."
        ) from None


def _host_port(address: str) -> tuple[str, int]:
    bare = address.split("://", 1)[-1].rstrip("/")
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(
            f'"{address}" is not a Ray address; give host:port (the GCS, e.g. 10.0.0.5:6379), '
            f"ray://host:port (Ray Client) or auto."
        )
    return host.strip("[]"), int(port)


def recorded_local_cluster() -> tuple[str, Path] | None:
    """(address, record file) of the local cluster `ray.init()` would join without an address:
    the one the last `ray start --head` on this machine recorded; None when there is no record."""
    try:
        from ray._common.utils import get_ray_address_file  # where this Ray version keeps it

        path = Path(get_ray_address_file(None))
    except (ImportError, AttributeError):
        temp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
        path = Path(temp) / "ray" / "ray_current_cluster"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return (text, path) if text else None


def answers(address: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether something accepts a TCP connection at a host:port address."""
    try:
        host, port = _host_port(address)
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except (OSError, UserError, ValueError):
        return False


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _LocalStart:
    """`connect(None)` in a thread of its own, then `then()` (e.g. warming the workers); the
    thread stays until the process ends. Ray binds the processes it starts to the thread that
    started them (PR_SET_PDEATHSIG: they are killed when it exits), and a thread lets the
    driver open the store and take the lease while Ray starts."""

    def __init__(self, then: Callable[[], Any] | None):
        self.then, self.error, self.ready = then, None, threading.Event()
        self.thread = threading.Thread(target=self.run, name="scalesweep-ray", daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            mark("ray_start")
            connect(None)
            mark("ray_ready")
        except BaseException as err:  # raised in the main thread by `connect`
            self.error = err
        self.ready.set()
        if self.error is None and self.then is not None:
            with contextlib.suppress(Exception):  # a head start only: the tasks import what they need
                self.then()
        threading.Event().wait()  # Ray's processes live as long as this thread

    def wait(self) -> None:
        self.ready.wait()
        if self.error is not None:
            error, self.error = self.error, None
            raise error


_starting: _LocalStart | None = None
# How `connect` joined this process's Ray: by an address, "local", or None (it did not: the
# caller's own `ray.init`, which is kept). The address given is what is compared: a GCS may
# name itself by another of its host's addresses.
_joined_by: str | None = None


def start_local(then: Callable[[], Any] | None = None) -> None:
    """Begin joining the recorded local cluster or starting a local Ray instance, in the
    background (see `connect`); `connect(None)` waits for it and raises its error. Once only."""
    global _starting
    if _starting is not None or ray.is_initialized():
        return
    if threading.current_thread() is threading.main_thread():  # what ray.init does in the main thread
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    _starting = _LocalStart(then)


def settle() -> None:
    """Wait for a background start under way (its error, if any, is dropped: nothing needed it),
    so that the process never ends while `ray.init` is half done."""
    if _starting is not None:
        _starting.ready.wait()


def connect(
    address: str | None = None, num_cpus: int | None = None, notify: Callable[[str], None] | None = None
) -> None:
    """Join the cluster at `address`; without one, the live local cluster Ray recorded, else a
    new local Ray instance (a record whose head does not answer is passed over, said in one line).
    Without an address, a start begun by `start_local` is waited for (its error raised here)."""
    if address is None and _starting is not None and threading.current_thread() is not _starting.thread:
        _starting.wait()
    global _joined_by
    if ray.is_initialized():
        if address is None or _joined_by in (None, address):
            return
        ray.shutdown()  # an earlier sweep of this process (a notebook's) joined another cluster: leave it
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR", "configure_logging": True}
    if address is None:
        recorded = recorded_local_cluster()
        if recorded is not None and not answers(recorded[0]):
            (notify or _say)(
                f"Ray's record of a local cluster ({recorded[1]}) names {recorded[0]}, where nothing answers "
                f"(a `ray start --head` that ended without `ray stop`?); starting a local Ray instance for this "
                f"sweep instead (`ray stop` clears the record)."
            )
            with _lean_local_instance():
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **options)
            _joined_by = "local"
            return
        with _lean_local_instance():
            ray.init(num_cpus=num_cpus, include_dashboard=False, **options)
        _joined_by = "local"
        return
    check_reachable(address)
    # Workers on other machines may not have scalesweep installed: ship the package; a
    # Ray Job's driver already got it with the job (jobs.py), and Ray refuses a second one.
    in_a_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    runtime_env = None if in_a_job else {"py_modules": [str(Path(__file__).resolve().parent)]}
    with _ray_core_output() as core_output:
        try:
            ray.init(address=address, runtime_env=runtime_env, **options)
            _joined_by = address
            return
        except Exception as err:  # Ray raises several types for a head it cannot join
            failure = err
    said = "".join(core_output)
    if isinstance(failure, ray.exceptions.AuthenticationError) or any(m in said for m in AUTH_MARKERS):
        raise UserError(
            f"cannot join the Ray cluster at {address}: its head uses token authentication and refused this "
            f"machine's token (Ray: InvalidAuthToken, the token is missing or incorrect). Give this machine the "
            f"cluster's token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the head's token (or copy the head's "
            f"~/.ray/auth_token here); or, on a trusted network only, start the head and every node with "
            f"RAY_AUTH_MODE=disabled (Ray turns token authentication on when ~/.ray/auth_token exists)."
        ) from None
    raise UserError(
        f"cannot join the Ray cluster at {address} ({type(failure).__name__}: {first_line(failure)}). "
        f"Check that it is a Ray GCS address (host:6379) of a running cluster of the same Ray version."
    ) from None


LEAN_ENV = "SCALESWEEP_RAY_LEAN"  # "0": a local instance with all of Ray's head processes


@contextlib.contextmanager
def _lean_local_instance() -> Iterator[None]:
    """A new local instance without the head processes a sweep never uses: the autoscaler's
    monitor (one node, nothing to scale), the log monitor (it forwards worker output to the
    driver, which `log_to_driver=False` turns off) and the dashboard's API server (started even
    without the dashboard; serves the state and job APIs, which a sweep does not call). On 2
    cores they cost ~1.5 s of CPU while the sweep starts and ~280 MiB (benchmarks/RESULTS.md).
    Ray has no public switch for them, so this sets its node parameters (`no_monitor`,
    `include_log_monitor`: `ray start`'s own) and skips the API server, for the duration of
    `ray.init`; where Ray's internals differ (another version), it changes nothing. Joining a
    running cluster starts no processes, so this never touches one."""
    try:
        from ray._private.node import Node

        original_init, original_api = Node.__init__, Node.start_api_server
    except (ImportError, AttributeError):
        original_init = None
    if original_init is None or os.environ.get(LEAN_ENV, "1") == "0":
        yield
        return

    def init(self, ray_params, *args, head=False, **kwargs):
        if head and hasattr(ray_params, "no_monitor") and hasattr(ray_params, "include_log_monitor"):
            ray_params.no_monitor, ray_params.include_log_monitor = True, False
        original_init(self, ray_params, *args, head=head, **kwargs)

    def no_api_server(self, *args, **kwargs):
        return None

    Node.__init__, Node.start_api_server = init, no_api_server
    try:
        yield
    finally:
        Node.__init__, Node.start_api_server = original_init, original_api


AUTH_MARKERS = ("InvalidAuthToken", "Unauthenticated", "UNAUTHENTICATED")


@contextlib.contextmanager
def _ray_core_output() -> Iterator[list[str]]:
    """Ray's C++ core reports why it cannot join (e.g. "Unauthenticated: InvalidAuthToken") only in
    lines it writes to file descriptor 2, once a second while it retries. Collect them while
    joining: the cause goes into the one-paragraph error, and the terminal is spared the flood."""
    said: list[str] = []
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said.append(sink.read(1_000_000).decode("utf-8", "replace"))


def slots(cpus: float, gpus: float) -> int:
    """How many tasks asking for (cpus, gpus) the alive nodes run at once (each node's whole
    resources, as Ray places them: a task never spans nodes)."""
    fits = 0
    for have in _alive_resources():
        each = [have.get(name, 0.0) / need for name, need in (("CPU", cpus), ("GPU", gpus)) if need > 0]
        fits += int(min(each) + 1e-9) if each else 1_000_000
    return fits


def _alive_resources() -> list[dict[str, float]]:
    """Each alive node's total resources ({"CPU": 2.0, "GPU": 1.0, ...})."""
    return [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]


def leave_local() -> None:
    """Stop the local Ray instance this process joined without an address, now rather than at
    the interpreter's exit, where Ray first sleeps 0.5 s for workers' log lines to reach the
    driver (`ray.shutdown(_exiting_interpreter=True)`), which runs with `log_to_driver=False`.
    A cluster joined by address (a notebook's, the tests') stays joined for the next sweep."""
    global _joined_by
    if _joined_by == "local" and ray.is_initialized():
        ray.shutdown()
        _joined_by = None


def check_fits(requests: set[tuple[float, float]]) -> None:
    """Refuse (cpus, gpus) requests that no alive node can ever satisfy."""
    nodes = _alive_resources()
    for cpus, gpus in sorted(requests):
        if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
            have = ", ".join(f"{n.get('CPU', 0):g} CPUs/{n.get('GPU', 0):g} GPUs" for n in nodes) or "no alive nodes"
            raise UserError(
                f"a run asks for {cpus:g} CPUs and {gpus:g} GPUs (resources in the spec), but no node of the "
                f"Ray cluster has that much ({have}); lower resources.cpus_per_run / gpus_per_run (fractions "
                f"pack several runs on one GPU) or use a cluster with more."
            )
