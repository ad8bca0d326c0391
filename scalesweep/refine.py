"""Adaptive refinement: spend the next few runs where the verdicts are least sure.

`scalesweep refine SPEC --budget N` reads the sweep's current verdicts and
proposes at most N new runs, in this order of priority:

1. **transition**: a verdict with a transition scale (a regime or sign flip,
   a U shape, an emergence or a vanishing) gets a new scale point at the
   geometric mean of the two measured points that bracket the transition,
   at every seed of the spec, which halves the bracket (in log scale).
2. **seeds**: an inconclusive verdict that says more seeds would decide
   (too few runs to estimate the spread, or a trend that is neither
   significant nor ruled out) gets one more seed at every point of its slice.
3. **beyond**: a shrinkage still present at the largest point, whose
   log-linear trend crosses the presence threshold within `BEYOND`x past the
   range, gets one point at that extrapolated vanishing point, to test it.

Along the derived `compute` axis nothing is proposed (compute is not a knob;
refine along model_size or data_size instead).

**Where the added runs are recorded.** In a sidecar next to the spec,
`sweeps/x.yaml` -> `sweeps/x.refine.yaml` (`sidecar.py`), which
`load_spec` merges into the spec's `refinements`. So every command that
loads the spec (plan, run, status, report, refine again) sees the added
points; a rerun of the original spec neither repeats them (same run key,
already finished) nor loses them; the researcher's spec file stays as
written; and the record can be reviewed and committed with the spec. Why not
a tag on the MLflow parent run: `plan` and `validate` must work without a
tracking store. The resolved spec logged to the parent run (`spec.yaml`)
includes the refinements too. Deleting the sidecar drops the points from the
plan; their runs stay in MLflow.

The proposal logic (`propose`) is pure: a runs table and a verdict table in,
points out, so it is tested without Ray or MLflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scalesweep import sidecar
from scalesweep.analysis.phenomena import Phenomenon, evaluate
from scalesweep.analysis.slices import slices
from scalesweep.plan import plan, refined_run
from scalesweep.sidecar import RefinePoint
from scalesweep.spec import SweepSpec

BEYOND = 4.0  # an extrapolated vanishing point at most this factor past the largest point is "just outside"
MORE_SEEDS = ("no_spread", "not_significant", "below_min_effect", "no_min_effect")  # reasons seeds may decide
KNOBS = ("model_size", "data_size")  # axes a new point can be placed on


@dataclass
class Proposal:
    """A group of runs that answers one question about one verdict."""

    kind: str  # transition | seeds | beyond
    phenomenon: str
    axis: str
    slice: str
    reason: str
    points: list[RefinePoint] = field(default_factory=list)


# ---------------------------------------------------------------- the proposals


def propose(
    spec: SweepSpec,
    runs: pd.DataFrame,
    verdicts: pd.DataFrame,
    phenomena: list[Phenomenon],
    budget: int,
    axes: list[str],
    grid: list[str],
) -> list[Proposal]:
    """At most `budget` new runs (by run key: none planned or proposed twice), most decisive first."""
    by_name = {ph.name: ph for ph in phenomena}
    candidates: dict[str, list[Proposal]] = {"transition": [], "seeds": [], "beyond": []}
    for _, verdict in verdicts.iterrows():
        if verdict["axis"] not in KNOBS or verdict["phenomenon"] not in by_name:
            continue
        group = slice_runs(runs, verdict["axis"], verdict["slice"], axes, grid)
        if group.empty:
            continue
        for make in (_transition, _more_seeds, _beyond):
            proposal = make(spec, verdict, group, by_name[verdict["phenomenon"]])
            if proposal is not None:
                candidates[proposal.kind].append(proposal)
    return _within_budget(spec, [p for kind in candidates.values() for p in kind], budget)


def slice_runs(runs: pd.DataFrame, axis: str, label: str, axes: list[str], grid: list[str]) -> pd.DataFrame:
    """The runs of one verdict's slice, grouped exactly as the classifier grouped them."""
    return next((group for name, group in slices(runs, axis, axes, grid) if name == label), runs.iloc[:0])


