"""`scalesweep classify TABLE.csv`: a phenomenon measured in any table, classified.

Published cross-scale results (one value per model, maybe a few generation
seeds) are tables, not sweeps: this path reads a CSV, checks the columns the
options name, builds an ad-hoc phenomenon whose strength is one column, and
runs the same classifier and report as a sweep. It imports neither torch nor
MLflow, so a table is classified in about a second.

Defaults are per group: where `--presence` or `--min-effect` is not given,
each `--group` combination gets its own (every finite value present; a tenth
of its 10-90 % spread), so BLEU (0-100) and accuracy (0-1) in one table do not
set each other's thresholds. The report says which values were defaulted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scalesweep.analysis import figures
from scalesweep.analysis.classify import slice_jobs, submit_jobs
from scalesweep.analysis.load import require_option_columns, runs_from_csv
from scalesweep.analysis.phenomena import Phenomenon
from scalesweep.analysis.report import ReportHeader, write_report
from scalesweep.errors import UserError

DEFAULT_EFFECT_SHARE = 0.1  # default min_effect: this share of the 10-90 % spread of the group's values


@dataclass
class TableOptions:
    """What `classify` was asked: the columns and the phenomenon's settings."""

    axis: str
    value: str
    group: list[str]
    seed: str | None
    direction: str = "higher"
    presence: float | None = None
    min_effect: float | None = None
    signed: bool = False


def classify_table(
    table: Path,
    *,
    axis: str,
    value: str,
    group: list[str],
    seed: str | None,
    direction: str,
    presence: float | None,
    min_effect: float | None,
    out_dir: Path,
    signed: bool = False,
    n_boot: int = 200,
) -> tuple[Path, pd.DataFrame]:
    """Classify one column of any CSV along one scale column; write the report."""
    opts = TableOptions(axis, value, group, seed, direction, presence, min_effect, signed)
    runs, notes = _usable_rows(table, opts)
    verdicts, defaults = _classify_groups(runs, opts, n_boot)
    study = ReportHeader(
        title=f"scalesweep classify: {value} along {axis} ({table.name})",
        axes=[axis],
        grid=group,
        runs_finished=len(runs),
        notes=notes + defaults,
    )
    phenomenon = _phenomenon(runs, opts)  # for the report's definition and figures: the table-wide one
    return write_report(out_dir, study, runs, [phenomenon], verdicts), verdicts


def _usable_rows(table: Path, opts: TableOptions) -> tuple[pd.DataFrame, list[str]]:
    """The rows with a positive numeric scale and a numeric value; a note counting the rest."""
    runs = runs_from_csv(table)
    require_option_columns(runs, table, axis=opts.axis, value=opts.value, seed=opts.seed)
    for column in opts.group:
        require_option_columns(runs, table, group=column)
    if opts.direction not in ("higher", "lower"):
        raise UserError(f'--direction must be "higher" or "lower", got "{opts.direction}".')
    for option, column in (("axis", opts.axis), ("value", opts.value)):
        _require_numeric(runs, table, option, column)
    x = pd.to_numeric(runs[opts.axis], errors="coerce")
    y = pd.to_numeric(runs[opts.value], errors="coerce")
    no_axis, no_value = ~(x > 0), x.gt(0) & ~np.isfinite(y)
    runs = runs.assign(**{opts.axis: x, opts.value: y})[~no_axis & ~no_value]
    if runs.empty:
        raise UserError(f"{table}: no row has both a positive {opts.axis} and a numeric {opts.value}.")
    if not opts.value.isidentifier():  # expressions name columns by identifiers
        runs = runs.assign(value=runs[opts.value])
    notes = []
    if no_axis.any() or no_value.any():
        notes.append(
            f"{int(no_axis.sum() + no_value.sum())} of {len(no_axis)} rows left out: {int(no_axis.sum())} without a "
            f"positive {opts.axis}, {int(no_value.sum())} without a numeric {opts.value}."
        )
    return runs, notes


def _require_numeric(runs: pd.DataFrame, table: Path, option: str, column: str) -> None:
    if pd.to_numeric(runs[column], errors="coerce").notna().any() or runs[column].isna().all():
        return
    numeric = [str(c) for c in runs.columns if pd.to_numeric(runs[c], errors="coerce").notna().any()]
    example = str(runs[column].dropna().iloc[0])[:40]
    raise UserError(
        f'column "{column}" of {table} (option --{option}) is not numeric (e.g. "{example}"); '
        f"--{option} needs a numeric column: {', '.join(numeric) or 'the table has none'}."
    )


def _classify_groups(runs: pd.DataFrame, opts: TableOptions, n_boot: int) -> tuple[pd.DataFrame, list[str]]:
    """Each group with its own defaults; p-values adjusted once over all of them."""
    groups = runs.groupby(opts.group, dropna=False, sort=True) if opts.group else [((), runs)]
    jobs, defaulted = [], []
    for key, rows in groups:
        ph = _phenomenon(rows, opts)
        jobs += slice_jobs(rows, [ph], [opts.axis], opts.group, seed=opts.seed, n_boot=n_boot)
        defaulted.append(_defaults_note(opts, key, ph))
    waiting = submit_jobs(jobs)  # one pool of slices: across cores when they are many
    figures.pyplot()  # the report's matplotlib imports (~0.3 s) while the workers classify
    verdicts = waiting(0.05)
    notes = [n for n in defaulted if n]
    return verdicts, notes if len(notes) <= 12 else [*notes[:12], f"... and {len(notes) - 12} more groups."]


def _defaults_note(opts: TableOptions, key, ph: Phenomenon) -> str:
    said = []
    if opts.presence is None:
        said.append("presence: every finite value")
    if opts.min_effect is None:
        said.append(f"min_effect {ph.min_effect:.3g} (a tenth of the 10-90 % spread)")
    if not said:
        return ""
    where = ", ".join(f"{c}={v}" for c, v in zip(opts.group, key if isinstance(key, tuple) else (key,), strict=False))
    return f"defaulted{' for ' + where if where else ''}: {'; '.join(said)}"


def _phenomenon(rows: pd.DataFrame, opts: TableOptions) -> Phenomenon:
    """A phenomenon whose strength is one column. Without --presence every finite value
    counts as present; without --min-effect a tenth of the rows' 10-90 % spread counts."""
    column = rows[opts.value].astype(float)
    presence = opts.presence
    if presence is None:
        presence = float(column.min() - 1) if opts.direction == "higher" else float(column.max() + 1)
    min_effect = opts.min_effect
    if min_effect is None:
        spread = float(column.quantile(0.9) - column.quantile(0.1))
        min_effect = DEFAULT_EFFECT_SHARE * spread if math.isfinite(spread) else 0.0
    return Phenomenon(
        name=opts.value,
        description=f"the column {opts.value} of the table",
        strength=opts.value if opts.value.isidentifier() else "value",
        direction=opts.direction,
        presence=presence,
        min_effect=max(min_effect, 0.0),
        signed=opts.signed,
    )
