"""Observables: plain functions that measure a run and return flat rows.

In the spirit of mup's `coord_check.py`, each observable is a small function
with its formula in its docstring. A *step* observable reads an `EvalContext`
at every evaluation and returns `{column: value}`; a *summary* observable reads
the whole history (a tidy DataFrame, one row per evaluation) and the final
model, and returns the run's scalars. One name may have both parts.

An observable may also have an *at_init* part, `(model, data) -> {column: value}`,
that the trainer calls on the freshly initialised model before the first step;
its result reaches the summary as `RunContext.init_stats` (e.g. the coordinate
sizes at initialisation of a muP coord check, or a copy of the initial weights
that `weight_displacement` compares the final ones with; only what a summary
returns is recorded).

Each built-in observable declares its *level* (`LEVELS`: where in the network
it looks) and, where it does not apply everywhere, the model families and tasks
it applies to; `scalesweep validate` refuses a spec that lists it elsewhere
(`does_not_apply`, called from `checks.py`).

A spec may add its own observable as `module:function`; such a function is a
summary observable `(history, ctx) -> dict[str, float]`, loaded only because
the spec names it.

Observables that read a model's insides use its optional methods (see
`zoo/models.py`): `features`, `layer_outputs`, `feature_weights`,
`attention_patterns`; a model without them gets NaN, not an error.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from scalesweep.errors import UserError
from scalesweep.zoo.base import IGNORE

if TYPE_CHECKING:  # torch and pandas are imported where an observable runs, not to read the registry
    import pandas as pd
    import torch

    from scalesweep.zoo.data import Dataset


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
    init_stats: dict[str, Any] = field(default_factory=dict)  # what the at-init parts measured


@dataclass
class RunContext:
    """What a summary sees besides the history: the final model and run facts."""

    model: torch.nn.Module
    data: Dataset
    steps: int
    fit_threshold: float
    init_stats: dict[str, Any] = field(default_factory=dict)  # floats, and tensors under private keys


StepFn = Callable[[EvalContext], dict[str, float]]
SummaryFn = Callable[["pd.DataFrame", RunContext], dict[str, float]]
InitFn = Callable[["torch.nn.Module", "Dataset"], dict[str, Any]]  # floats, or tensors a summary needs


LEVELS = ("neuron", "weight", "representation", "attention", "output")


def no_grad(measure: Callable[..., Any]) -> Callable[..., Any]:
    """`@torch.no_grad()` with torch imported when `measure` first runs, not when this module is
    imported: `validate` and `plan` read the registry below without importing torch."""

    @functools.wraps(measure)
    def without_grad(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return measure(*args, **kwargs)

    return without_grad


@dataclass(frozen=True)
class Observable:
    name: str
    step: StepFn | None = None
    summary: SummaryFn | None = None
    at_init: InitFn | None = None
    level: str = ""  # one of LEVELS: where in the network it looks (`scalesweep list observables`)
    columns: tuple[str, ...] = ()  # the runs-table / step-series columns it writes
    description: str = ""  # one line
    families: tuple[str, ...] = ()  # model families it applies to (empty: any); `validate` refuses others
    tasks: tuple[str, ...] = ()  # tasks it applies to (empty: any)
    reference: str = ""  # the paper its definition follows (docs/observables.md)

    @property
    def step_columns(self) -> tuple[str, ...]:
        """The columns its step part logs at every evaluation (the step series a phenomenon's step
        functions can read): its columns, less the run-level ones (`final_*`, `*_init*`, `*_final*`,
        per-layer `<...>` patterns)."""
        if self.step is None:
            return ()
        run_level = ("_init", "_final", "<")
        return tuple(c for c in self.columns if not c.startswith("final_") and not any(m in c for m in run_level))


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
    families: tuple[str, ...] = (),
    tasks: tuple[str, ...] = (),
    reference: str = "",
) -> None:
    """Add a built-in observable; its level must be one of LEVELS."""
    if level not in LEVELS:
        raise ValueError(f"observable {name}: level {level!r} is not one of {', '.join(LEVELS)}")
    OBSERVABLES[name] = Observable(
        name, step, summary, at_init, level, columns, description, families, tasks, reference
    )


def does_not_apply(name: str, task: str, family: str) -> str | None:
    """Why the built-in observable `name` does not apply to `task` with `family`, or None when it
    does (user observables and unknown names always "apply": they are checked elsewhere)."""
    observable = OBSERVABLES.get(name)
    if observable is None:
        return None
    if observable.families and family not in observable.families:
        return f"it reads what only the {' / '.join(observable.families)} family has, not {family}"
    if observable.tasks and task not in observable.tasks:
        tasks = ", ".join(observable.tasks)
        return f"it applies to the task{'s' if len(observable.tasks) > 1 else ''} {tasks}, not {task}"
    return None


def levels_of(columns) -> list[str]:
    """The levels (in LEVELS order) of the built-in observables that record any of `columns`: where in
    the network a phenomenon over those columns looks (e.g. a report grouping phenomena by level).
    A per-layer column `x.<name>` counts as the observable's `x.<layer>` / `x.<param>` pattern."""
    wanted = {str(c) for c in columns}
    wanted |= {c.split(".", 1)[0] for c in wanted if "." in c}
    found = {ob.level for ob in OBSERVABLES.values() if wanted & {c.split(".<", 1)[0] for c in ob.columns}}
    return [level for level in LEVELS if level in found]


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
    from scalesweep.zoo.base import load

    try:
        func = load(name)
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
    import torch

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


