"""A small, safe expression language over the columns of a runs table.

Phenomena (`scalesweep/phenomena/*.yaml`, a project's `analysis/*.yaml`) are written by researchers as short formulas
("final_train_acc - final_test_acc", "steps_to_fit_test - steps_to_fit_train
< gap"). We never hand such text to `eval`: it is parsed with `ast` and only a
whitelist of node types is interpreted, vectorised with numpy, one value per
row of the table.

Allowed: column names and given parameters (parameters shadow columns of the
same name), numeric literals, `+ - * / ** %`, unary `-`/`+`, comparisons
(chained too), `and`/`or`/`not`, the functions in `FUNCTIONS`, and those over a
run's logged step series in `series.STEP_FUNCTIONS` (first_step, value_at,
series_max, step_of_max, mean_over, ...; see `series.py`). The names
`nan`, `inf` and `pi` are constants. Everything else (attributes, subscripts,
strings, lambdas, other calls such as `__import__('os')`) is a `UserError`.

NaN semantics: arithmetic propagates NaN; every comparison involving NaN is
False (also `!=`), so a run that never reached a threshold (NaN step) matches
no regime condition that compares it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from scalesweep.analysis import series as step_series
from scalesweep.errors import UserError, did_you_mean

if TYPE_CHECKING:  # pandas is imported where a table is read: checking a spec needs none
    import pandas as pd


def _where(cond, a, b):
    return np.where(truth(cond), a, b)


FUNCTIONS = {
    "log": np.log,
    "log10": np.log10,
    "log2": np.log2,
    "exp": np.exp,
    "abs": np.abs,
    "sqrt": np.sqrt,
    "isnan": np.isnan,
    "isfinite": np.isfinite,
    "where": _where,
    "minimum": np.minimum,
    "maximum": np.maximum,
}
_ARITY = {"where": 3, "minimum": 2, "maximum": 2}
CONSTANTS = {"nan": np.nan, "inf": np.inf, "pi": np.pi}

_BINOPS = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.Pow: np.power,
    ast.Mod: np.mod,
}
_CMPOPS = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}


def truth(value) -> np.ndarray:
    """Truth of a value: booleans as is; numbers true when nonzero and not NaN."""
    arr = np.asarray(value)
    if arr.dtype == bool:
        return arr
    arr = arr.astype(float)
    return (arr != 0) & ~np.isnan(arr)


MAX_LENGTH = 2000  # a formula is one line
MAX_DEPTH = 100  # nesting levels; checked explicitly, not left to the interpreter's recursion limit


def _fail(expr: str, why: str) -> UserError:
    shown = expr if len(expr) <= 200 else expr[:197] + "..."
    return UserError(f'invalid expression "{shown}": {why}.')


def parse(expr: str) -> ast.Expression:
    """Parse `expr` and check every node against the whitelist."""
    if not isinstance(expr, str) or not expr.strip():
        raise _fail(str(expr), "it is empty")
    if len(expr) > MAX_LENGTH:
        raise _fail(expr, f"it is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
        if _depth(tree) > MAX_DEPTH:
            raise _fail(expr, f"it nests more than {MAX_DEPTH} levels deep")
        _Checker(expr).visit(tree)
    except SyntaxError as err:
        raise _fail(expr, f"syntax error ({err.msg})") from None
    except ValueError as err:  # e.g. a null byte, on older Pythons
        raise _fail(expr, str(err)) from None
    except (RecursionError, MemoryError):
        raise _fail(expr, "it nests too deeply") from None
    return tree


def _depth(tree: ast.AST) -> int:
    """How deep the tree nests, without recursion (the walkers below recurse)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


class _Checker(ast.NodeVisitor):
    """Reject every construct outside the small language."""

    _OK = (
        ast.Expression,
        ast.BinOp,
        ast.UnaryOp,
        ast.BoolOp,
        ast.Compare,
        ast.Name,
        ast.Constant,
        ast.Call,
        ast.Load,
        ast.And,
        ast.Or,
        ast.Not,
        ast.USub,
        ast.UAdd,
        *_BINOPS,
        *_CMPOPS,
    )

    def __init__(self, expr: str):
        self.expr = expr

    def generic_visit(self, node):
        if not isinstance(node, self._OK):
            raise _fail(self.expr, f"{type(node).__name__} is not allowed here")
        super().generic_visit(node)

    def visit_Constant(self, node):
        ok = isinstance(node.value, int | float) and not isinstance(node.value, complex)
        if not ok:
            raise _fail(self.expr, f"only numbers are allowed as literals, not {node.value!r}")
        if isinstance(node.value, int) and abs(node.value) > 1e308:
            raise _fail(self.expr, "a number in it is too large")

    def visit_Call(self, node):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        allowed = [*FUNCTIONS, *step_series.STEP_FUNCTIONS]  # the latter: over a run's step series
        if name not in allowed:
            shown = name or type(node.func).__name__
            raise _fail(
                self.expr,
                f'"{shown}" is not an allowed function{did_you_mean(shown, allowed)}; '
                f"allowed: {', '.join(sorted(allowed))}",
            )
        if node.keywords:
            raise _fail(self.expr, f"{name}() takes no keyword arguments")
        want = _ARITY.get(name, step_series.STEP_FUNCTIONS.get(name, 1))
        if len(node.args) != want:
            raise _fail(self.expr, f"{name}() takes {want} argument(s), got {len(node.args)}")
        for arg in node.args:
            self.visit(arg)


