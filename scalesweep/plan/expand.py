"""From a spec to the list of runs it asks for: `plan(spec)`.

Per grid slice (the product of the spec's `grid` values), the design's points
(`designs.DESIGNS[spec.design.kind]`), then the points `scalesweep refine`
added (`spec.refinements`); each run key once, in that order.
"""

from __future__ import annotations

import itertools
from typing import Any

from scalesweep.plan.designs import DESIGNS, refined_point
from scalesweep.plan.runconfig import RunConfig, with_values
from scalesweep.sidecar import RefinePoint
from scalesweep.spec import SweepSpec


def base_of(spec: SweepSpec) -> dict[str, Any]:
    """The spec as the plain dict every run is resolved from (no design, no refinements)."""
    return spec.model_dump(mode="json", exclude={"design", "refinements"})


def plan(spec: SweepSpec) -> list[RunConfig]:
    """Expand the spec into runs: per grid slice, the design's points (grid: model_size x
    data_size x seeds; isoflop: budgets x model sizes x seeds, see designs.py), then the
    points `scalesweep refine` added; each run key once."""
    base = base_of(spec)
    grid_paths = list(spec.grid)
    design = DESIGNS[spec.design.kind]
    runs = []
    for grid_values in itertools.product(*spec.grid.values()):
        resolved = with_values(base, dict(zip(grid_paths, grid_values, strict=True)))
        labels = {path.split(".")[-1]: value for path, value in zip(grid_paths, grid_values, strict=True)}
        runs.extend(design(spec, resolved, labels))
    unique: dict[str, RunConfig] = {}
    for run in runs + [refined_point(spec, base, point) for point in spec.refinements]:
        unique.setdefault(run.run_key, run)
    return list(unique.values())


def refined_run(spec: SweepSpec, point: RefinePoint) -> RunConfig:
    """The run a `scalesweep refine` point would add to the spec's plan."""
    return refined_point(spec, base_of(spec), point)
