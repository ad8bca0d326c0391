"""What a run trains on: a task's tensors (`Dataset`) and the loss it is scored by.

Torch lives here and in `tasks.py` / `models.py`, not in `base.py`: a spec is checked
and planned from the registries alone, without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from scalesweep.zoo.base import IGNORE, DataShape


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


def masked_cross_entropy(out: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the scored positions (not IGNORE) of the rows whose `rows` weight is 1:
    their sum divided by their count (`masked_loss_fn_for`)."""
    scored = (y != IGNORE) * rows.view(-1, *([1] * (y.dim() - 1)))
    picked = out.log_softmax(-1).gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return -(picked * scored).sum() / scored.sum()


def masked_loss_fn_for(data: Dataset) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """`loss_fn_for(data)` over the rows whose `rows` weight is 1, for a vectorised group whose
    members' batches differ in length (padded to the longest, train.Ensemble): each member's loss is
    the sum over its own rows divided by its own count, which is the mean `loss_fn_for` takes (to
    float rounding). Per-token tasks count the scored positions of those rows (IGNORE is left out,
    as F.cross_entropy's ignore_index does); regression counts every output of those rows."""
    if data.kind == "classification":
        return masked_cross_entropy
    weights = data.loss_weights if data.loss_weights is not None else 1.0

    def mse(out: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        mask = rows.view(-1, *([1] * (y.dim() - 1)))
        return ((out - y).pow(2) * weights * mask).sum() / (rows.sum() * y[0].numel())

    return mse