def names(expr: str) -> set[str]:
    """Names an expression refers to (columns or parameters), not functions; `step` inside a step
    function (the series' own step column) is not one."""
    tree = parse(expr)
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    found = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called and n.id not in CONSTANTS}
    outside = _names_outside_step_calls(tree)
    return found - ({"step"} - outside)


def _names_outside_step_calls(node: ast.AST) -> set[str]:
    if step_series.is_step_call(node):
        return set().union(*(_names_outside_step_calls(a) for a in node.args[1:]))
    own = {node.id} if isinstance(node, ast.Name) else set()
    return own.union(*(_names_outside_step_calls(c) for c in ast.iter_child_nodes(node)))


def _column(df: pd.DataFrame, name: str) -> np.ndarray:
    import pandas as pd

    col = df[name]
    if col.dtype == bool:
        return col.to_numpy(dtype=float)
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


class _Evaluator:
    def __init__(self, expr: str, df: pd.DataFrame, params: Mapping[str, float], series=None):
        self.expr, self.df, self.params = expr, df, dict(params or {})
        self.series = series  # a series.SeriesIndex, for the step functions

    def run(self, node):
        method = getattr(self, "_" + type(node).__name__)
        return method(node)

    def _Expression(self, node):
        return self.run(node.body)

    def _Constant(self, node):
        return float(node.value)

    def _Name(self, node):
        if node.id in self.params:
            return float(self.params[node.id])
        if node.id in self.df.columns:
            return _column(self.df, node.id)
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        valid = sorted(map(str, self.df.columns)) + sorted(self.params)
        raise UserError(
            f'expression "{self.expr}" uses unknown column "{node.id}"'
            f"{did_you_mean(node.id, valid)}; valid columns and parameters are: "
            f"{', '.join(valid)}."
        )

    def _evaluate_on(self, node, frame: pd.DataFrame):
        """A sub-expression on the runs table, or on one run's step series (a step function's argument)."""
        return self.run(node) if frame is self.df else _Evaluator(self.expr, frame, self.params).run(node)

    def _BinOp(self, node):
        return _BINOPS[type(node.op)](self._num(node.left), self._num(node.right))

    def _num(self, node):
        val = self.run(node)
        return val.astype(float) if isinstance(val, np.ndarray) else val

    def _UnaryOp(self, node):
        if isinstance(node.op, ast.Not):
            return ~truth(self.run(node.operand))
        val = self._num(node.operand)
        return -val if isinstance(node.op, ast.USub) else val

    def _BoolOp(self, node):
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        result = truth(self.run(node.values[0]))
        for value in node.values[1:]:
            result = combine(result, truth(self.run(value)))
        return result

    def _Compare(self, node):
        left = self._num(node.left)
        result = np.asarray(True)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = self._num(comp)
            valid = ~(np.isnan(left) | np.isnan(right))
            result = result & valid & _CMPOPS[type(op)](left, right)
            left = right
        return result

    def _Call(self, node):
        if node.func.id in step_series.STEP_FUNCTIONS:
            return step_series.call(node.func.id, node, self.expr, self.df, self.params, self.series, self._evaluate_on)
        args = [self._num(a) if node.func.id != "where" else self.run(a) for a in node.args]
        return FUNCTIONS[node.func.id](*args)


def evaluate(expr: str, df: pd.DataFrame, params: Mapping[str, float] | None = None, series=None) -> np.ndarray:
    """Evaluate `expr` row-wise over `df`; returns an array of len(df).

    Numeric results are float arrays, conditions are bool arrays. Raises
    `UserError` for anything outside the language or for unknown names.
    `series` (or `df.attrs["step_series"]`, see `series.attach`): the runs'
    step series, a long table of run_id, step and metrics (or a
    `series.StepSeries`), which the step functions read (see `series.py`).
    """
    tree = parse(expr)
    if series is None:
        series = df.attrs.get(step_series.SERIES_ATTR)
    index = step_series.index_of(series) if series is not None and _uses_steps(tree) else None
    try:
        with np.errstate(all="ignore"):
            value = _Evaluator(expr, df, params or {}, index).run(tree)
    except RecursionError:
        raise _fail(expr, "it nests too deeply") from None
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = np.full(len(df), arr.item(), dtype=arr.dtype)
    return arr


def _uses_steps(tree: ast.AST) -> bool:
    return any(step_series.is_step_call(node) for node in ast.walk(tree))


def check_names(expr: str, columns: Iterable[str], params: Mapping[str, float] | None) -> None:
    """Raise `UserError` if `expr` refers to a name that is neither column nor param."""
    known = set(map(str, columns)) | set(params or {})
    for name in sorted(names(expr)):
        if name not in known:
            valid = sorted(known)
            raise UserError(
                f'expression "{expr}" uses unknown column "{name}"'
                f"{did_you_mean(name, valid)}; valid columns and parameters are: "
                f"{', '.join(valid)}."
            )
