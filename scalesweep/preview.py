"""Plan preview: what a sweep will cost before it runs.

`scalesweep plan` shows the number of runs and their estimated compute
(6 · n_params · tokens seen, `RunConfig.compute`) for any design, and, once
some runs of the sweep have finished in the tracking store, the time the
rest should take, from the finished runs' measured `train_seconds`.

Small models on a CPU are dominated by per-step overhead, large ones by
FLOPs, so the run time is modelled as seconds = a · steps + b · FLOPs, fitted
by non-negative least squares (`scipy.optimize.nnls`) over finished runs: a
FLOPs-only rate would be off by orders of magnitude across widths.
The preview never creates a tracking store: it reads one only if the sqlite
file exists or the server answers.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from scalesweep.plan import RunConfig
from scalesweep.spec import SweepSpec


@dataclass
class TimeEstimate:
    finished: int  # runs measured
    remaining: int  # planned runs not finished yet
    run_seconds: float  # summed over the remaining runs
    slots: int  # runs this machine trains at once
    wall_seconds: float


def estimate_time(spec: SweepSpec, runs: list[RunConfig], tracking_uri: str | None) -> TimeEstimate | None:
    """Time left for the planned runs, from the finished ones (None when none has finished)."""
    from scalesweep.uris import existing_store

    uri = existing_store(tracking_uri or spec.tracking.uri)
    if uri is None:
        return None
    from scalesweep import store
    from scalesweep.errors import UserError
    from scalesweep.ledger import Ledger

    try:
        done = store.runs_table(spec.name, spec.experiment_name, uri)
    except UserError:  # no experiment for this sweep yet
        return None
    if done.empty or "train_seconds" not in done.columns:
        return None
    by_key = {run.run_key: run for run in runs}
    current, _ = Ledger.from_table(done).current(by_key)  # each planned key's current finished run
    done = done[done["run_id"].isin(set(current.values()))]
    measured = [(by_key[k], s) for k, s in _per_run_seconds(done) if k in by_key]
    if not measured:
        return None
    rate = fit_rate([run for run, _ in measured], [s for _, s in measured])
    finished = {run.run_key for run, _ in measured}
    left = [run for run in runs if run.run_key not in finished]
    run_seconds = float(sum(rate @ _features(run) for run in left))
    slots = parallel_slots(spec)
    return TimeEstimate(len(measured), len(left), run_seconds, slots, run_seconds / slots)


def _per_run_seconds(done) -> list[tuple[str, float]]:
    """A seed ensemble trains together; its `train_seconds` is shared by its `ensemble_size` runs."""
    size = done["ensemble_size"] if "ensemble_size" in done.columns else 1.0
    seconds = (done["train_seconds"] / size).astype(float)
    keys = done["run_key"].astype(str) if "run_key" in done.columns else []
    return [(k, s) for k, s in zip(keys, seconds, strict=False) if math.isfinite(s)]


def _features(run: RunConfig) -> np.ndarray:
    return np.array([run.training.steps, run.compute], dtype=float)


def fit_rate(runs: list[RunConfig], seconds: list[float]) -> np.ndarray:
    """(seconds per step, seconds per FLOP), non-negative, scaled so both columns weigh alike."""
    from scipy.optimize import nnls  # here: `run` shows its axis warnings without scipy

    x = np.stack([_features(run) for run in runs])
    scale = np.maximum(x.max(axis=0), 1e-30)
    coef, _ = nnls(x / scale, np.asarray(seconds, dtype=float))
    return coef / scale


def parallel_slots(spec: SweepSpec) -> int:
    """Runs trained at once on this machine: CPUs per run, capped by max_concurrent."""
    slots = max(1, int((os.cpu_count() or 1) // spec.resources.cpus_per_run))
    return min(slots, spec.resources.max_concurrent or slots)


def format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def axis_warnings(spec: SweepSpec, runs: list[RunConfig]) -> list[str]:
    """The design's axes whose verdicts can only be inconclusive: fewer than 3 scale points, or
    less than a 4x span (DESIGN.md, classifier rule 1), said before compute is spent on them.
    An axis held at one value is no axis (nothing is classified along it), so it is not warned of."""
    from scalesweep.analysis.axis_rules import MIN_POINTS, MIN_SPAN

    axes = ["model_size"] if spec.design.kind == "isoflop" else ["model_size", "data_size"]
    warnings = []
    for axis in axes:
        values = sorted({getattr(run, axis) for run in runs})
        if len(values) < 2:
            continue
        span = values[-1] / values[0]
        problems = []
        if len(values) < MIN_POINTS:
            problems.append(f"{len(values)} points (needs {MIN_POINTS})")
        if span < MIN_SPAN * (1 - 1e-9):
            problems.append(f"a {span:.2g}x span (needs {MIN_SPAN:g}x)")
        if problems:
            shown = ", ".join(str(v) for v in values)
            warnings.append(
                f"axis {axis} [{shown}] has {' and '.join(problems)}: every verdict along {axis} can only be "
                f"inconclusive. For verdicts, give it at least {MIN_POINTS} points spanning {MIN_SPAN:g}x or more, "
                f"e.g. [{', '.join(str(v) for v in _suggest(values, MIN_POINTS, MIN_SPAN))}]."
            )
    return warnings


def _suggest(values: list[int], points: int, span: float) -> list[int]:
    """Geometric points from the smallest value over at least `span`x (to the largest if wider)."""
    low, high = values[0], max(values[-1], math.ceil(values[0] * span))
    n = max(points, len(values))
    return sorted({round(low * (high / low) ** (i / (n - 1))) for i in range(n)})