def _transition(spec: SweepSpec, verdict: pd.Series, group: pd.DataFrame, ph: Phenomenon) -> Proposal | None:
    scale = float(verdict.get("transition", math.nan))
    if not math.isfinite(scale):
        return None
    values = np.sort(group[verdict["axis"]].unique())
    below, above = values[values <= scale], values[values > scale]
    if not len(below) or not len(above):
        return None
    lo, hi = int(below[-1]), int(above[0])
    middle = round(math.sqrt(lo * hi))
    if not lo < middle < hi:
        return None
    reason = f"transition near {scale:.3g} is bracketed by {lo} and {hi}; a point at {middle} halves the bracket"
    return _proposal("transition", spec, verdict, group, reason, [middle], spec.axes.seed_list)


def _more_seeds(spec: SweepSpec, verdict: pd.Series, group: pd.DataFrame, ph: Phenomenon) -> Proposal | None:
    detail = str(verdict["detail"])
    if verdict["verdict"] != "inconclusive" or str(verdict.get("reason", "")) not in MORE_SEEDS:
        return None
    if str(verdict.get("noise", "")).startswith("scatter of the point means"):  # points are the units: seeds won't help
        return None
    seed = int(max([*group["seed"].dropna().astype(int), *spec.axes.seed_list])) + 1
    values = sorted(int(v) for v in group[verdict["axis"]].unique())
    reason = f"inconclusive for lack of seeds ({detail.split(';')[0]}); seed {seed} at all {len(values)} points"
    return _proposal("seeds", spec, verdict, group, reason, values, [seed])


def _beyond(spec: SweepSpec, verdict: pd.Series, group: pd.DataFrame, ph: Phenomenon) -> Proposal | None:
    if verdict["verdict"] != "shrinkage" or str(verdict.get("reason", "")) == "abrupt_offset":
        return None
    axis = verdict["axis"]
    means = evaluate(group, ph).groupby(axis)["strength"].mean().dropna()
    if len(means) < 2 or not ph.is_present(means.iloc[-1]):
        return None
    slope, intercept = np.polyfit(np.log10(means.index.to_numpy(float)), means.to_numpy(float), 1)
    if slope == 0:
        return None
    crossing = 10 ** ((ph.presence - intercept) / slope)
    last = float(means.index[-1])
    if not last < crossing <= last * BEYOND:
        return None
    point = max(math.ceil(crossing), int(last) + 1)
    reason = f"extrapolated to vanish at {axis} ≈ {crossing:.3g}, just past the largest point {last:g}: test it"
    return _proposal("beyond", spec, verdict, group, reason, [point], spec.axes.seed_list)


def _proposal(
    kind: str, spec: SweepSpec, verdict: pd.Series, group: pd.DataFrame, reason: str, values, seeds
) -> Proposal:
    anchor = _anchor(spec, group, verdict["axis"])
    points = [
        RefinePoint(**{**anchor, verdict["axis"]: int(value)}, seed=int(seed), reason=f"{kind}: {reason}")
        for value in values
        for seed in seeds
    ]
    return Proposal(kind, verdict["phenomenon"], verdict["axis"], verdict["slice"], reason, points)


def _anchor(spec: SweepSpec, group: pd.DataFrame, axis: str) -> dict[str, Any]:
    """The slice's fixed coordinates: the other knob (or the budget) and the grid values."""
    first = group.iloc[0]
    names = [path.split(".")[-1] for path in spec.grid]
    anchor: dict[str, Any] = {"grid": {name: _plain(first[name]) for name in names if name in group.columns}}
    if spec.design.kind == "isoflop":
        anchor["budget"] = float(first["budget"])
    else:
        other = "data_size" if axis == "model_size" else "model_size"
        anchor[other] = int(first[other])
    return anchor


def _plain(value: Any) -> Any:
    """numpy scalars -> Python values, so the sidecar is plain YAML."""
    return value.item() if hasattr(value, "item") else value


def _within_budget(spec: SweepSpec, proposals: list[Proposal], budget: int) -> list[Proposal]:
    """Keep proposals in priority order, each trimmed to runs not yet planned or proposed."""
    seen = {run.run_key for run in plan(spec)}
    kept = []
    for proposal in proposals:
        fresh = []
        for point in proposal.points:
            key = refined_run(spec, point).run_key
            if key not in seen and len(fresh) < budget:
                seen.add(key)
                fresh.append(point)
        if fresh:
            budget -= len(fresh)
            kept.append(Proposal(**{**proposal.__dict__, "points": fresh}))
    return kept


# ---------------------------------------------------------------- recording points


def record(spec_path: Path, proposals: list[Proposal]) -> Path:
    """Append the proposals' points to the spec's refine sidecar (`sidecar.py`); return its path."""
    return sidecar.append_refinements(spec_path, [point for proposal in proposals for point in proposal.points])
