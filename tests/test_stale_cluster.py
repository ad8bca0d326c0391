"""A stale record of a local Ray cluster does not hang the default (no address) run.

After a `ray start --head` whose processes died without `ray stop`, Ray's record of the current
local cluster (`$RAY_TMPDIR/ray/ray_current_cluster`) stays behind, and a plain `ray.init()`
tries to join that dead head forever ("Failed to connect to GCS" every few seconds). Before
`cluster.connect` probed the record, `scalesweep run` without --address hung the same way.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from scalesweep import cluster
from tests.conftest import REPO, clean_env, free_port, kill_session

CONNECT = (
    "from scalesweep import cluster; import ray; cluster.connect(); "  # as `scalesweep run` calls it
    "print('cpus', ray.cluster_resources().get('CPU')); ray.shutdown()"
)


@pytest.fixture
def stale_record():
    """A short Ray temp dir (Ray's socket paths are length-limited) holding a record of a dead head."""
    with tempfile.TemporaryDirectory(prefix="rs", dir="/tmp") as temp:
        (Path(temp) / "ray").mkdir()
        address = f"127.0.0.1:{free_port()}"  # nothing listens there
        (Path(temp) / "ray" / "ray_current_cluster").write_text(address + "\n")
        yield Path(temp), address


def test_the_record_is_found_and_its_dead_head_does_not_answer(stale_record, monkeypatch):
    temp, address = stale_record
    monkeypatch.setenv("RAY_TMPDIR", str(temp))
    found = cluster.recorded_local_cluster()
    assert found == (address, temp / "ray" / "ray_current_cluster")
    started = time.monotonic()
    assert not cluster.answers(address)
    assert time.monotonic() - started < cluster.PROBE_SECONDS + 1


def test_no_record_is_none(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert cluster.recorded_local_cluster() is None


@pytest.mark.slow
def test_a_stale_local_record_starts_a_local_instance_instead_of_hanging(stale_record, tmp_path):
    temp, address = stale_record
    env = clean_env(RAY_TMPDIR=str(temp))
    log = tmp_path / "connect.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", CONNECT],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        process.wait(timeout=150)
    except subprocess.TimeoutExpired:
        kill_session(process, signal.SIGKILL)
        pytest.fail(f"connect() still waiting after 150 s on a dead recorded head:\n{log.read_text()[-2000:]}")
    finally:
        kill_session(process, signal.SIGKILL)
    text = " ".join(log.read_text().split())
    assert process.returncode == 0, text[-2000:]
    assert f"names {address}, where nothing answers" in text and "starting a local Ray instance" in text
    assert "cpus " in text and "cpus None" not in text


# ---------------------------------------------------------------- a second sweep in one process


def test_a_sweep_to_another_cluster_leaves_the_one_joined_before(monkeypatch):
    """In one process (a notebook), `connect` keeps the Ray it joined for the same address (or
    the caller's own `ray.init`), and leaves it for another address: before, a second sweep to
    another cluster silently ran on the first. (Ray itself replaced by a recorder.)"""
    calls: list[str] = []
    monkeypatch.setattr(cluster, "check_reachable", lambda address: None)
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(cluster.ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(cluster.ray, "init", lambda address=None, **options: calls.append(f"init {address}"))

    monkeypatch.setattr(cluster, "_joined_by", "10.0.0.1:6379")
    cluster.connect("10.0.0.1:6379")
    assert calls == []  # the same cluster: kept
    cluster.connect("10.0.0.2:6379")
    assert calls == ["shutdown", "init 10.0.0.2:6379"] and cluster._joined_by == "10.0.0.2:6379"

    calls.clear()
    monkeypatch.setattr(cluster, "_joined_by", "local")
    cluster.connect("10.0.0.2:6379")
    assert calls == ["shutdown", "init 10.0.0.2:6379"]  # a local instance, then a cluster

    calls.clear()
    monkeypatch.setattr(cluster, "_joined_by", None)  # the caller's own ray.init: theirs to keep
    cluster.connect("10.0.0.2:6379")
    cluster.connect(None)
    assert calls == []
