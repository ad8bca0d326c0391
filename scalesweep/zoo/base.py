"""Registries and the data contract shared by tasks, models and the trainer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict


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


@dataclass
class Dataset:
    """Train and test tensors of one run, plus the loss the task is scored by.

    `loss_weights` (regression only) weights the squared error of each output,
    e.g. the feature importances of the superposition toy model.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    shape: DataShape
    kind: Literal["classification", "regression"]
    loss_weights: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Dataset:
        weights = None if self.loss_weights is None else self.loss_weights.to(device)
        return Dataset(
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.shape,
            self.kind,
            weights,
        )


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean_i -log softmax(out_i)[y_i]: F.cross_entropy written out, because under vmap
    (seed ensembles) F.cross_entropy falls back to a slow Python decomposition."""
    return -out.log_softmax(-1).gather(-1, y.unsqueeze(-1)).mean()


def stacked_cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`cross_entropy` of S stacked models at once: out (S, batch, classes), y (S, batch) -> (S,),
    each model's mean over its batch; what a vectorised group (train.Ensemble) takes when its
    family has a `stacked_forward`, a tenth cheaper a step than vmap over `cross_entropy`."""
    return -out.log_softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1).flatten(1).mean(1)


STACKED_LOSSES = {cross_entropy: stacked_cross_entropy}  # a loss -> its form over stacked models


def loss_fn_for(data: Dataset) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss a task is scored by: cross-entropy (per-token tasks: over the positions
    that are not IGNORE), or mean squared error, weighted per output by `loss_weights`."""
    if data.kind == "classification":
        if data.shape.per_token:
            return lambda out, y: F.cross_entropy(out.flatten(0, -2), y.flatten(), ignore_index=IGNORE)
        return cross_entropy
    if data.loss_weights is not None:
        weights = data.loss_weights
        return lambda out, y: ((out - y).pow(2) * weights).mean()
    return F.mse_loss


def masked_loss_fn_for(data: Dataset) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """`loss_fn_for(data)` over the rows whose `rows` weight is 1, for a vectorised group whose
    members' batches differ in length (padded to the longest, train.Ensemble): each member's loss is
    the sum over its own rows divided by its own count, which is the mean `loss_fn_for` takes (to
    float rounding). Per-token tasks count the scored positions of those rows (IGNORE is left out,
    as F.cross_entropy's ignore_index does); regression counts every output of those rows."""
    if data.kind == "classification":

        def nll(out: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            scored = (y != IGNORE) * rows.view(-1, *([1] * (y.dim() - 1)))
            picked = out.log_softmax(-1).gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            return -(picked * scored).sum() / scored.sum()

        return nll
    weights = data.loss_weights if data.loss_weights is not None else 1.0

    def mse(out: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        mask = rows.view(-1, *([1] * (y.dim() - 1)))
        return ((out - y).pow(2) * weights * mask).sum() / (rows.sum() * y[0].numel())

    return mse


@dataclass(frozen=True)
class TaskInfo:
    name: str
    params_model: type[Params]
    make: Callable[[Params, int, int], Dataset]
    known_for: str
    max_data_size: Callable[[Params], int] | None = None  # tasks with a finite example space


@dataclass(frozen=True)
class FamilyInfo:
    name: str
    params_model: type[Params]
    build: Callable[[Params, int, DataShape, str], torch.nn.Module]
    knob: str
    # the parameter count in closed form, (params, width, shape, parametrization) -> int, refusing
    # what `build` refuses; None: counted on a model built on torch's meta device
    count: Callable[[Params, int, DataShape, str], int] | None = None


TASKS: dict[str, TaskInfo] = {}
FAMILIES: dict[str, FamilyInfo] = {}


def register_task(
    name: str, params_model: type[Params], known_for: str, max_data_size: Callable[[Params], int] | None = None
):
    """Decorator: register `make(params, data_size, seed) -> Dataset` under `name`.

    `max_data_size(params)` lets `validate` refuse a data size the task cannot
    provide, instead of every such run failing later."""

    def wrap(make: Callable[[Params, int, int], Dataset]):
        TASKS[name] = TaskInfo(name, params_model, make, known_for, max_data_size)
        return make

    return wrap


def register_family(
    name: str, params_model: type[Params], knob: str, count: Callable[[Params, int, DataShape, str], int] | None = None
):
    """Decorator: register `build(params, width, shape, parametrization) -> Module`, and optionally
    its parameter count in closed form (`plan.compute` then counts without building a model)."""

    def wrap(build: Callable[[Params, int, DataShape, str], torch.nn.Module]):
        FAMILIES[name] = FamilyInfo(name, params_model, build, knob, count)
        return build

    return wrap
