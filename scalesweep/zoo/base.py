"""The registries of tasks and model families, and the data contract they share, without torch.

A spec names a task and a family; `validate` and `plan` need only what this module
holds about them: their parameters (pydantic models), a task's data shape and size
limit, a family's parameter count in closed form. The torch parts (a task's
generator, a family's builder) are named by import path ("module:function") and
imported on first use, by the workers that train. So checking and planning a spec
never imports torch (about 1.5 s and 280 MiB less in every CLI process).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch

    from scalesweep.zoo.data import Dataset


class Params(BaseModel):
    """Base for a task's or a family's parameters: unknown names are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class DataShape:
    """What a model needs to know about its inputs and outputs.

    `tokens` inputs are integer sequences of length `seq_len` over `vocab`;
    `vectors` inputs are float vectors of size `input_dim`. `per_token` tasks
    have one target per position (labels `(N, seq_len)`, `IGNORE` where a
    position is not scored), so only sequence models can fit them.
    """

    input_kind: Literal["tokens", "vectors"]
    output_dim: int
    vocab: int = 0
    seq_len: int = 0
    input_dim: int = 0
    per_token: bool = False


IGNORE = -100  # label of a position that is not scored (F.cross_entropy's ignore_index)


def load(target: str | Callable[..., Any]) -> Callable[..., Any]:
    """A callable, or the one a "module:function" path names (imported now)."""
    if callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class TaskInfo:
    """A task: its parameters, its generator (a callable or "module:function", called as
    `make(params, data_size, seed) -> Dataset`), what it is known for, its data shape
    from the parameters alone (None: read off a few generated examples) and, for a task
    with a finite example space, the most training examples it can give."""

    name: str
    params_model: type[Params]
    generator: str | Callable[[Any, int, int], Dataset]
    known_for: str
    shape_of: Callable[[Any], DataShape] | None = None
    max_data_size: Callable[[Any], int] | None = None

    def make(self, params: Params, data_size: int, seed: int) -> Dataset:
        return load(self.generator)(params, data_size, seed)


@dataclass(frozen=True)
class FamilyInfo:
    """A model family: its parameters, its builder (a callable or "module:function", called as
    `build(params, width, shape, parametrization) -> nn.Module`), the name of its width knob and
    its parameter count in closed form, refusing what `build` refuses (None: counted on a model
    built on torch's meta device)."""

    name: str
    params_model: type[Params]
    builder: str | Callable[[Any, int, DataShape, str], torch.nn.Module]
    knob: str
    count: Callable[[Any, int, DataShape, str], int] | None = None

    def build(self, params: Params, width: int, shape: DataShape, parametrization: str) -> torch.nn.Module:
        return load(self.builder)(params, width, shape, parametrization)


TASKS: dict[str, TaskInfo] = {}
FAMILIES: dict[str, FamilyInfo] = {}


def add(info: TaskInfo | FamilyInfo) -> None:
    """Put a task or a family in its registry (the built-ins: `task_params.py`, `family_params.py`)."""
    registry: dict[str, Any] = TASKS if isinstance(info, TaskInfo) else FAMILIES
    registry[info.name] = info


def register_task(
    name: str,
    params_model: type[Params],
    known_for: str,
    max_data_size: Callable[[Any], int] | None = None,
    shape_of: Callable[[Any], DataShape] | None = None,
):
    """Decorator: register `make(params, data_size, seed) -> Dataset` under `name` (a task of
    your own; it may import torch at module level, as it is imported to register it).

    `max_data_size(params)` lets `validate` refuse a data size the task cannot
    provide, instead of every such run failing later."""

    def wrap(make: Callable[[Any, int, int], Dataset]):
        add(TaskInfo(name, params_model, make, known_for, shape_of, max_data_size))
        return make

    return wrap


def register_family(
    name: str, params_model: type[Params], knob: str, count: Callable[[Any, int, DataShape, str], int] | None = None
):
    """Decorator: register `build(params, width, shape, parametrization) -> Module`, and optionally
    its parameter count in closed form (`plan.compute` then counts without building a model)."""

    def wrap(build: Callable[[Any, int, DataShape, str], torch.nn.Module]):
        add(FamilyInfo(name, params_model, build, knob, count))
        return build

    return wrap
