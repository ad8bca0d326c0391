"""Observables: plain functions that measure a run and return flat rows.

In the spirit of mup's `coord_check.py`, each observable is a small function
with its formula in its docstring. A *step* observable reads an `EvalContext`
at every evaluation and returns `{column: value}`; a *summary* observable reads
the whole history (a tidy DataFrame, one row per evaluation) and the final
model, and returns the run's scalars. One name may have both parts.

A spec may add its own observable as `module:function`; such a function is a
summary observable `(history, ctx) -> dict[str, float]`, loaded only because
the spec names it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from scalesweep.errors import UserError
from scalesweep.zoo.base import Dataset


@dataclass
class EvalContext:
    """What one evaluation sees: the model, its data and its outputs on both splits."""

    step: int
    model: torch.nn.Module
    data: Dataset
    train_out: torch.Tensor
    test_out: torch.Tensor
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    grad_norm: float = float("nan")


@dataclass
class RunContext:
    """What a summary sees besides the history: the final model and run facts."""

    model: torch.nn.Module
    data: Dataset
    steps: int
    fit_threshold: float
    init_stats: dict[str, float] = field(default_factory=dict)


StepFn = Callable[[EvalContext], dict[str, float]]
SummaryFn = Callable[[pd.DataFrame, RunContext], dict[str, float]]


@dataclass(frozen=True)
class Observable:
    name: str
    step: StepFn | None = None
    summary: SummaryFn | None = None


OBSERVABLES: dict[str, Observable] = {}


def register(name: str, *, step: StepFn | None = None, summary: SummaryFn | None = None) -> None:
    OBSERVABLES[name] = Observable(name, step, summary)


def resolve(names: list[str]) -> list[Observable]:
    """Look up observables by name; `module:function` loads a user summary function."""
    return [_load_user(name) if ":" in name else _lookup(name) for name in names]


def _lookup(name: str) -> Observable:
    if name not in OBSERVABLES:
        from scalesweep.errors import unknown_name

        raise unknown_name("observable", name, OBSERVABLES)
    return OBSERVABLES[name]


def _load_user(name: str) -> Observable:
    module_name, _, func_name = name.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as err:
        raise UserError(f'cannot load the user observable "{name}" ({err}); give it as module:function.') from None
    return Observable(name, summary=func)


# ---------------------------------------------------------------- loss, accuracy


def _loss(ctx: EvalContext) -> dict[str, float]:
    """train_loss, test_loss: the task's loss (cross-entropy or MSE) on each whole split."""
    return {
        "train_loss": ctx.loss_fn(ctx.train_out, ctx.data.y_train).item(),
        "test_loss": ctx.loss_fn(ctx.test_out, ctx.data.y_test).item(),
    }


def _final(columns: list[str]) -> SummaryFn:
    def summary(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
        last = history.iloc[-1] if len(history) else {}
        return {f"final_{c}": float(last.get(c, math.nan)) for c in columns}

    return summary


def _accuracy(ctx: EvalContext) -> dict[str, float]:
    """train_acc, test_acc: share of argmax predictions equal to the label."""
    if ctx.data.kind != "classification":
        return {}
    return {
        "train_acc": (ctx.train_out.argmax(-1) == ctx.data.y_train).float().mean().item(),
        "test_acc": (ctx.test_out.argmax(-1) == ctx.data.y_test).float().mean().item(),
    }


register("loss", step=_loss, summary=_final(["train_loss", "test_loss"]))
register("accuracy", step=_accuracy, summary=_final(["train_acc", "test_acc"]))


# ---------------------------------------------------------------- fit steps, grokking


def first_step_reaching(history: pd.DataFrame, column: str, threshold: float) -> float:
    """First evaluated step whose `column` is >= threshold, NaN if never (Liu et al. 2022)."""
    if column not in history:
        return math.nan
    reached = history.loc[history[column] >= threshold, "step"]
    return float(reached.iloc[0]) if len(reached) else math.nan


def fit_steps(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
    """steps_to_fit_train / _test: first eval step with accuracy >= fit_threshold;
    grokking_delay = log10(steps_to_fit_test / steps_to_fit_train), NaN unless both
    are reached. Step 0 counts as step 1 so that the ratio stays finite."""
    t_train = first_step_reaching(history, "train_acc", ctx.fit_threshold)
    t_test = first_step_reaching(history, "test_acc", ctx.fit_threshold)
    delay = math.log10(max(t_test, 1) / max(t_train, 1)) if not (math.isnan(t_train) or math.isnan(t_test)) else math.nan
    return {
        "steps_to_fit_train": t_train,
        "steps_to_fit_test": t_test,
        "fit_train": float(not math.isnan(t_train)),
        "fit_test": float(not math.isnan(t_test)),
        "grokking_delay": delay,
        "step_budget": float(ctx.steps),
    }


register("fit_steps", summary=fit_steps)


# ---------------------------------------------------------------- norms


def weight_norm_of(model: torch.nn.Module) -> float:
    """sqrt(sum of squares of every parameter): the L2 norm of the flattened weights."""
    with torch.no_grad():
        return math.sqrt(sum(float(p.pow(2).sum()) for p in model.parameters()))


def _weight_norm_step(ctx: EvalContext) -> dict[str, float]:
    """weight_norm: L2 norm of all parameters (Omnigrok's L-shaped / U-shaped curves)."""
    return {"weight_norm": weight_norm_of(ctx.model)}


def _weight_norm_summary(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
    return {"weight_norm": weight_norm_of(ctx.model)}


def _grad_norm(ctx: EvalContext) -> dict[str, float]:
    """grad_norm: L2 norm of the gradient of the last training step before this eval."""
    return {"grad_norm": ctx.grad_norm}


register("weight_norm", step=_weight_norm_step, summary=_weight_norm_summary)
register("grad_norm", step=_grad_norm, summary=_final(["grad_norm"]))


# ---------------------------------------------------------------- loss spikes


def count_loss_spikes(losses: Any, k: float = 2.0, window: int = 5) -> int:
    """Number of evaluations whose loss exceeds k times the median of the previous
    `window` evaluations (a spike relative to the recent past, not the start)."""
    values = np.asarray(losses, dtype=float)
    spikes = 0
    for i in range(1, len(values)):
        recent = values[max(0, i - window) : i]
        recent = recent[np.isfinite(recent)]
        if len(recent) and np.isfinite(values[i]) and values[i] > k * np.median(recent):
            spikes += 1
    return spikes


def _loss_spikes(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
    """loss_spikes: count_loss_spikes over the train-loss series (k = 2, window = 5)."""
    if "train_loss" not in history:
        return {}
    return {"loss_spikes": float(count_loss_spikes(history["train_loss"]))}


register("loss_spikes", summary=_loss_spikes)
