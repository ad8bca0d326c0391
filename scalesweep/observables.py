"""Observables: plain functions that measure a run and return flat rows.

In the spirit of mup's `coord_check.py`, each observable is a small function
with its formula in its docstring. A *step* observable reads an `EvalContext`
at every evaluation and returns `{column: value}`; a *summary* observable reads
the whole history (a tidy DataFrame, one row per evaluation) and the final
model, and returns the run's scalars. One name may have both parts.

An observable may also have an *at_init* part, `(model, data) -> {column: value}`,
that the trainer calls on the freshly initialised model before the first step;
its result reaches the summary as `RunContext.init_stats` (e.g. the coordinate
sizes at initialisation of a muP coord check).

A spec may add its own observable as `module:function`; such a function is a
summary observable `(history, ctx) -> dict[str, float]`, loaded only because
the spec names it.

Observables that read a model's insides use its optional methods (see
`zoo/models.py`): `features`, `layer_outputs`, `feature_weights`,
`attention_patterns`; a model without them gets NaN, not an error.
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
from scalesweep.zoo.base import IGNORE, Dataset, loss_fn_for


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
InitFn = Callable[[torch.nn.Module, Dataset], dict[str, float]]


LEVELS = ("neuron", "weight", "representation", "attention", "output")


@dataclass(frozen=True)
class Observable:
    name: str
    step: StepFn | None = None
    summary: SummaryFn | None = None
    at_init: InitFn | None = None
    level: str = ""  # one of LEVELS: where in the network it looks (`scalesweep list observables`)
    columns: tuple[str, ...] = ()  # the runs-table / step-series columns it writes
    description: str = ""  # one line


OBSERVABLES: dict[str, Observable] = {}


def register(
    name: str,
    *,
    step: StepFn | None = None,
    summary: SummaryFn | None = None,
    at_init: InitFn | None = None,
    level: str = "",
    columns: tuple[str, ...] = (),
    description: str = "",
) -> None:
    if level and level not in LEVELS:
        raise ValueError(f"observable {name}: level {level!r} is not one of {', '.join(LEVELS)}")
    OBSERVABLES[name] = Observable(name, step, summary, at_init, level, columns, description)


def resolve(names: list[str]) -> list[Observable]:
    """Look up observables by name; `module:function` loads a user summary function."""
    return [_load_user(name) if ":" in name else _lookup(name) for name in names]


def _lookup(name: str) -> Observable:
    if name not in OBSERVABLES:
        from scalesweep.errors import unknown_name

        raise unknown_name("observable", name, OBSERVABLES)
    return OBSERVABLES[name]


def _load_user(name: str) -> Observable:
    """Import a user's `module:function` summary. Called only for names the spec lists, so no
    module runs code in a sweep that does not name it."""
    module_name, _, func_name = name.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError, TypeError, ValueError) as err:
        raise UserError(f'cannot load the user observable "{name}" ({err}); give it as module:function.') from None
    if not callable(func):
        raise UserError(f'the user observable "{name}" is not a function; give it as module:function.')
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


def accuracy_of(out: torch.Tensor, y: torch.Tensor) -> float:
    """Share of argmax predictions equal to the label, over scored labels (not IGNORE)."""
    scored = y != IGNORE
    return (out.argmax(-1) == y)[scored].float().mean().item()


def _accuracy(ctx: EvalContext) -> dict[str, float]:
    """train_acc, test_acc: share of argmax predictions equal to the label (per-token
    tasks: over the scored positions)."""
    if ctx.data.kind != "classification":
        return {}
    return {
        "train_acc": accuracy_of(ctx.train_out, ctx.data.y_train),
        "test_acc": accuracy_of(ctx.test_out, ctx.data.y_test),
    }


register(
    "loss",
    step=_loss,
    summary=_final(["train_loss", "test_loss"]),
    level="output",
    columns=("train_loss", "test_loss", "final_train_loss", "final_test_loss"),
    description="the task's loss on each whole split (cross-entropy, MSE or importance-weighted MSE)",
)
register(
    "accuracy",
    step=_accuracy,
    summary=_final(["train_acc", "test_acc"]),
    level="output",
    columns=("train_acc", "test_acc", "final_train_acc", "final_test_acc"),
    description="share of argmax predictions equal to the label (classification only)",
)


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
    delay = (
        math.log10(max(t_test, 1) / max(t_train, 1)) if not (math.isnan(t_train) or math.isnan(t_test)) else math.nan
    )
    return {
        "steps_to_fit_train": t_train,
        "steps_to_fit_test": t_test,
        "fit_train": float(not math.isnan(t_train)),
        "fit_test": float(not math.isnan(t_test)),
        "grokking_delay": delay,
        "step_budget": float(ctx.steps),
    }


register(
    "fit_steps",
    summary=fit_steps,
    level="output",
    columns=("steps_to_fit_train", "steps_to_fit_test", "grokking_delay", "fit_train", "fit_test", "step_budget"),
    description="first eval step with accuracy >= training.fit_threshold per split; grokking_delay = "
    "log10(test / train) (Liu et al. 2022)",
)


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


register(
    "weight_norm",
    step=_weight_norm_step,
    summary=_weight_norm_summary,
    level="weight",
    columns=("weight_norm",),
    description="L2 norm of all parameters (Omnigrok, Liu et al. 2023)",
)
register(
    "grad_norm",
    step=_grad_norm,
    summary=_final(["grad_norm"]),
    level="weight",
    columns=("grad_norm", "final_grad_norm"),
    description="L2 norm of the gradient of the last step before each evaluation",
)


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


register(
    "loss_spikes",
    summary=_loss_spikes,
    level="output",
    columns=("loss_spikes",),
    description="evaluations whose train loss exceeds 2x the median of the previous 5",
)


# ---------------------------------------------------------------- activation scale (muP coord check)

PROBE_SIZE = 1024  # test inputs that the per-eval activation scale is measured on


def rms(x: torch.Tensor) -> float:
    """sqrt(mean(x^2)) over every coordinate."""
    return x.float().pow(2).mean().sqrt().item()


def layer_outputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's `layer_outputs(x)`, or just `{"features": features(x)}`, or {}."""
    if hasattr(model, "layer_outputs"):
        return model.layer_outputs(x)
    return {"features": model.features(x)} if hasattr(model, "features") else {}


