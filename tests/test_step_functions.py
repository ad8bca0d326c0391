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
    runs = RUNS.copy()
    runs.attrs["step_series"] = SERIES
    assert expressions.evaluate("first_step(test_acc >= 0.9)", runs)[0] == 200


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
