"""Commands that only read never create a tracking store.

Before `uris.require_store`, `scalesweep report` and `scalesweep status` in a folder without a
store created an empty `mlflow.db` there (status then listed every run as missing, exit 0).
Now they say that there is no store and where they looked (one paragraph, exit 2), and leave
the folder as it was.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from scalesweep import store
from scalesweep.cli import app
from scalesweep.errors import UserError
from tests.conftest import write_spec


def invoke(*args: str, env: dict | None = None):
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.mark.parametrize("command", ["status", "report"])
def test_a_reader_in_a_folder_without_a_store_says_so_and_creates_nothing(workdir, tiny_spec_text, command):
    spec = write_spec(workdir, tiny_spec_text)
    before = sorted(p.name for p in workdir.iterdir())
    result = invoke(command, str(spec))
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "there is no MLflow store at" in text and str(workdir / "mlflow.db") in text
    assert "the default sqlite:///mlflow.db" in text and "only reads" in text
    assert sorted(p.name for p in workdir.iterdir()) == before  # no mlflow.db, no mlartifacts


def test_the_store_named_by_the_option_or_the_environment_is_the_one_reported(workdir, tiny_spec_text):
    spec = write_spec(workdir, tiny_spec_text)
    result = invoke("status", str(spec), "--tracking-uri", "sqlite:///elsewhere.db")
    assert result.exit_code == 2 and "elsewhere.db" in result.output and "--tracking-uri" in result.output
    result = invoke("report", str(spec), env={"MLFLOW_TRACKING_URI": "sqlite:///from_env.db"})
    assert result.exit_code == 2 and "from_env.db" in result.output and "MLFLOW_TRACKING_URI" in result.output
    assert not list(workdir.glob("*.db"))


def test_reading_functions_never_create_a_store(workdir):
    with pytest.raises(UserError, match="no MLflow store"):
        store.runs_table("tiny", "scalesweep/tiny")
    with pytest.raises(UserError, match="no MLflow store"):
        store.client_for(create=False)
    assert not (workdir / "mlflow.db").exists()


def test_an_existing_store_is_read(workdir, tiny_spec_text):
    spec = write_spec(workdir, tiny_spec_text)
    store.ensure_experiment(store.client_for(), "scalesweep/tiny")  # a writer creates it
    result = invoke("status", str(spec))
    assert result.exit_code == 0 and "18 missing" in result.output
