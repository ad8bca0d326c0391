"""From a spec to the list of runs it asks for.

Each `RunConfig` is fully resolved: it holds every value that changes what
the run computes, and nothing else. Its `run_key` is a hash of that content,
so equal keys mean the same run whatever the sweep's name, the order of keys
in the YAML, or the order of the grid; resume and de-duplication rely on it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from scalesweep.spec import SweepSpec, TrainingSpec


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
        """A short human name for the point, e.g. `w=128 n=2048 wd=0.1 seed=0`."""
        parts = [f"w={self.model_size}", f"n={self.data_size}"]
        parts += [f"{k}={v}" for k, v in self.grid.items()]
        return " ".join(parts + [f"seed={self.seed}"])

    def axes_row(self) -> dict[str, Any]:
        """The point's coordinates as flat columns of the runs table."""
        return {"model_size": self.model_size, "data_size": self.data_size, "seed": self.seed, **self.grid}


def stable_hash(content: dict[str, Any]) -> str:
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan(spec: SweepSpec) -> list[RunConfig]:
    """Expand the spec into runs: model_size x data_size x grid x seeds."""
    base = spec.model_dump(mode="json")
    grid_paths = list(spec.grid)
    runs = []
    for grid_values in itertools.product(*spec.grid.values()):
        resolved = _apply_grid(base, dict(zip(grid_paths, grid_values, strict=True)))
        labels = {path.split(".")[-1]: value for path, value in zip(grid_paths, grid_values, strict=True)}
        for width, size, seed in itertools.product(spec.axes.model_size, spec.axes.data_size, spec.axes.seed_list):
            runs.append(_run_config(spec.name, resolved, width, size, seed, labels))
    return runs


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
    return RunConfig(
        sweep=sweep,
        task=resolved["task"]["name"],
        task_params=resolved["task"]["params"],
        family=resolved["model"]["family"],
        model_params=resolved["model"]["params"],
        parametrization=resolved["model"]["parametrization"],
        model_size=width,
        data_size=size,
        seed=seed,
        training=TrainingSpec.model_validate(resolved["training"]),
        observables=resolved["observables"],
        grid=labels,
    )


def group_by_ensemble(runs: list[RunConfig]) -> list[list[RunConfig]]:
    """Runs that differ only in seed, grouped (in plan order) to train as one task."""
    groups: dict[str, list[RunConfig]] = {}
    for run in runs:
        groups.setdefault(run.ensemble_key, []).append(run)
    return list(groups.values())
