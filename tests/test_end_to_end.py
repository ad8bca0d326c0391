"""One tiny sweep through real Ray, real torch and real MLflow (sqlite), via the CLI."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from scalesweep.analysis.classify import VERDICT_COLUMNS, VERDICTS
from tests.conftest import REPO, TINY_SPEC, cli, cli_here, write_spec

pytestmark = pytest.mark.slow


def test_tiny_sweep_run_record_report_and_resume(workdir):
    spec = write_spec(workdir, TINY_SPEC.format(name="tiny", steps=60))
    first = cli("run", str(spec), cwd=workdir)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "18 finished, 0 failed" in first.stdout

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("scalesweep/tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("scalesweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("scalesweep.role") == "child"]
    assert len(parents) == 1 and len(children) == 18
    # The MLflow 3 UI opens a training experiment on its runs table; the parent run says what the sweep is.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = parents[0]
    assert parent.data.params["axes.model_size"] == "[8, 16, 32]" and parent.data.params["n_runs"] == "18"
    assert parent.data.metrics["runs_finished"] == 18 and parent.data.metrics["runs_failed"] == 0
    assert "modular_arithmetic" in parent.data.tags["mlflow.note.content"]
    assert all(r.info.run_name.startswith("seed=") for r in children)  # the seed first: never cut off
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.status for r in children} == {"FINISHED"}
    assert len({r.data.tags["scalesweep.run_key"] for r in children}) == 18
    child = children[0]
    assert child.data.params["lr"] == "0.01" and child.data.params["task.p"] == "11"
    assert {"scalesweep.model_size", "scalesweep.data_size", "scalesweep.seed"} <= set(child.data.tags)
    for summary in (
        "final_test_acc",
        "final_train_acc",
        "steps_to_fit_train",
        "grokking_delay",
        "weight_norm",
        "n_params",
    ):
        assert summary in child.data.metrics, summary
    history = client.get_metric_history(child.info.run_id, "test_acc")
    assert [m.step for m in history] == list(range(0, 61, 10))
    assert child.data.metrics["n_params"] > 0

    again = cli_here("run", str(spec), cwd=workdir)
    assert again.returncode == 0
    assert "already finished" in again.stderr + again.stdout
    assert len(client.search_runs([experiment.experiment_id], "tags.`scalesweep.role` = 'child'")) == 18

    report = cli_here("report", str(spec), cwd=workdir)
    assert report.returncode == 0, report.stdout + report.stderr
    verdicts = pd.read_csv(workdir / "reports" / "tiny" / "verdicts.csv")
    assert list(verdicts.columns[: len(VERDICT_COLUMNS)]) == VERDICT_COLUMNS
    assert set(verdicts["verdict"]) <= set(VERDICTS)
    assert set(verdicts["phenomenon"]) == {"grokking", "generalization_gap"}
    assert set(verdicts["axis"]) == {"model_size", "data_size", "compute"}  # compute: the diagonal
    page = (workdir / "reports" / "tiny" / "report.html").read_text(encoding="utf-8")
    assert page.count("data-kind='strength'") == 6 and page.count("data-kind='phases'") == 1  # grokking has regimes
    assert all(r.info.run_id in page for r in children)  # the runs behind each point
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert {"report/report.html", "report/verdicts.csv", "report/figures"} <= artifacts
    # The paths the README names after the quickstart (here for the tiny sweep).
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for named in ["reports/quickstart/report.html", "`mlflow.db`", "`mlartifacts/`", "`report/verdicts.csv`"]:
        assert named in readme, named
    assert "`.scalesweep-leases/`" in " ".join(readme.split())
    assert (workdir / "reports" / "tiny" / "report.html").is_file() and (workdir / "mlflow.db").is_file()
    assert (workdir / "mlartifacts").is_dir()
    assert len(list((workdir / ".scalesweep-leases").glob("*.lock"))) == 1  # the sweep's lock file
    assert (workdir / "reports" / "tiny" / "verdicts.csv").is_file()  # "with verdicts.csv beside it"
    assert "spec.yaml" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
