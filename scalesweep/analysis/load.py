"""Tables in: a CSV of runs, and the column checks every table reader shares.

Everything downstream (phenomena, classifier, report) works on one tidy
table, one row per run, so that a sweep run here and a CSV of published
numbers go through the same analysis. A sweep's table comes from the store
(`store.runs_table`, which alone reads MLflow); any CSV from `runs_from_csv`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from scalesweep.errors import UserError, did_you_mean


def runs_from_csv(path: str | Path) -> pd.DataFrame:
    """Any table of runs: one row per run (or per model), columns of axes and values."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: the table does not exist. Give a CSV file with one row per run.")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CSV table ({err}).") from None


def missing_columns(table: pd.DataFrame, columns: list[str | None]) -> list[str]:
    """The named columns (None: not asked for) that the table lacks, in the order given."""
    return [c for c in columns if c is not None and c not in table.columns]


def require_columns(table: pd.DataFrame, columns: list[str], source: str) -> None:
    """A clear error naming the missing columns and the ones that exist."""
    missing = missing_columns(table, columns)
    if missing:
        hints = "".join(did_you_mean(m, table.columns) for m in missing)
        raise UserError(
            f"{source}: no column {', '.join(repr(m) for m in missing)}{hints}; "
            f"the columns are: {', '.join(map(str, table.columns))}."
        )


def require_option_columns(frame: pd.DataFrame, table: Path, **named: str | None) -> None:
    """Each given command-line option must name a column of the table (the option named in the error)."""
    valid = [str(c) for c in frame.columns]
    for option, column in named.items():
        if missing_columns(frame, [column]):
            raise UserError(
                f'table {table} has no column "{column}" (option --{option.replace("_", "-")})'
                f"{did_you_mean(column, valid)}; columns are: {', '.join(valid)}."
            )
