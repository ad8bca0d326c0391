"""Step functions of the expression language against series computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from scalesweep.analysis import expressions
from scalesweep.errors import UserError

RUNS = pd.DataFrame({"run_id": ["a", "b", "c"], "final_test_acc": [1.0, 0.5, 0.2], "onset": [100, 0, 0]})
SERIES = pd.DataFrame(
    {
        "run_id": ["a"] * 5 + ["b"] * 5,
        "step": [0, 100, 200, 300, 400] * 2,
        "test_acc": [0.1, 0.2, 0.95, 0.97, 1.0] + [0.1, 0.3, 0.4, 0.5, 0.5],
        "train_loss": [2.0, 1.0, 3.0, 0.5, 0.4] + [2.0, 1.5, 1.0, 0.9, 0.8],
    }
).sample(frac=1.0, random_state=0)  # any row order: the series are sorted by step per run


def ev(expr: str, runs: pd.DataFrame = RUNS, **params) -> np.ndarray:
    return expressions.evaluate(expr, runs, params, series=SERIES)


def test_first_step_at_which_a_condition_holds():
    out = ev("first_step(test_acc >= 0.9)")
    assert out[0] == 200 and math.isnan(out[1])
    out = ev("first_step(test_acc >= level)", level=0.45)
    assert out[0] == 200 and out[1] == 300 and math.isnan(out[2])  # run c has no series: NaN
    assert math.isnan(ev("first_step(test_acc > 2)")[0])  # never


def test_value_at_a_fraction_max_min_and_their_steps():
    assert ev("value_at(test_acc, 0.5)")[:2].tolist() == [0.95, 0.4]  # first step >= 200
    assert ev("value_at(test_acc, 0)")[0] == 0.1 and ev("value_at(test_acc, 1)")[0] == 1.0
    assert ev("series_max(train_loss)")[:2].tolist() == [3.0, 2.0]
    assert ev("step_of_max(train_loss)")[:2].tolist() == [200.0, 0.0]  # the loss spike of run a
    assert ev("series_min(train_loss)")[:2].tolist() == [0.4, 0.8]
    assert ev("step_of_min(train_loss)")[:2].tolist() == [400.0, 400.0]
    assert ev("step_of_jump(test_acc)")[:2].tolist() == [200.0, 100.0]  # the largest rise ends there


def test_mean_over_a_window_with_bounds_from_the_runs_table():
    assert ev("mean_over(train_loss, 100, 300)")[:2].tolist() == [1.5, pytest.approx(3.4 / 3)]
    # the window may start at a summary column of each run
    assert ev("mean_over(train_loss, onset, 400)")[:2].tolist() == [pytest.approx(4.9 / 4), pytest.approx(6.2 / 5)]
    assert ev("series_max(test_acc) - final_test_acc")[:2].tolist() == [0.0, 0.0]
    assert math.isnan(ev("mean_over(train_loss, 500, 600)")[0])


def test_step_series_can_travel_with_the_runs_table():
    from scalesweep.analysis import series

    runs = series.attach(RUNS.copy(), SERIES)
    assert expressions.evaluate("first_step(test_acc >= 0.9)", runs)[0] == 200
    # they survive the table operations the analysis does (pandas keeps attrs where every input has the
    # same), are never copied, and never break a merge
    moved = runs[runs["final_test_acc"] > 0.1].merge(runs[["run_id"]], on="run_id").assign(x=1).copy()
    assert moved.attrs["step_series"] is runs.attrs["step_series"]
    assert expressions.evaluate("first_step(test_acc >= 0.9)", moved)[0] == 200


def test_bad_uses_are_one_paragraph_errors():
    with pytest.raises(UserError, match="final_test_acc.*a summary, one value per run, not a step series"):
        ev("series_max(final_test_acc)")
    with pytest.raises(UserError, match='test_accc \\(did you mean "test_acc"\\?\\).*step series are: step, test'):
        ev("first_step(test_accc > 0.5)")
    with pytest.raises(UserError, match="no step series were given"):
        expressions.evaluate("first_step(test_acc > 0.5)", RUNS)
    with pytest.raises(UserError, match="do not nest"):
        ev("series_max(first_step(test_acc > 0.5))")
    with pytest.raises(UserError, match="value_at\\(\\) takes 2 argument"):
        expressions.parse("value_at(test_acc)")
    with pytest.raises(UserError, match="no run_id"):
        ev("series_max(test_acc)", runs=RUNS.drop(columns="run_id"))
    assert "first_step" in str(pytest.raises(UserError, expressions.parse, "frist_step(x)").value)


def test_validate_refuses_a_step_function_of_a_summary_and_accepts_one_of_a_step_series(tmp_path, monkeypatch):
    from pathlib import Path

    from scalesweep.spec import parse_spec

    monkeypatch.chdir(tmp_path)
    from conftest import GROKKING_SPEC

    quickstart = GROKKING_SPEC
    phenomena = "phenomena:\n  - name: grokking\n    params: {gap: 150}\n  - generalization_gap\n"
    assert phenomena in quickstart

    def spec_with(strength: str):
        Path("onset.yaml").write_text(f"description: onset\nstrength: {strength}\ndirection: higher\npresence: 1\n")
        return parse_spec(quickstart.replace(phenomena, "phenomena: [onset.yaml]\n"), "q.yaml")

    assert spec_with('"first_step(test_acc >= 0.9) - step_of_max(train_loss)"')
    assert spec_with('"mean_over(weight_norm, 0, steps_to_fit_train)"')  # a window bound may be a summary
    with pytest.raises(UserError, match="applies a step function to final_test_acc.*step series: .*test_acc"):
        spec_with('"series_max(final_test_acc)"')
    with pytest.raises(UserError, match="attention_entropy_mean \\(recorded by attention_entropy\\)"):
        spec_with('"first_step(attention_entropy_mean < 1)"')


def test_step_series_read_back_from_mlflow_in_one_query(workdir, empty_store, monkeypatch):
    from scalesweep import store
    from scalesweep.plan import plan
    from scalesweep.spec import parse_spec
    from tests.conftest import TINY_SPEC, fresh_store

    uri = fresh_store(workdir, empty_store)
    spec = parse_spec(TINY_SPEC.format(name="series", steps=20))
    tracker = store.Tracker(store.client_for(uri), spec.name, spec.experiment_name)
    ids = []
    for config, jump in zip(plan(spec)[:2], (10, 20), strict=True):
        run_id = tracker.start_child(config)
        rows = [{"step": s, "test_acc": float(s >= jump), "train_loss": 1.0 / (1 + s)} for s in (0, 10, 20)]
        tracker.log_rows(run_id, rows[:2], 0)
        tracker.finish(run_id, {"final_test_acc": 1.0, "train_loss": 0.05}, 20, 0, rows=rows[2:])
        ids.append(run_id)
    runs = store.runs_table(spec.name, spec.experiment_name, uri)
    client = store.client_for(uri, create=False)
    calls = []
    sql = store._sql_histories
    monkeypatch.setattr(store, "_sql_histories", lambda *a: calls.append(a[2]) or sql(*a))
    table = store.read_step_series(client, list(runs["run_id"]), ["test_acc", "train_loss"])
    assert calls == [["test_acc", "train_loss"]]  # one query for the sweep, not one per run or metric
    assert len(table) == 6 and set(table.columns) == {"run_id", "step", "test_acc", "train_loss"}
    steps = expressions.evaluate("first_step(test_acc >= 1)", runs, series=table)
    onset = dict(zip(runs["run_id"], steps, strict=True))
    assert onset == {ids[0]: 10.0, ids[1]: 20.0}
    # the summary logged under a step key at the last step is the last point of the series
    last = table[(table.run_id == ids[0]) & (table.step == 20)]["train_loss"].item()
    assert last == 0.05


def test_a_phenomenon_defined_on_the_step_series(tmp_path, monkeypatch):
    from scalesweep.analysis import phenomena, series

    monkeypatch.chdir(tmp_path)
    (tmp_path / "onset.yaml").write_text(
        "description: when test accuracy first reaches a level\nstrength: first_step(test_acc >= level)\n"
        "direction: lower\npresence: 0\nparams: {level: 0.9}\nregimes:\n  late: first_step(test_acc >= level) > 100\n"
    )
    ph = phenomena.load_phenomenon("onset.yaml")
    assert series.series_needed(ph.expressions_used(), ph.params) == ["test_acc"]
    runs = series.attach(RUNS.assign(test_acc=[1.0, 0.5, 0.2]), SERIES)  # test_acc: the latest, as MLflow gives it
    out = phenomena.evaluate(runs, ph)
    assert out["strength"].iloc[0] == 200 and math.isnan(out["strength"].iloc[1])
    assert out["regime"].tolist()[0] == "late"


def test_the_long_series_of_a_phenomenon_record_matched_by_run_key():
    long = SERIES.melt(id_vars=["run_id", "step"], var_name="metric", value_name="value")
    long = long.assign(run_key=long["run_id"].map({"a": "k1", "b": "k2"})).drop(columns="run_id")
    runs = RUNS.drop(columns="run_id").assign(run_key=["k1", "k2", "k3"])
    out = expressions.evaluate("first_step(test_acc >= 0.9) + 0 * series_max(train_loss)", runs, series=long)
    assert out[0] == 200 and math.isnan(out[1]) and math.isnan(out[2])
    with pytest.raises(UserError, match="no run_key to find the series by"):
        expressions.evaluate("series_max(train_loss)", RUNS, series=long)


def test_the_report_fetches_only_the_series_its_phenomena_read(monkeypatch):
    from scalesweep import commands, store
    from scalesweep.analysis.phenomena import Phenomenon

    runs = pd.DataFrame({"run_id": ["a", "b"], "final_test_acc": [1.0, 1.0]})
    asked = []
    table = pd.DataFrame({"run_id": ["a", "a", "b", "b"], "step": [0, 10, 0, 10], "test_acc": [0.0, 1.0, 0.0, 0.0]})
    monkeypatch.setattr(store, "read_step_series", lambda client, ids, keys: asked.append((ids, keys)) or table)
    plain = Phenomenon(name="plain", strength="final_test_acc")
    assert commands.with_step_series(runs, [plain], client=None) is runs and asked == []
    onset = Phenomenon(name="onset", strength="first_step(test_acc >= 1)")
    out = commands.with_step_series(runs, [plain, onset], client=None)
    assert asked == [(["a", "b"], ["test_acc"])]
    assert expressions.evaluate(onset.strength, out).tolist()[0] == 10.0
