"""Registries and the data contract shared by tasks, models and the trainer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base for a task's or a family's parameters: unknown names are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class DataShape:
    """What a model needs to know about its inputs and outputs.

    `tokens` inputs are integer sequences of length `seq_len` over `vocab`;
    `vectors` inputs are float vectors of size `input_dim`.
    """

    input_kind: Literal["tokens", "vectors"]
    output_dim: int
    vocab: int = 0
    seq_len: int = 0
    input_dim: int = 0


@dataclass
class Dataset:
    """Train and test tensors of one run, plus the loss the task is scored by."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    shape: DataShape
    kind: Literal["classification", "regression"]

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.shape,
            self.kind,
        )


@dataclass(frozen=True)
class TaskInfo:
    name: str
    params_model: type[Params]
    make: Callable[[Params, int, int], Dataset]
    known_for: str


@dataclass(frozen=True)
class FamilyInfo:
    name: str
    params_model: type[Params]
    build: Callable[[Params, int, DataShape, str], torch.nn.Module]
    knob: str


TASKS: dict[str, TaskInfo] = {}
FAMILIES: dict[str, FamilyInfo] = {}


def register_task(name: str, params_model: type[Params], known_for: str):
    """Decorator: register `make(params, data_size, seed) -> Dataset` under `name`."""

    def wrap(make: Callable[[Params, int, int], Dataset]):
        TASKS[name] = TaskInfo(name, params_model, make, known_for)
        return make

    return wrap


def register_family(name: str, params_model: type[Params], knob: str):
    """Decorator: register `build(params, width, shape, parametrization) -> Module`."""

    def wrap(build: Callable[[Params, int, DataShape, str], torch.nn.Module]):
        FAMILIES[name] = FamilyInfo(name, params_model, build, knob)
        return build

    return wrap