@torch.no_grad()
def activation_rms_of(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """{layer: RMS of its output} (Yang et al. 2021's coordinate size)."""
    return {name: rms(out) for name, out in layer_outputs(model, x).items()}


def _activation_rms_columns(prefix: str, per_layer: dict[str, float]) -> dict[str, float]:
    last = list(per_layer.values())[-1] if per_layer else math.nan
    return {prefix: last, **{f"{prefix}.{name}": value for name, value in per_layer.items()}}


def _activation_rms_init(model: torch.nn.Module, data: Dataset) -> dict[str, float]:
    return _activation_rms_columns("activation_rms_init", activation_rms_of(model, data.x_test[:PROBE_SIZE]))


def _activation_rms_step(ctx: EvalContext) -> dict[str, float]:
    """activation_rms: RMS of the last hidden layer's output on the first 1024 test inputs."""
    per_layer = activation_rms_of(ctx.model, ctx.data.x_test[:PROBE_SIZE])
    return {"activation_rms": list(per_layer.values())[-1] if per_layer else math.nan}


def _activation_rms_summary(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
    """activation_rms_init / _final: sqrt(mean(h^2)) of the last hidden layer's output h on
    the first 1024 test inputs, before training and at the end; `.<layer>` columns give
    every layer of `layer_outputs`. In a muP coord check (Yang et al. 2021) these stay
    flat across width under mup and grow with width under sp."""
    final = _activation_rms_columns("activation_rms_final", activation_rms_of(ctx.model, ctx.data.x_test[:PROBE_SIZE]))
    init = {k: v for k, v in ctx.init_stats.items() if k.startswith("activation_rms_init")}
    return {**init, **final}


register(
    "activation_rms",
    step=_activation_rms_step,
    summary=_activation_rms_summary,
    at_init=_activation_rms_init,
    level="representation",
    columns=("activation_rms", "activation_rms_init", "activation_rms_final", "activation_rms_final.<layer>"),
    description="sqrt(mean(h^2)) of each layer's output on 1024 test inputs, at init and after "
    "training (muP coord check, Yang et al. 2021)",
)


# ---------------------------------------------------------------- representation geometry

RANK_ROWS = 4096  # rows (examples, or example-positions) the effective rank is computed on


def effective_rank_of(h: torch.Tensor) -> float:
    """exp(-sum_i p_i log p_i) with p_i = s_i^2 / sum_j s_j^2, s the singular values of the
    centred representation (rows: examples): the exp-entropy of the PCA explained-variance
    ratios (Roy & Vetterli 2007's effective rank on the variance spectrum). Ranges from 1
    (one direction) to min(rows, dims) (isotropic)."""
    h = h.reshape(-1, h.shape[-1]).double()
    h = h - h.mean(0)
    s2 = torch.linalg.svdvals(h).pow(2)
    if float(s2.sum()) <= 0:
        return math.nan
    p = s2 / s2.sum()
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


@torch.no_grad()
def _effective_rank(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
    """effective_rank: effective_rank_of(features) on the test set (first 4096 rows)."""
    if not hasattr(ctx.model, "features"):
        return {"effective_rank": math.nan}
    h = ctx.model.features(ctx.data.x_test)
    return {"effective_rank": effective_rank_of(h.reshape(-1, h.shape[-1])[:RANK_ROWS])}


register(
    "effective_rank",
    summary=_effective_rank,
    level="representation",
    columns=("effective_rank",),
    description="exp of the entropy of the PCA explained-variance ratios of the last hidden representation",
)


@torch.no_grad()
def relu_rates(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Per ReLU unit (the last dim of every nn.ReLU output), the share of inputs (and
    positions) on which it is active (> 0); None when the model has no nn.ReLU."""
    rates: list[torch.Tensor] = []

    def hook(module, inputs, out):
        rates.append((out > 0).float().reshape(-1, out.shape[-1]).mean(0))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(rates) if rates else None


def unit_fractions(rates: torch.Tensor | None) -> dict[str, float]:
    """dead_fraction = share of units with rate 0 (never on); hyperactive_fraction = rate 1
    (always on, i.e. linear); nonlinear_rate = share strictly between (the nonlinear rate)."""
    if rates is None or not len(rates):
        return {"dead_fraction": math.nan, "hyperactive_fraction": math.nan, "nonlinear_rate": math.nan}
    return {
        "dead_fraction": (rates == 0).float().mean().item(),
        "hyperactive_fraction": (rates == 1).float().mean().item(),
        "nonlinear_rate": ((rates > 0) & (rates < 1)).float().mean().item(),
    }


def _dead_fraction(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
    """dead_fraction, hyperactive_fraction, nonlinear_rate of every ReLU unit on the whole test set."""
    return unit_fractions(relu_rates(ctx.model, ctx.data.x_test))


register(
    "dead_fraction",
    summary=_dead_fraction,
    level="neuron",
    columns=("dead_fraction", "hyperactive_fraction", "nonlinear_rate"),
    description="share of ReLU units never active, always active, and in between, on the test set",
)


# ---------------------------------------------------------------- superposition


def features_per_dim_of(w: torch.Tensor, threshold: float = 0.5) -> float:
    """#{i : ||W_:,i|| > threshold} / m for W of shape (m, n): features represented per
    hidden dimension (Elhage et al. 2022); above 1 means superposition."""
    return (w.norm(dim=0) > threshold).sum().item() / w.shape[0]


@torch.no_grad()
def _features_per_dim(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
    """features_per_dim: features_per_dim_of(model.feature_weights()); NaN for models without it."""
    if not hasattr(ctx.model, "feature_weights"):
        return {"features_per_dim": math.nan}
    return {"features_per_dim": features_per_dim_of(ctx.model.feature_weights())}


register(
    "features_per_dim",
    summary=_features_per_dim,
    level="weight",
    columns=("features_per_dim",),
    description="features with ||W[:, i]|| > 0.5 per hidden dimension (toy model of superposition, Elhage et al. 2022)",
)


# ---------------------------------------------------------------- induction heads


def repeated_random_tokens(vocab: int, period: int, repeats: int, batch: int, seed: int = 0) -> torch.Tensor:
    """`batch` sequences, each `period` distinct random tokens repeated `repeats` times."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(vocab, generator=g)[:period] for _ in range(batch)]
    return torch.stack(rows).repeat(1, repeats)


def induction_scores(patterns: list[torch.Tensor], period: int) -> torch.Tensor:
    """Per layer and head, the mean attention from position t >= period to t - period + 1:
    the token after the previous occurrence of the current token (Olsson et al. 2022)."""
    t = patterns[0].shape[-1]
    query = torch.arange(period, t)
    return torch.stack([p[:, :, query, query - period + 1].mean((0, 2)) for p in patterns])


@torch.no_grad()
def _induction_score(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
    """induction_score: max over layers and heads of induction_scores on 16 sequences of
    10 random tokens repeated 5 times (fewer repeats if the context is shorter; NaN
    below 2 repeats, or for models without `attention_patterns`). Chance ~ 1/context."""
    shape, period = ctx.data.shape, 10
    repeats = min(5, shape.seq_len // period)
    if not hasattr(ctx.model, "attention_patterns") or repeats < 2 or shape.vocab < period:
        return {"induction_score": math.nan}
    device = ctx.data.x_test.device
    tokens = repeated_random_tokens(shape.vocab, period, repeats, batch=16).to(device)
    return {"induction_score": induction_scores(ctx.model.attention_patterns(tokens), period).max().item()}


register(
    "induction_score",
    summary=_induction_score,
    level="attention",
    columns=("induction_score",),
    description="attention to the token after the previous occurrence of the current token, max over heads "
    "(Olsson et al. 2022)",
)


# ---------------------------------------------------------------- sharpness

SHARPNESS_ROWS = 1024  # training examples the Hessian is taken on
SHARPNESS_ITERS = 20


def sharpness_of(model: torch.nn.Module, loss: Callable[[], torch.Tensor], iters: int = SHARPNESS_ITERS) -> float:
    """Largest-magnitude eigenvalue of the Hessian of `loss()` in the parameters, by power
    iteration v <- Hv / ||Hv|| with Hessian-vector products (double backward); returns
    the Rayleigh quotient v.Hv (Cohen et al. 2021's sharpness)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss(), params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g).to(p.device) for p in params]
    value = math.nan
    for _ in range(iters):
        norm = math.sqrt(sum(float(u.pow(2).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        value = float(sum((h * u).sum() for h, u in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return value


def _sharpness(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
    """sharpness: sharpness_of the training loss on the first 1024 training examples."""
    x, y = ctx.data.x_train[:SHARPNESS_ROWS], ctx.data.y_train[:SHARPNESS_ROWS]
    loss_fn = loss_fn_for(ctx.data)
    with torch.enable_grad():
        return {"sharpness": sharpness_of(ctx.model, lambda: loss_fn(ctx.model(x), y))}


register(
    "sharpness",
    summary=_sharpness,
    level="weight",
    columns=("sharpness",),
    description="largest Hessian eigenvalue of the training loss, by power iteration (Cohen et al. 2021)",
)
