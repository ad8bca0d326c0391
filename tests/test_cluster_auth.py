"""A Ray head with token authentication: the cause and the fix are named, and no parent run stays RUNNING.

Before, `scalesweep run --address HEAD` against a head started with RAY_AUTH_MODE=token, from a
machine without its token, said "cannot join ... same Ray version?" while the cause
(`InvalidAuthToken`) appeared only in Ray's own log lines, and the sweep's parent run, which
MLflow creates RUNNING, stayed RUNNING in the store.
"""

from __future__ import annotations

import socket
import sqlite3
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, clean_env, cli, fast_spec, free_port, kill_session, spawn, wait_until, write_spec

pytestmark = pytest.mark.slow

TOKEN = "0123456789abcdef0123456789abcdef"


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture
def token_head(tmp_path):
    """`ray start --head` with token authentication, in its own session, HOME and Ray temp dir."""
    with tempfile.TemporaryDirectory(prefix="rh", dir="/tmp") as temp:  # Ray's socket paths are length-limited
        port, client_port = free_port(), free_port()
        home = Path(temp) / "home"
        home.mkdir()
        env = clean_env(HOME=str(home), RAY_TMPDIR=temp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
        args = ["ray", "start", "--head", "--port", str(port), "--ray-client-server-port", str(client_port)]
        args += ["--num-cpus", "1", "--include-dashboard", "false", "--block"]
        head = spawn(args, tmp_path, tmp_path / "head.log", env=env)
        try:
            if not wait_until(lambda: _listening(port) or head.poll() is not None, 120):
                pytest.fail(f"the Ray head did not start: {(tmp_path / 'head.log').read_text()[-2000:]}")
            yield port
        finally:
            kill_session(head)


def test_a_token_head_names_the_cause_and_the_parent_run_ends_failed(token_head, tmp_path):
    work = tmp_path / "work"
    (work / "home").mkdir(parents=True)  # a HOME without ~/.ray/auth_token
    spec = write_spec(work, fast_spec("authsweep"))
    env = {"HOME": str(work / "home"), "PYTHONPATH": str(REPO)}
    result = cli("run", str(spec), "--address", f"127.0.0.1:{token_head}", cwd=work, env=env, timeout=300)
    text = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stdout + result.stderr
    assert "token authentication" in text and "InvalidAuthToken" in text
    assert "RAY_AUTH_MODE=token" in text and "RAY_AUTH_TOKEN" in text and "RAY_AUTH_MODE=disabled" in text
    assert "Traceback" not in result.stderr
    assert text.count("Failed to get cluster ID") == 0  # Ray's retry lines are collected, not shown
    with sqlite3.connect(work / "mlflow.db") as db:
        statuses = [row[0] for row in db.execute("SELECT status FROM runs")]
        tags = dict(db.execute("SELECT key, value FROM tags WHERE key = 'scalesweep.error'"))
    assert statuses == ["FAILED"]  # the parent only: no child run was made
    assert "token authentication" in tags["scalesweep.error"]
