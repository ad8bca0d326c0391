import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalesweep.analysis.expressions import evaluate, names
from scalesweep.errors import UserError

DF = pd.DataFrame({"a": [1.0, np.nan, 3.0], "b": [2, 2, 2], "flag": [True, False, True]})


def test_arithmetic_functions_and_params():
    np.testing.assert_allclose(evaluate("a * 2 + b ** 2 - 1", DF), [5, np.nan, 9])
    np.testing.assert_allclose(evaluate("log10(a) * gap", DF, {"gap": 10}), [0, np.nan, 10 * np.log10(3)])
    np.testing.assert_allclose(evaluate("where(a > 1, a, -b)", DF), [-2, -2, 3])
    np.testing.assert_allclose(evaluate("maximum(a, b) + minimum(1, b)", DF), [3, np.nan, 4])
    np.testing.assert_allclose(evaluate("-a + abs(-b) + sqrt(4) + exp(0)", DF), [4, np.nan, 2])
    assert evaluate("2", DF).tolist() == [2, 2, 2]


def test_comparisons_with_nan_are_false():
    assert evaluate("a > b", DF).tolist() == [False, False, True]
    assert evaluate("a != b", DF).tolist() == [True, False, True]
    assert evaluate("not (a == 1)", DF).tolist() == [False, True, True]
    assert evaluate("isnan(a) or flag", DF).tolist() == [True, True, True]
    assert evaluate("isfinite(a) and 0 < a < 2", DF).tolist() == [True, False, False]


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os')",
        "a.real",
        "a[0]",
        "lambda: 1",
        "'x'",
        "foo(a)",
        "log(a, b)",
        "[a]",
        "a if b else a",
        "log(x=a)",
    ],
)
def test_anything_else_is_a_user_error(expr):
    with pytest.raises(UserError):
        evaluate(expr, DF)


def test_unknown_column_suggests_a_name():
    with pytest.raises(UserError, match=r'did you mean "flag"'):
        evaluate("flg + 1", DF)


def test_names():
    assert names("log(a) + b * gap - nan") == {"a", "b", "gap"}


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20), st.floats(-1e3, 1e3))
def test_matches_numpy(values, c):
    df = pd.DataFrame({"v": values})
    np.testing.assert_allclose(evaluate("v * 2 - c", df, {"c": c}), np.array(values) * 2 - c)
    assert evaluate("v > c", df, {"c": c}).tolist() == [v > c for v in values]
