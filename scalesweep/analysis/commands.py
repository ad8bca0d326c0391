"""The function behind `scalesweep fit`, and the column checks `classify` shares.

Both commands read any CSV, so researchers can classify phenomena and fit laws on
tables that others measured (published results) as well as on exported runs.
Every input problem is a `UserError` naming the file and the valid columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from scalesweep.analysis import fits
from scalesweep.analysis.load import runs_from_csv
from scalesweep.errors import UserError, did_you_mean

LAWS = ("power", "chinchilla", "bnsl")


def require_option_columns(frame: pd.DataFrame, table: Path, **named: str | None) -> None:
    """Each given option must name a column of the table."""
    valid = [str(c) for c in frame.columns]
    for option, column in named.items():
        if column is not None and column not in frame.columns:
            raise UserError(
                f'table {table} has no column "{column}" (option --{option.replace("_", "-")})'
                f"{did_you_mean(column, valid)}; columns are: {', '.join(valid)}."
            )


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
    Rows where `exclude_col` is truthy (1, true, yes) are dropped first. The result's
    `notes` say what the fit left out; a fit that does not converge is a UserError.
    """
    if law not in LAWS:
        raise UserError(f'unknown law "{law}"{did_you_mean(law, LAWS)}; valid laws are: {", ".join(LAWS)}.')
    frame = runs_from_csv(table)
    require_option_columns(frame, table, y=y, x=x, n=n, d=d, exclude_col=exclude_col)
    if exclude_col:
        frame = frame[~_truthy(frame[exclude_col])]
    need = {"power": ("x",), "bnsl": ("x",), "chinchilla": ("n", "d")}[law]
    given = dict(x=x, n=n, d=d)
    for opt in need:
        if given[opt] is None:
            raise UserError(f"law {law} needs --{opt} (a column of {table}).")
    col = {k: pd.to_numeric(frame[v], errors="coerce") for k, v in {**given, "y": y}.items() if v}
    try:
        if law == "power":
            result = fits.fit_power_law(col["x"], col["y"], n_boot=n_boot)
        elif law == "bnsl":
            result = fits.fit_bnsl(col["x"], col["y"], n_boot=n_boot)
        else:
            result = fits.fit_chinchilla(col["n"], col["d"], col["y"], n_boot=n_boot)
    except UserError as err:
        raise type(err)(f"{table}: {err}") from None
    return FitTable(result.table(), notes=result.notes)


class FitTable(dict):
    """{param: {"value", "ci_low", "ci_high"}}, with `notes`: what the fit dropped or could not do
    (rows left out, resamples that did not converge, NaN intervals). The CLI prints the notes."""

    def __init__(self, table: dict, notes: list[str] | None = None):
        super().__init__(table)
        self.notes = list(notes or [])
