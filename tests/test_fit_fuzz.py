"""`scalesweep fit` and `classify` on hostile tables: a result or one clear UserError, never a traceback.

The first tests use the quickstart's own runs table (the columns `fit` and `classify` read,
as `scalesweep report sweeps/quickstart.yaml` wrote them): before fits caught overflows,
`fit --law power --x n_params --y final_test_loss` ended in `OverflowError: math range
error` from the bootstrap, and so did `--law chinchilla`. The others fuzz random tables
(NaN, inf, zeros, negatives, constant columns, 1-12 rows), as tests/test_bad_input.py
fuzzes the specs.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from scalesweep.analysis import fits
from scalesweep.cli import app
from scalesweep.commands import fit_command
from scalesweep.errors import UserError

pytestmark = pytest.mark.slow  # hypothesis runs hundreds of fits and classifications

QUICKSTART_RUNS = """\
model_size,n_params,data_size,seed,final_test_loss,final_train_loss,grokking_delay
32,2575.0,400,0,5.376462459564209,0.04679815471172333,
32,2575.0,400,1,2.715851306915283,0.04017246887087822,
32,2575.0,200,0,9.968961715698242,0.023606248199939728,
32,2575.0,200,1,9.983867645263672,0.02322978898882866,
32,2575.0,800,0,0.30018991231918335,0.1895502656698227,0.09691001300805642
32,2575.0,800,1,0.4535769820213318,0.20222540199756622,0.3010299956639812
64,4623.0,400,0,3.71567964553833,0.016885412856936455,
64,4623.0,400,1,2.4702746868133545,0.01575259119272232,
128,8719.0,400,0,5.510552883148193,0.00958243291825056,
128,8719.0,400,1,3.009868621826172,0.00881524384021759,
128,8719.0,200,0,9.40562915802002,0.006380939390510321,
128,8719.0,200,1,9.661026954650879,0.006209595128893852,
64,4623.0,200,0,9.40714168548584,0.011565038934350014,
64,4623.0,200,1,9.677139282226562,0.011302758008241653,
128,8719.0,800,0,0.1068844422698021,0.042970072478055954,0.4471580313422192
128,8719.0,800,1,0.08046997338533401,0.03505384176969528,0.43933269383026263
64,4623.0,800,0,0.10368184745311737,0.05783851072192192,0.15490195998574316
64,4623.0,800,1,0.1013033464550972,0.05554942041635513,0.22184874961635637
"""

QUICKSTART_FITS = [
    ("power", dict(x="n_params"), "final_test_loss"),
    ("chinchilla", dict(n="n_params", d="data_size"), "final_test_loss"),
    ("bnsl", dict(x="n_params"), "final_test_loss"),
    ("power", dict(x="n_params"), "grokking_delay"),  # NaN rows
    ("chinchilla", dict(n="n_params", d="data_size"), "grokking_delay"),
    ("power", dict(x="data_size"), "final_train_loss"),
]


@pytest.fixture
def quickstart_runs(tmp_path) -> Path:
    path = tmp_path / "runs.csv"
    path.write_text(QUICKSTART_RUNS)
    return path


def _result_or_user_error(call) -> dict | UserError:
    try:
        return call()
    except UserError as err:
        assert str(err).strip() and "\n" not in str(err).strip()
        return err


@pytest.mark.parametrize(("law", "scales", "y"), QUICKSTART_FITS)
def test_fit_on_the_quickstart_runs_table_never_crashes(quickstart_runs, law, scales, y):
    out = _result_or_user_error(lambda: fit_command(quickstart_runs, law, y, n_boot=30, **scales))
    if isinstance(out, UserError):
        assert "did not converge" in str(out) or "single value" in str(out)
        return
    for entry in out.values():
        assert set(entry) == {"value", "ci_low", "ci_high"}
    assert isinstance(out.notes, list)


def test_the_cli_fits_the_quickstart_table_without_a_traceback(quickstart_runs):
    for law, scales, y in [QUICKSTART_FITS[i] for i in (0, 1, 3)]:
        options = [f"--{k}={v}" for k, v in scales.items()]
        result = CliRunner().invoke(app, ["fit", str(quickstart_runs), "--law", law, "--y", y, *options])
        assert result.exit_code in (0, 2), (law, y, result.output, result.exception)
        assert "Traceback" not in result.output


def test_overflowing_resamples_are_left_out_and_said():
    """A resample whose fit overflows counts as not converged; the notes say how many."""
    calls = iter(range(10**6))

    def flaky(x, y):
        if next(calls) % 3 == 0:
            raise OverflowError("math range error")
        return np.array([0.0, math.inf if next(calls) % 5 == 0 else 1.0, 0.5])

    notes: list[str] = []
    arrays = (np.arange(1.0, 9.0), np.arange(1.0, 9.0))
    boot = fits._bootstrap(flaky, arrays, 30, 0, notes)
    assert len(boot) < 30 and np.all(np.isfinite(boot))
    assert notes and "did not converge or overflowed" in notes[0]


def test_too_few_converged_resamples_give_a_nan_interval_with_a_note(monkeypatch):
    monkeypatch.setattr(fits, "_power_once", _overflow_after_first(fits._power_once))
    x = np.logspace(1, 4, 8)
    fit = fits.fit_power_law(x, 1 + 3 * x**-0.5, n_boot=20)
    assert math.isfinite(fit.params["alpha"])
    assert all(math.isnan(lo) and math.isnan(hi) for lo, hi in fit.ci.values())
    assert any("no interval" in note for note in fit.notes)
    assert all(math.isnan(v) for v in fit.crossing(2.0)[1:])


def _overflow_after_first(real):
    state = {"calls": 0}

    def once(x, y, start=None):
        state["calls"] += 1
        if state["calls"] > 1:
            raise OverflowError("math range error")
        return real(x, y, start)

    return once


def test_a_point_fit_that_overflows_is_a_clear_error():
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    with pytest.raises(fits.FitFailed, match="did not converge"):
        fits.fit_power_law(x, np.array([1e308, -1e308, 1e308, -1e308, 1e308]), n_boot=5)


def test_dropped_rows_are_noted_and_a_single_scale_is_refused():
    x = np.array([1.0, 10, 100, 1000, np.nan, -5, 10000])
    y = np.array([3.0, 2, 1.5, 1.2, 1.0, 1.0, np.inf])
    fit = fits.fit_power_law(x, y, n_boot=0)
    assert any("3 of 7 rows dropped" in note for note in fit.notes)
    with pytest.raises(UserError, match="single value"):
        fits.fit_power_law([5, 5, 5, 5, 5], [1, 2, 3, 4, 5], n_boot=0)
    with pytest.raises(UserError, match="at least 4 usable points"):
        fits.fit_chinchilla([1, 2, 3, 4], [1, 2, 3, 4], [1, -1, 0, 2], n_boot=0)


# --- fuzzing ---------------------------------------------------------------------------------

cell = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 1.0, 1e-300, 1e300, -1e300, math.nan, math.inf, -math.inf]),
    st.floats(1e-3, 1e6),
    st.integers(-(10**6), 10**12),
    st.sampled_from(["", "abc", "nan", "inf", "-inf", "1e999", " ", "True"]),
)


@st.composite
def tables(draw) -> pd.DataFrame:
    """A table of 1-12 rows with columns x, n, d, y; any column may be constant."""
    rows = draw(st.one_of(st.integers(1, 3), st.integers(4, 12)))
    frame = {}
    for name in ("x", "n", "d", "y"):
        kind = draw(st.sampled_from(["cells", "constant", "scale", "scale"]))
        if kind == "constant":
            frame[name] = [draw(cell)] * rows
        elif kind == "scale":  # a plausible, positive, varying scale, so fits get past the checks
            frame[name] = [10.0 ** draw(st.floats(0, 9)) for _ in range(rows)]
        else:
            frame[name] = [draw(cell) for _ in range(rows)]
    return pd.DataFrame(frame)


OUTCOMES: dict[str, int] = {}


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(tables(), st.sampled_from(fit_command.__globals__["LAWS"]))
def test_fit_on_any_table_is_a_result_or_a_user_error(tmp_path, table, law):
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    scales = dict(x="x") if law != "chinchilla" else dict(n="n", d="d")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fit may not spill numpy warnings either
        out = _result_or_user_error(lambda: fit_command(path, law, "y", n_boot=8, **scales))
    OUTCOMES[type(out).__name__] = OUTCOMES.get(type(out).__name__, 0) + 1
    if not isinstance(out, UserError):
        assert all(set(entry) == {"value", "ci_low", "ci_high"} for entry in out.values())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tables(), st.sampled_from(["higher", "lower"]), st.booleans())
def test_classify_on_any_table_is_a_result_or_a_user_error(tmp_path, table, direction, grouped):
    from scalesweep.analysis.table import classify_table

    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    out = _result_or_user_error(
        lambda: classify_table(
            path,
            axis="x",
            value="y",
            group=["d"] if grouped else [],
            seed=None,
            direction=direction,
            presence=None,
            min_effect=None,
            out_dir=tmp_path / "out",
            n_boot=20,
        )
    )
    if not isinstance(out, UserError):
        _, verdicts = out
        assert {"phenomenon", "verdict"} <= set(verdicts.columns)


def test_the_fuzzing_reached_the_fits():
    """Some random tables got past the input checks to a fit (else the fuzzing tested only _check)."""
    if OUTCOMES:
        assert OUTCOMES.get("FitTable", 0) > 0, OUTCOMES
