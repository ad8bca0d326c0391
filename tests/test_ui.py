"""`scalesweep ui`: it says it is starting, prints the URL only once the server answers, and a
server that dies or never answers is one clear error (fake servers here: no MLflow started)."""

from __future__ import annotations

import sys
import time

import pytest
from rich.console import Console

from scalesweep import cli
from scalesweep.errors import UserError
from tests.conftest import free_port

# Listens only after a delay, answers one request, then exits (the poll's probe is that request).
LATE_SERVER = """
import http.server, pathlib, sys, time
time.sleep(1.5)
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)
pathlib.Path(sys.argv[2]).write_text(str(time.time()))
server.handle_request()
"""


class Recorder(Console):
    """A console that remembers each line and whether the fake server was listening by then."""

    def __init__(self, marker):
        super().__init__(width=200)
        self.marker, self.lines = marker, []

    def print(self, text, **kwargs):
        self.lines.append((str(text), self.marker.exists()))


def test_the_url_is_printed_only_once_the_server_answers(tmp_path, monkeypatch):
    port, marker = free_port(), tmp_path / "listening"
    recorder = Recorder(marker)
    monkeypatch.setattr(cli, "out", recorder)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    code = cli.serve_ui([sys.executable, "-c", LATE_SERVER, str(port), str(marker)], url + "/", url)
    assert code == 0 and time.monotonic() - started >= 1.5
    assert recorder.lines == [(f"MLflow UI on {url} (Ctrl-C to stop)", True)]  # printed after it listened


def test_a_server_that_exits_first_is_a_clear_error(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UserError, match=r"stopped before it answered \(exit code 3\)"):
        cli.serve_ui([sys.executable, "-c", "raise SystemExit(3)"], url + "/", url)


def test_a_server_that_never_answers_is_stopped_after_the_timeout(monkeypatch, tmp_path):
    monkeypatch.setenv("SCALESWEEP_UI_TIMEOUT", "1")
    url = f"http://127.0.0.1:{free_port()}"
    pid_file = tmp_path / "pid"
    silent = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    started = time.monotonic()
    with pytest.raises(UserError, match=r"did not answer on .* within 1 s, so it was stopped.*SCALESWEEP_UI_TIMEOUT"):
        cli.serve_ui([sys.executable, "-c", silent], url + "/", url)
    assert time.monotonic() - started < 30
    pid = int(pid_file.read_text())
    assert not _alive(pid), "the silent server was left running"


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie (reaped later) counts as gone
        return stat.read().split()[2] != "Z"


def test_ui_says_it_is_starting_and_refuses_a_port_already_answering(workdir, monkeypatch):
    from typer.testing import CliRunner

    seen = []
    monkeypatch.setattr(cli, "out", Console(width=300))
    monkeypatch.setattr(cli, "serve_ui", lambda command, probe, url: seen.append((probe, url)) or 0)
    port = free_port()
    result = CliRunner().invoke(cli.app, ["ui", "--port", str(port)])
    assert result.exit_code == 0 and "starting the MLflow UI on sqlite:///" in result.output
    assert "MLflow UI on http" not in result.output  # serve_ui prints it, once the server answers
    assert seen == [(f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{port}")]

    monkeypatch.setattr(cli, "_http_answers", lambda url: True)  # something listens there already
    taken = CliRunner().invoke(cli.app, ["ui", "--port", str(port)])
    assert taken.exit_code == 2 and "already answers" in taken.output and f"--port {port + 1}" in taken.output
