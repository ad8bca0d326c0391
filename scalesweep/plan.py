"""From a spec to the list of runs it asks for.

Each `RunConfig` is fully resolved: it holds every value that changes what
the run computes, and nothing else. Its `run_key` is a hash of that content,
so equal keys mean the same run whatever the sweep's name, the order of keys
in the YAML, the order of the grid or of the observables, and whether a
parameter is given at its default; resume and de-duplication rely on it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from scalesweep.spec import RefinePoint, SweepSpec, TrainingSpec
from scalesweep.zoo import FAMILIES, TASKS


class RunConfig(BaseModel):
    """One grid point at one seed: everything the worker needs to train it."""

    model_config = ConfigDict(frozen=True)

    sweep: str
    task: str
    task_params: dict[str, Any]
    family: str
    model_params: dict[str, Any]
    parametrization: str
    model_size: int
    data_size: int
    seed: int
    training: TrainingSpec
    observables: list[str]
    grid: dict[str, Any] = {}

    def content(self) -> dict[str, Any]:
        """What defines the run: everything but the sweep's name and grid labels."""
        return self.model_dump(exclude={"sweep", "grid"}, mode="json")

    @property
    def run_key(self) -> str:
        return stable_hash(self.content())

    @property
    def ensemble_key(self) -> str:
        """Runs that differ only in seed share this key and may train together."""
        content = self.content()
        content.pop("seed")
        return stable_hash(content)

    @property
    def label(self) -> str:
        """A short human name for the point, e.g. `seed=0 w=128 n=2048 wd=0.1` (also the MLflow run
        name: the seed first, so that the UI's cut of a long name never hides it)."""
        parts = [f"seed={self.seed}", f"w={self.model_size}", f"n={self.data_size}"]
        return " ".join(parts + [f"{k}={v}" for k, v in self.grid.items()])

    @property
    def examples_seen(self) -> int:
        """Examples the optimiser sees: steps x batch (a batch as large as the set is the set)."""
        return self.training.steps * min(self.training.batch_size, self.data_size)

    @property
    def compute(self) -> float:
        """Training FLOPs, 6 x measured n_params x tokens seen (examples seen x seq_len for a
        per-token task, x 1 otherwise; see isoflop.compute_of). Not part of the run key."""
        from scalesweep.isoflop import compute_of

        return compute_of(self)

    def axes_row(self) -> dict[str, Any]:
        """The point's coordinates as flat columns of the runs table."""
        return {"model_size": self.model_size, "data_size": self.data_size, "seed": self.seed, **self.grid}


def stable_hash(content: dict[str, Any]) -> str:
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan(spec: SweepSpec) -> list[RunConfig]:
    """Expand the spec into runs: per grid slice, the design's points (grid: model_size x
    data_size x seeds; isoflop: budgets x model sizes x seeds, see isoflop.py), then the
    points `scalesweep refine` added; each run key once."""
    base = spec.model_dump(mode="json", exclude={"design", "refinements"})
    grid_paths = list(spec.grid)
    runs = []
    for grid_values in itertools.product(*spec.grid.values()):
        resolved = _apply_grid(base, dict(zip(grid_paths, grid_values, strict=True)))
        labels = {path.split(".")[-1]: value for path, value in zip(grid_paths, grid_values, strict=True)}
        if spec.design.kind == "isoflop":
            from scalesweep.isoflop import isoflop_runs

            runs.extend(isoflop_runs(spec, resolved, labels))
            continue
        for width, size, seed in itertools.product(spec.axes.model_size, spec.axes.data_size, spec.axes.seed_list):
            runs.append(_run_config(spec.name, resolved, width, size, seed, labels))
    unique: dict[str, RunConfig] = {}
    for run in runs + [_refined(spec, base, point) for point in spec.refinements]:
        unique.setdefault(run.run_key, run)
    return list(unique.values())


def _refined(spec: SweepSpec, base: dict[str, Any], point: RefinePoint) -> RunConfig:
    """The run of a point added by `scalesweep refine`, in its grid slice."""
    paths = {path.split(".")[-1]: path for path in spec.grid}
    resolved = _apply_grid(base, {paths[name]: value for name, value in point.grid.items() if name in paths})
    labels = {name: value for name, value in point.grid.items() if name in paths}
    if point.budget is not None:
        from scalesweep.isoflop import isoflop_run

        return isoflop_run(spec.name, resolved, labels, point.model_size, point.budget, point.seed)
    size = point.data_size if point.data_size is not None else spec.axes.data_size[0]
    return _run_config(spec.name, resolved, point.model_size, size, point.seed, labels)


def _apply_grid(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    resolved = json.loads(json.dumps(base))
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = resolved
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return resolved


def _run_config(
    sweep: str, resolved: dict[str, Any], width: int, size: int, seed: int, labels: dict[str, Any]
) -> RunConfig:
    task, family = resolved["task"]["name"], resolved["model"]["family"]
    return RunConfig(
        sweep=sweep,
        task=task,
        task_params=_canonical(TASKS[task].params_model, resolved["task"]["params"]),
        family=family,
        model_params=_canonical(FAMILIES[family].params_model, resolved["model"]["params"]),
        parametrization=resolved["model"]["parametrization"],
        model_size=width,
        data_size=size,
        seed=seed,
        training=TrainingSpec.model_validate(resolved["training"]),
        observables=sorted(set(resolved["observables"])),
        grid=labels,
    )


def _canonical(params_model: type[BaseModel], params: dict[str, Any]) -> dict[str, Any]:
    """Every parameter, defaults filled in and types coerced: `{p: 11}`, `{p: 11.0, op: "+"}`
    are the same run, so they must hash to the same key."""
    return params_model.model_validate(params).model_dump(mode="json")


def group_by_ensemble(runs: list[RunConfig]) -> list[list[RunConfig]]:
    """Runs that differ only in seed, grouped (in plan order) to train as one task."""
    groups: dict[str, list[RunConfig]] = {}
    for run in runs:
        groups.setdefault(run.ensemble_key, []).append(run)
    return list(groups.values())
