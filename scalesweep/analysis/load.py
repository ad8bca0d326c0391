"""The runs table: one row per run, read from MLflow or from any CSV.

Everything downstream (phenomena, classifier, report) works on this tidy
table, so that a sweep run here and a CSV of published numbers go through
the same analysis.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from scalesweep.errors import UserError

AXIS_COLUMNS = ["model_size", "data_size", "seed"]


def runs_from_mlflow(
    sweep: str, experiment: str, tracking_uri: str | None = None, finished_only: bool = True
) -> pd.DataFrame:
    """Child runs of a sweep as a table: axes and grid values (from `scalesweep.*`
    tags), every metric's latest value, status and ids. One paginated search.
    MLflow is imported here, not at the top: a CSV table needs none of it."""
    from scalesweep import track

    client = track.client_for(tracking_uri, create=False)  # reading never creates a store
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise UserError(
            f'no MLflow experiment "{experiment}" at {client.tracking_uri}: has the sweep run? '
            f"Run `scalesweep run SPEC` first, or pass the --tracking-uri it was recorded to."
        )
    rows = [_row(run) for run in track.search_all(client, found.experiment_id, track.child_query(sweep))]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    if finished_only:
        table = table[table["status"] == "FINISHED"].reset_index(drop=True)
    return table


def _row(run) -> dict:
    from scalesweep import track

    tags = run.data.tags
    prefix = f"{track.TAG}."
    row: dict = {
        "run_id": run.info.run_id,
        "status": run.info.status,
        "run_name": tags.get("mlflow.runName", ""),
        "start_time": run.info.start_time,
    }
    for name, value in tags.items():
        key = name.removeprefix(prefix)
        if name.startswith(prefix) and key not in ("role", "sweep", "ensemble_key", "error"):
            row[key] = value if key == "run_key" else _number(value)  # a hex key may look like 12e4...
    row.update(run.data.metrics)
    return row


def _number(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def runs_from_csv(path: str | Path) -> pd.DataFrame:
    """Any table of runs: one row per run (or per model), columns of axes and values."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: the table does not exist. Give a CSV file with one row per run.")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CSV table ({err}).") from None


def require_columns(table: pd.DataFrame, columns: list[str], source: str) -> None:
    """A clear error naming the missing columns and the ones that exist."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        from scalesweep.errors import did_you_mean

        hints = "".join(did_you_mean(m, table.columns) for m in missing)
        raise UserError(
            f"{source}: no column {', '.join(repr(m) for m in missing)}{hints}; "
            f"the columns are: {', '.join(map(str, table.columns))}."
        )
