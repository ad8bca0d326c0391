"""Designs: how one grid slice's scale points are chosen. Sibling functions, one per
`design.kind`, each from (spec, the slice's resolved spec, its grid labels) to runs.

**grid** (the default): every model_size x data_size x seed.

**isoflop** (Hoffmann et al. 2022, approach 2): a few compute budgets C (FLOPs)
and, for each, every model size N of the `model_size` axis on just enough data
that 6 · N · D ≈ C, where D is the number of tokens seen (examples seen, for a
task with one target per example). The loss along each budget's profile is
U-shaped in log N; its minimum is the compute-optimal size for that budget
(`scalesweep.analysis.isoflop` fits it).

What the IsoFLOP design sets: the trainer's compute is fixed by steps ·
batch_size (minibatches are drawn with replacement from the training set), not
by the training-set size. So the design sets `training.steps` to
round(C / (6 · N · batch_size)) and, because Hoffmann's D is tokens *seen* with
(almost) no repetition, sets `data_size` to the examples seen, steps ·
batch_size: one epoch-like pass, each example drawn about once. D_opt is then
both the unique data and the data seen, as in Chinchilla. The spec must not give
`axes.data_size` for this design (the spec loader says so). N is measured (see
`plan.compute`). Integer steps cannot hit C exactly; a point whose compute would
miss C by more than `TOLERANCE` is refused with a clear message (raise the
budget, shrink batch_size, or drop the largest model size).

A new design is one more function here, named in `DESIGNS` (and a `kind` in
`spec.DesignSpec`); `refined_point` places a `scalesweep refine` point in either.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from scalesweep.errors import UserError
from scalesweep.flops import FLOPS_PER_PARAM_TOKEN
from scalesweep.plan.compute import n_params_of, steps_for, tokens_per_example
from scalesweep.plan.runconfig import RunConfig, run_config, with_values
from scalesweep.sidecar import RefinePoint
from scalesweep.spec import SweepSpec

TOLERANCE = 0.05  # largest relative miss of the budget an IsoFLOP point may have


def grid_points(spec: SweepSpec, resolved: dict[str, Any], labels: dict[str, Any]) -> list[RunConfig]:
    """One grid slice of a grid design: model sizes x data sizes x seeds."""
    axes = spec.axes
    return [
        run_config(spec.name, resolved, width, size, seed, labels)
        for width, size, seed in itertools.product(axes.model_size, axes.data_size, axes.seed_list)
    ]


def isoflop_points(spec: SweepSpec, resolved: dict[str, Any], labels: dict[str, Any]) -> list[RunConfig]:
    """One grid slice of an IsoFLOP design: budgets x model sizes x seeds."""
    return [
        isoflop_run(spec.name, resolved, labels, width, budget, seed)
        for budget in spec.design.budgets
        for width in spec.axes.model_size
        for seed in spec.axes.seed_list
    ]


DESIGNS: dict[str, Callable[[SweepSpec, dict[str, Any], dict[str, Any]], list[RunConfig]]] = {
    "grid": grid_points,
    "isoflop": isoflop_points,
}


def isoflop_run(
    sweep: str, resolved: dict[str, Any], labels: dict[str, Any], width: int, budget: float, seed: int
) -> RunConfig:
    """The run of one (budget, model size, seed): steps and data_size set from the budget."""
    n = n_params_of(
        resolved["task"]["name"], resolved["task"]["params"], resolved["model"]["family"],
        resolved["model"]["params"], resolved["model"]["parametrization"], width,
    )  # fmt: skip
    batch = int(resolved["training"]["batch_size"])
    tokens = tokens_per_example(resolved["task"]["name"], resolved["task"]["params"])
    steps = steps_for(budget, n, batch, tokens)
    miss = FLOPS_PER_PARAM_TOKEN * n * steps * batch * tokens / budget - 1
    if abs(miss) > TOLERANCE:
        raise UserError(
            f"isoflop design: budget {budget:.3g} FLOPs at model_size {width} ({n:,} parameters) and batch_size "
            f"{batch} gives {steps} step(s), which miss the budget by {100 * miss:+.0f}% (at most "
            f"{100 * TOLERANCE:.0f}% allowed). Raise the budget, lower training.batch_size, or drop that model size."
        )
    resolved = with_values(resolved, {"training.steps": steps})
    return run_config(sweep, resolved, width, steps * batch, seed, {"budget": budget, **labels})


def refined_point(spec: SweepSpec, base: dict[str, Any], point: RefinePoint) -> RunConfig:
    """The run of a point added by `scalesweep refine`, in its grid slice (`base`: the resolved
    spec before any grid value is applied)."""
    paths = {path.split(".")[-1]: path for path in spec.grid}
    resolved = with_values(base, {paths[name]: value for name, value in point.grid.items() if name in paths})
    labels = {name: value for name, value in point.grid.items() if name in paths}
    if point.budget is not None:
        return isoflop_run(spec.name, resolved, labels, point.model_size, point.budget, point.seed)
    size = point.data_size if point.data_size is not None else spec.axes.data_size[0]
    return run_config(spec.name, resolved, point.model_size, size, point.seed, labels)
