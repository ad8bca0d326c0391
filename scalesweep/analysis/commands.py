"""The functions behind `scalesweep classify` and `scalesweep fit`.

Both read any CSV, so researchers can classify phenomena and fit laws on
tables that others measured (published results) as well as on exported runs.
Every input problem is a `UserError` naming the file and the valid columns.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from scalesweep.analysis import fits
from scalesweep.analysis.classify import classify_runs
from scalesweep.analysis.phenomena import Phenomenon
from scalesweep.errors import UserError, did_you_mean

LAWS = ("power", "chinchilla", "bnsl")
VALUE = "_value"


def read_table(table: Path) -> pd.DataFrame:
    """Read a CSV, or raise a `UserError` that says what went wrong."""
    table = Path(table)
    if not table.is_file():
        raise UserError(f"table {table} does not exist (expected a CSV file).")
    try:
        return pd.read_csv(table)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"table {table} is not a readable CSV: {err}") from None


def require_columns(frame: pd.DataFrame, table: Path, **named: str | None) -> None:
    """Each given option must name a column of the table."""
    valid = [str(c) for c in frame.columns]
    for option, column in named.items():
        if column is not None and column not in frame.columns:
            raise UserError(
                f'table {table} has no column "{column}" (option --{option.replace("_", "-")})'
                f"{did_you_mean(column, valid)}; columns are: {', '.join(valid)}."
            )


def classify_command(
    table: Path,
    axis: str,
    value: str,
    group: list[str],
    seed: str | None,
    direction: str,
    presence: float | None,
    min_effect: float | None,
    out: Path,
    n_boot: int = 200,
) -> pd.DataFrame:
    """Classify column `value` along `axis`, one slice per combination of `group`.

    Without `presence` the phenomenon counts as present everywhere (no
    absent / emerges / vanishes); without `min_effect` any significant trend
    counts and persistence cannot be established. Writes `out/verdicts.csv`.
    """
    frame = read_table(table)
    require_columns(frame, table, axis=axis, value=value, seed=seed)
    for g in group or []:
        require_columns(frame, table, group=g)
    if direction not in ("higher", "lower"):
        raise UserError(f'--direction must be "higher" or "lower", not "{direction}".')
    if presence is None:
        presence = -math.inf if direction == "higher" else math.inf
    ph = Phenomenon(
        name=value,
        strength=VALUE,
        direction=direction,
        presence=presence,
        min_effect=min_effect or 0.0,
        description=f"column {value} of {Path(table).name}",
    )
    frame[VALUE] = pd.to_numeric(frame[value], errors="coerce")
    verdicts = classify_runs(frame, [ph], axes=[axis], grid=list(group or []), seed=seed, n_boot=n_boot)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    verdicts.to_csv(out / "verdicts.csv", index=False)
    return verdicts


def _truthy(col: pd.Series) -> np.ndarray:
    num = pd.to_numeric(col, errors="coerce")
    text = col.astype(str).str.strip().str.lower().isin(("true", "yes", "y", "t"))
    return ((num.fillna(0) != 0) | text).to_numpy()


def fit_command(
    table: Path,
    law: str,
    y: str,
    x: str | None = None,
    n: str | None = None,
    d: str | None = None,
    exclude_col: str | None = None,
    n_boot: int = 100,
) -> dict:
    """Fit `law` to the table; returns {param: {"value", "ci_low", "ci_high"}}.

    power: y = E + A x^-alpha (needs x); chinchilla: L = E + A/N^alpha + B/D^beta
    (needs n, d); bnsl: one-break BNSL of Caballero et al. 2022 (needs x).
    Rows where `exclude_col` is truthy (1, true, yes) are dropped first.
    """
    if law not in LAWS:
        raise UserError(f'unknown law "{law}"{did_you_mean(law, LAWS)}; valid laws are: {", ".join(LAWS)}.')
    frame = read_table(table)
    require_columns(frame, table, y=y, x=x, n=n, d=d, exclude_col=exclude_col)
    if exclude_col:
        frame = frame[~_truthy(frame[exclude_col])]
    need = {"power": ("x",), "bnsl": ("x",), "chinchilla": ("n", "d")}[law]
    given = dict(x=x, n=n, d=d)
    for opt in need:
        if given[opt] is None:
            raise UserError(f"law {law} needs --{opt} (a column of {table}).")
    col = {k: pd.to_numeric(frame[v], errors="coerce") for k, v in {**given, "y": y}.items() if v}
    if law == "power":
        result = fits.fit_power_law(col["x"], col["y"], n_boot=n_boot)
    elif law == "bnsl":
        result = fits.fit_bnsl(col["x"], col["y"], n_boot=n_boot)
    else:
        result = fits.fit_chinchilla(col["n"], col["d"], col["y"], n_boot=n_boot)
    return result.table()