@no_grad
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
    import torch

    h = h.reshape(-1, h.shape[-1]).double()
    h = h - h.mean(0)
    s2 = torch.linalg.svdvals(h).pow(2)
    if float(s2.sum()) <= 0:
        return math.nan
    p = s2 / s2.sum()
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


@no_grad
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


@no_grad
def relu_rates(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Per ReLU unit (the last dim of every nn.ReLU output), the share of inputs (and
    positions) on which it is active (> 0); None when the model has no nn.ReLU."""
    import torch

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


@no_grad
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
    families=("tms",),
)


# ---------------------------------------------------------------- induction heads


def repeated_random_tokens(vocab: int, period: int, repeats: int, batch: int, seed: int = 0) -> torch.Tensor:
    """`batch` sequences, each `period` distinct random tokens repeated `repeats` times."""
    import torch

    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(vocab, generator=g)[:period] for _ in range(batch)]
    return torch.stack(rows).repeat(1, repeats)


def induction_scores(patterns: list[torch.Tensor], period: int) -> torch.Tensor:
    """Per layer and head, the mean attention from position t >= period to t - period + 1:
    the token after the previous occurrence of the current token (Olsson et al. 2022)."""
    import torch

    t = patterns[0].shape[-1]
    query = torch.arange(period, t)
    return torch.stack([p[:, :, query, query - period + 1].mean((0, 2)) for p in patterns])


@no_grad
def induction_score_of(model: torch.nn.Module, data: Dataset) -> float:
    """Max over layers and heads of induction_scores on 16 sequences of 10 random tokens
    repeated 5 times (fewer repeats if the context is shorter; NaN below 2 repeats, or for
    models without `attention_patterns`). Chance ~ 1/context."""
    shape, period = data.shape, 10
    repeats = min(5, shape.seq_len // period)
    if not hasattr(model, "attention_patterns") or repeats < 2 or shape.vocab < period:
        return math.nan
    tokens = repeated_random_tokens(shape.vocab, period, repeats, batch=16).to(data.x_test.device)
    return induction_scores(model.attention_patterns(tokens), period).max().item()


def _induction_step(ctx: EvalContext) -> dict[str, float]:
    """At every evaluation, so that a phenomenon can ask when it forms (`first_step(induction_score > 0.3)`)."""
    return {"induction_score": induction_score_of(ctx.model, ctx.data)}


def _induction_score(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
    return {"induction_score": induction_score_of(ctx.model, ctx.data)}


register(
    "induction_score",
    step=_induction_step,
    summary=_induction_score,
    level="attention",
    columns=("induction_score",),
    description="attention to the token after the previous occurrence of the current token, max over heads "
    "(Olsson et al. 2022)",
    families=("transformer",),
)


# ---------------------------------------------------------------- sharpness

SHARPNESS_ROWS = 1024  # training examples the Hessian is taken on
SHARPNESS_ITERS = 20


def sharpness_of(model: torch.nn.Module, loss: Callable[[], torch.Tensor], iters: int = SHARPNESS_ITERS) -> float:
    """Largest-magnitude eigenvalue of the Hessian of `loss()` in the parameters, by power
    iteration v <- Hv / ||Hv|| with Hessian-vector products (double backward); returns
    the Rayleigh quotient v.Hv (Cohen et al. 2021's sharpness)."""
    import torch

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
    import torch

    from scalesweep.zoo.data import loss_fn_for

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


# ---------------------------------------------------------------- representation spectra: anisotropy, RankMe

ANISOTROPY_FLOOR = 1e-12  # sigma2 is floored at this share of sigma1, so a rank-1 matrix gives 1e12, not inf
RANKME_EPS = 1e-7  # Garrido et al. 2023's epsilon


def _rows(h: torch.Tensor, limit: int = RANK_ROWS) -> torch.Tensor:
    """A representation as a (rows, dims) float64 matrix: examples (and positions) as rows."""
    return h.reshape(-1, h.shape[-1])[:limit].double()


def anisotropy_of(h: torch.Tensor) -> float:
    """sigma_1 / sigma_2 of the singular values of the (uncentred) activations h (rows:
    examples). Normalising the singular values (s_i / sum_j s_j) leaves the ratio as it
    is. About 1 for isotropic noise; large when one direction dominates (the "narrow cone"
    of Ethayarajh 2019); sigma_2 is floored at 1e-12 sigma_1, so rank 1 gives 1e12."""
    import torch

    s = torch.linalg.svdvals(_rows(h))
    if len(s) < 2 or float(s[0]) <= 0:
        return math.nan
    return float(s[0] / torch.clamp(s[1], min=float(s[0]) * ANISOTROPY_FLOOR))


def rankme_of(h: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe (Garrido et al. 2023): exp(-sum_k p_k log p_k) with p_k = s_k / ||s||_1 + eps,
    s the singular values of the (uncentred) representation. From 1 (rank one) to
    min(rows, dims) (all singular values equal)."""
    import torch

    s = torch.linalg.svdvals(_rows(h))
    if float(s.sum()) <= 0:
        return math.nan
    p = s / s.sum() + eps
    return math.exp(float(-(p * p.log()).sum()))


@no_grad
def _anisotropy(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
    """anisotropy: anisotropy_of(features) on the first 4096 test rows; anisotropy.<layer>:
    the same for every layer of `layer_outputs`."""
    if not hasattr(ctx.model, "features"):
        return {"anisotropy": math.nan}
    x = ctx.data.x_test[:RANK_ROWS]
    per_layer = {f"anisotropy.{name}": anisotropy_of(out) for name, out in layer_outputs(ctx.model, x).items()}
    return {"anisotropy": anisotropy_of(ctx.model.features(x)), **per_layer}


@no_grad
def _rankme(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
    """rankme: rankme_of(features) on the first 4096 test rows."""
    if not hasattr(ctx.model, "features"):
        return {"rankme": math.nan}
    return {"rankme": rankme_of(ctx.model.features(ctx.data.x_test[:RANK_ROWS]))}


register(
    "anisotropy",
    summary=_anisotropy,
    level="representation",
    columns=("anisotropy", "anisotropy.<layer>"),
    description="sigma1 / sigma2 of the singular values of the last hidden representation (and of each layer)",
    reference="Ethayarajh 2019",
)
register(
    "rankme",
    summary=_rankme,
    level="representation",
    columns=("rankme",),
    description="RankMe: exp of the entropy of the L1-normalised singular values (+1e-7) of the last "
    "representation (Garrido et al. 2023)",
    reference="Garrido et al. 2023",
)


# ---------------------------------------------------------------- weight spectra: alpha, stable rank

ALPHA_MIN_TAIL = 8  # eigenvalues the power-law tail must have, else alpha is NaN


def weight_matrices(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every 2-D parameter (linear layers, embeddings, attention projections), by name."""
    return {name: p for name, p in model.named_parameters() if p.dim() == 2}


def power_law_alpha(eigenvalues: torch.Tensor | np.ndarray, min_tail: int = ALPHA_MIN_TAIL) -> float:
    """Exponent alpha of a power-law density p(x) ~ x^-alpha fitted to the upper half of the
    eigenvalues, by the continuous maximum-likelihood (Hill) estimator of Clauset, Shalizi &
    Newman 2009 with x_min the k-th largest value: alpha = 1 + k / sum_{i<=k} ln(x_i / x_min),
    k = ceil(n / 2). NaN with fewer than `min_tail` values in the tail. (WeightWatcher picks
    x_min by a KS search instead; the fixed half keeps this cheap and deterministic.)"""
    x = np.sort(np.asarray(eigenvalues, dtype=float))[::-1]
    x = x[np.isfinite(x) & (x > 0)]
    k = math.ceil(len(x) / 2)
    if k < min_tail:
        return math.nan
    logs = np.log(x[:k] / x[k - 1]).sum()
    return float(1 + k / logs) if logs > 0 else math.nan


def stable_rank_of(w: torch.Tensor) -> float:
    """||W||_F^2 / ||W||_2^2 = sum_i s_i^2 / s_1^2: n for an n x n identity, 1 for rank one."""
    import torch

    s2 = torch.linalg.svdvals(w.detach().double()).pow(2)
    return float(s2.sum() / s2[0]) if float(s2[0]) > 0 else math.nan


@no_grad
def weight_spectrum_of(model: torch.nn.Module) -> dict[str, float]:
    """weight_alpha.<param> = power_law_alpha of the eigenvalues of W^T W (the squared singular
    values of W; Martin & Mahoney 2021's heavy-tailed self-regularisation: smaller alpha,
    heavier tail, "more trained"); stable_rank.<param> = stable_rank_of(W); the unsuffixed
    columns are the means over the matrices where they are finite."""
    import torch

    out: dict[str, float] = {}
    alphas, ranks = [], []
    for name, w in weight_matrices(model).items():
        s2 = torch.linalg.svdvals(w.detach().double()).pow(2)
        alpha = power_law_alpha(s2.cpu().numpy())
        rank = float(s2.sum() / s2[0]) if float(s2[0]) > 0 else math.nan
        out[f"weight_alpha.{name}"], out[f"stable_rank.{name}"] = alpha, rank
        alphas += [alpha] if math.isfinite(alpha) else []
        ranks += [rank] if math.isfinite(rank) else []
    out["weight_alpha"] = float(np.mean(alphas)) if alphas else math.nan
    out["stable_rank"] = float(np.mean(ranks)) if ranks else math.nan
    return out


register(
    "weight_spectrum",
    summary=lambda history, ctx: weight_spectrum_of(ctx.model),
    level="weight",
    columns=("weight_alpha", "stable_rank", "weight_alpha.<param>", "stable_rank.<param>"),
    description="power-law exponent alpha of the eigenvalues of W^T W (Hill/MLE on the top half; Martin & "
    "Mahoney 2021) and stable rank ||W||_F^2 / ||W||_2^2, per weight matrix and their mean",
    reference="Martin & Mahoney 2021; Clauset et al. 2009",
)


# ---------------------------------------------------------------- weight displacement (lazy vs rich)

INIT_WEIGHTS = "weight_init."  # init_stats keys holding a copy of each initial weight matrix (tensors)


def _init_weights(model: torch.nn.Module, data: Dataset) -> dict[str, Any]:
    """A copy of every weight matrix at initialisation (kept in init_stats, never logged)."""
    return {INIT_WEIGHTS + name: w.detach().clone() for name, w in weight_matrices(model).items()}


@no_grad
def weight_displacement_of(model: torch.nn.Module, initial: dict[str, torch.Tensor]) -> dict[str, float]:
    """weight_displacement.<param> = ||W - W0||_F / ||W0||_F for each weight matrix;
    weight_displacement = the same over all of them together, sqrt(sum ||W - W0||^2 /
    sum ||W0||^2). Small (-> 0 with width) in lazy / NTK training, order one in rich
    (feature-learning) training (Chizat et al. 2019; Jacot et al. 2018)."""
    out: dict[str, float] = {}
    moved = start = 0.0
    for name, w in weight_matrices(model).items():
        if name not in initial:
            continue
        d2, n2 = float((w - initial[name]).pow(2).sum()), float(initial[name].pow(2).sum())
        out[f"weight_displacement.{name}"] = math.sqrt(d2 / n2) if n2 > 0 else math.nan
        moved, start = moved + d2, start + n2
    out["weight_displacement"] = math.sqrt(moved / start) if start > 0 else math.nan
    return out


def _initial_weights(init_stats: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k.removeprefix(INIT_WEIGHTS): v for k, v in init_stats.items() if k.startswith(INIT_WEIGHTS)}


def _weight_displacement_step(ctx: EvalContext) -> dict[str, float]:
    """weight_displacement (over all weight matrices) at every evaluation: lazy vs rich over training."""
    initial = _initial_weights(ctx.init_stats)
    return {"weight_displacement": weight_displacement_of(ctx.model, initial)["weight_displacement"]} if initial else {}


def _weight_displacement(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
    initial = _initial_weights(ctx.init_stats)
    if not initial:
        return {"weight_displacement": math.nan}
    return weight_displacement_of(ctx.model, initial)


register(
    "weight_displacement",
    step=_weight_displacement_step,
    summary=_weight_displacement,
    at_init=_init_weights,
    level="weight",
    columns=("weight_displacement", "weight_displacement.<param>"),
    description="||W - W0||_F / ||W0||_F per weight matrix and over all of them (lazy vs rich training)",
    reference="Chizat et al. 2019",
)


# ---------------------------------------------------------------- Fourier sparsity of the embedding

FOURIER_TOP_K = 5  # frequencies whose share of the energy is the sparsity (Nanda et al. find ~5 key ones)
FOURIER_KEY_SHARE = 0.9  # fourier_key_frequencies: fewest frequencies holding this share


def fourier_energy(embedding: torch.Tensor) -> torch.Tensor:
    """Energy of the token embedding E (p x d, row t = token t) at each frequency 1..p//2 of
    the DFT over the p tokens, summed over the d dimensions. The mean over tokens (frequency
    0) is removed; frequency f and p - f are one real frequency (their energies add)."""
    import torch

    e = embedding.detach().double()
    p = e.shape[0]
    f = torch.fft.rfft(e - e.mean(0), dim=0).abs().pow(2).sum(1)[1:]
    weights = torch.full_like(f, 2.0)
    if p % 2 == 0:
        weights[-1] = 1.0  # the Nyquist frequency has no mirror
    return f * weights


def fourier_sparsity_of(embedding: torch.Tensor, k: int = FOURIER_TOP_K) -> dict[str, float]:
    """fourier_sparsity = share of the embedding's energy (fourier_energy) in its top-k
    frequencies; fourier_key_frequencies = the fewest frequencies holding 90% of it. A
    grokked modular-addition network embeds each token on a few circles cos/sin(2 pi f t / p)
    (Nanda et al. 2023), so the share nears 1; a random embedding spreads its energy over
    all p//2 frequencies (share ~ k / (p//2))."""
    energy = fourier_energy(embedding)
    total = float(energy.sum())
    if not len(energy) or total <= 0:
        return {"fourier_sparsity": math.nan, "fourier_key_frequencies": math.nan}
    share = energy.sort(descending=True).values / total
    key = int((share.cumsum(0) < FOURIER_KEY_SHARE - 1e-12).sum()) + 1
    return {"fourier_sparsity": float(share[:k].sum()), "fourier_key_frequencies": float(min(key, len(share)))}


def _token_embedding(model: torch.nn.Module) -> torch.Tensor | None:
    import torch

    embed = getattr(model, "embed", None)
    return embed.weight if isinstance(embed, torch.nn.Embedding) else None


def _fourier_sparsity_step(ctx: EvalContext) -> dict[str, float]:
    """fourier_sparsity, fourier_key_frequencies of the token embedding at every evaluation."""
    embedding = _token_embedding(ctx.model)
    return {} if embedding is None else fourier_sparsity_of(embedding)


def _fourier_sparsity(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
    embedding = _token_embedding(ctx.model)
    if embedding is None:
        return {"fourier_sparsity": math.nan, "fourier_key_frequencies": math.nan}
    return fourier_sparsity_of(embedding)


register(
    "fourier_sparsity",
    step=_fourier_sparsity_step,
    summary=_fourier_sparsity,
    level="weight",
    columns=("fourier_sparsity", "fourier_key_frequencies"),
    description="share of the token embedding's energy in its top-5 frequencies of the DFT over the p tokens "
    "(Nanda et al. 2023)",
    families=("mlp", "transformer"),
    tasks=("modular_arithmetic",),
    reference="Nanda et al. 2023",
)


# ---------------------------------------------------------------- attention entropy and sink

ATTENTION_ROWS = 256  # test sequences the attention statistics are measured on


def attention_head_stats(patterns: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head of every layer (flattened, layer-major): the mean over sequences and query
    positions q >= 1 of the attention row's entropy -sum_k a_qk log a_qk (nats), and of its
    mass on the first position a_q0 (the attention sink, Xiao et al. 2024). Query 0 is left
    out: under a causal mask it can only attend to itself."""
    import torch

    entropy, sink = [], []
    for pattern in patterns:
        a = pattern[:, :, 1:, :].double()
        entropy.append(-(a * a.clamp_min(1e-300).log()).sum(-1).mean((0, 2)))
        sink.append(a[..., 0].mean((0, 2)))
    return torch.cat(entropy), torch.cat(sink)


@no_grad
def attention_stats_of(model: torch.nn.Module, data: Dataset) -> dict[str, float]:
    """attention_entropy_mean / _min / _max and attention_sink_mean / _max over all heads, on
    the first 256 test sequences; NaN for a model without attention or sequences of one token."""
    names = ("attention_entropy_mean", "attention_entropy_min", "attention_entropy_max")
    nan = dict.fromkeys((*names, "attention_sink_mean", "attention_sink_max"), math.nan)
    if not hasattr(model, "attention_patterns") or data.x_test.dim() < 2 or data.x_test.shape[-1] < 2:
        return nan
    entropy, sink = attention_head_stats(model.attention_patterns(data.x_test[:ATTENTION_ROWS]))
    return {
        "attention_entropy_mean": float(entropy.mean()),
        "attention_entropy_min": float(entropy.min()),
        "attention_entropy_max": float(entropy.max()),
        "attention_sink_mean": float(sink.mean()),
        "attention_sink_max": float(sink.max()),
    }


def _attention_part(prefix: str) -> tuple[StepFn, SummaryFn]:
    def step(ctx: EvalContext) -> dict[str, float]:
        stats = attention_stats_of(ctx.model, ctx.data) if hasattr(ctx.model, "attention_patterns") else {}
        return {k: v for k, v in stats.items() if k.startswith(prefix)}

    def summary(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
        return {k: v for k, v in attention_stats_of(ctx.model, ctx.data).items() if k.startswith(prefix)}

    return step, summary


_entropy_step, _entropy_summary = _attention_part("attention_entropy")
_sink_step, _sink_summary = _attention_part("attention_sink")
register(
    "attention_entropy",
    step=_entropy_step,
    summary=_entropy_summary,
    level="attention",
    columns=("attention_entropy_mean", "attention_entropy_min", "attention_entropy_max"),
    description="entropy (nats) of each head's attention rows, averaged over sequences and positions; "
    "mean, min and max over heads (log T for uniform attention over T positions)",
    families=("transformer",),
    reference="Zhai et al. 2023",
)
register(
    "attention_sink",
    step=_sink_step,
    summary=_sink_summary,
    level="attention",
    columns=("attention_sink_mean", "attention_sink_max"),
    description="share of each head's attention on the first position, mean and max over heads",
    families=("transformer",),
    reference="Xiao et al. 2024",
)


# ---------------------------------------------------------------- neural collapse, memorisation

CLASSIFICATION_TASKS = ("modular_arithmetic", "sparse_parity", "in_context")


def nc1_of(h: torch.Tensor, y: torch.Tensor) -> float:
    """NC1 (Papyan, Han & Donoho 2020): tr(Sigma_W Sigma_B^+) / C, with Sigma_W the
    within-class covariance (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T, Sigma_B the
    between-class covariance (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T, mu_G the global mean
    and ^+ the pseudo-inverse. 0 when every example sits on its class mean; NaN below 2
    classes. Not normalised for sample size: for features independent of the labels it grows
    with the examples per class (about 8 for 800 examples of 31 classes in 128 dimensions, 1.6
    for 200), so compare it at equal N and C (a data_size axis moves it by itself)."""
    import torch

    h, y = _rows(h, limit=len(h)), y.reshape(-1)
    classes, index = torch.unique(y, return_inverse=True)
    c = len(classes)
    if c < 2:
        return math.nan
    counts = torch.bincount(index, minlength=c).double()
    means = torch.zeros(c, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, index, h) / counts[:, None]
    within = h - means[index]
    sigma_w = within.T @ within / len(h)
    between = means - h.mean(0)
    sigma_b = between.T @ between / c
    return float(torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True)) / c)


@no_grad
def _neural_collapse(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
    """nc1: nc1_of(features, labels) on the first 4096 training rows (scored positions only)."""
    if ctx.data.kind != "classification" or not hasattr(ctx.model, "features"):
        return {"nc1": math.nan}
    h = ctx.model.features(ctx.data.x_train[:RANK_ROWS])
    h, y = h.reshape(-1, h.shape[-1]), ctx.data.y_train[:RANK_ROWS].reshape(-1)
    scored = y != IGNORE
    return {"nc1": nc1_of(h[scored][:RANK_ROWS], y[scored][:RANK_ROWS])}


register(
    "neural_collapse",
    summary=_neural_collapse,
    level="representation",
    columns=("nc1",),
    description="NC1 = tr(Sigma_W Sigma_B^+) / C of the last representation on the training set "
    "(Papyan et al. 2020); 0 at full collapse",
    tasks=CLASSIFICATION_TASKS,
    reference="Papyan et al. 2020",
)


def memorization_bits_of(loss: float, n_classes: int, n_labels: int) -> float:
    """(log V - loss) * N / log 2: the bits a model stores about N labels drawn uniformly from V
    classes, given its mean cross-entropy (nats) on them. For random labels this is the
    memorisation capacity (0 at chance, N log2 V when every label is fitted with certainty);
    negative when the model is worse than chance."""
    return (math.log(n_classes) - loss) * n_labels / math.log(2)


@no_grad
def _memorization(history: pd.DataFrame, ctx: RunContext) -> dict[str, float]:
    """memorization_bits on the whole training set (N = scored labels, V = classes) and
    memorization_bits_per_param (Allen-Zhu & Li 2024 measure about 2 bits per parameter)."""
    from scalesweep.zoo.data import loss_fn_for

    if ctx.data.kind != "classification":
        return {"memorization_bits": math.nan, "memorization_bits_per_param": math.nan}
    loss = float(loss_fn_for(ctx.data)(ctx.model(ctx.data.x_train), ctx.data.y_train))
    n_labels = int((ctx.data.y_train != IGNORE).sum())
    bits = memorization_bits_of(loss, ctx.data.shape.output_dim, n_labels)
    return {
        "memorization_bits": bits,
        "memorization_bits_per_param": bits / sum(p.numel() for p in ctx.model.parameters()),
    }


register(
    "memorization",
    summary=_memorization,
    level="output",
    columns=("memorization_bits", "memorization_bits_per_param"),
    description="bits stored about the training labels, (log V - final train loss) * N / log 2 (the "
    "memorisation capacity on random labels)",
    tasks=CLASSIFICATION_TASKS,
    reference="Allen-Zhu & Li 2024",
)
