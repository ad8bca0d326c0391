"""One run, fully resolved: `RunConfig` and its run key.

Each `RunConfig` holds every value that changes what the run computes, and
nothing else. Its `run_key` is a hash of that content, so equal keys mean the
same run whatever the sweep's name, the order of keys in the YAML, the order of
the grid or of the observables, and whether a parameter is given at its
default; resume and de-duplication rely on it (`ledger.py`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from scalesweep.spec import TrainingSpec
from scalesweep.zoo import FAMILIES, TASKS

STACKED_FIELDS = ("seed", "data_size")  # what may differ within one vectorised group ...
STACKED_TRAINING_FIELDS = ("lr", "weight_decay")  # ... and in its training section


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
    def stack_key(self) -> str:
        """Runs that differ only in seed, data size, learning rate or weight decay share this key:
        every shape is the same, so they may train as one vectorised model (`plan.groups`)."""
        content = self.content()
        for name in STACKED_FIELDS:
            content.pop(name)
        for name in STACKED_TRAINING_FIELDS:
            content["training"].pop(name)
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
        """Training FLOPs, 6 x n_params x tokens seen (examples seen x seq_len for a per-token
        task, x 1 otherwise; see `plan.compute`). Not part of the run key."""
        from scalesweep.plan.compute import compute_of

        return compute_of(self)

    def axes_row(self) -> dict[str, Any]:
        """The point's coordinates as flat columns of the runs table."""
        return {"model_size": self.model_size, "data_size": self.data_size, "seed": self.seed, **self.grid}


def stable_hash(content: dict[str, Any]) -> str:
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def with_values(resolved: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of a resolved spec (a plain dict) with dotted paths set, e.g. {"training.steps": 40}."""
    resolved = json.loads(json.dumps(resolved))
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = resolved
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return resolved


def run_config(
    sweep: str, resolved: dict[str, Any], width: int, size: int, seed: int, labels: dict[str, Any]
) -> RunConfig:
    """The run at (width, size, seed) of a resolved spec (a grid slice's values applied)."""
    task, family = resolved["task"]["name"], resolved["model"]["family"]
    return RunConfig(
        sweep=sweep,
        task=task,
        task_params=canonical(TASKS[task].params_model, resolved["task"]["params"]),
        family=family,
        model_params=canonical(FAMILIES[family].params_model, resolved["model"]["params"]),
        parametrization=resolved["model"]["parametrization"],
        model_size=width,
        data_size=size,
        seed=seed,
        training=TrainingSpec.model_validate(resolved["training"]),
        observables=sorted(set(resolved["observables"])),
        grid=labels,
    )


def canonical(params_model: type[BaseModel], params: dict[str, Any]) -> dict[str, Any]:
    """Every parameter, defaults filled in and types coerced: `{p: 11}`, `{p: 11.0, op: "+"}`
    are the same run, so they must hash to the same key."""
    return params_model.model_validate(params).model_dump(mode="json")


def group_by_ensemble(runs: list[RunConfig]) -> list[list[RunConfig]]:
    """Runs that differ only in seed, grouped (in plan order) to train as one task."""
    groups: dict[str, list[RunConfig]] = {}
    for run in runs:
        groups.setdefault(run.ensemble_key, []).append(run)
    return list(groups.values())
