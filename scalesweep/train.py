"""Train one RunConfig with torch, yielding what it measures as it goes.

Training is a generator of *events* so that the same code serves a plain
loop, a test and a Ray streaming task: the caller decides where rows go.
Events are dicts with a `run_key` and a `kind`:

- `metrics`: `rows`, a list of `{"step": s, column: value, ...}` (buffered,
  flushed about once a second so that tracking stays cheap);
- `summary`: `summary`, the run's scalars; the run finished;
- `failed`: `error` and `traceback`; the run raised.

A NaN or infinite loss is not a failure: the run stops, and its summary says
`diverged = 1`, because instability is a phenomenon too.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Iterator
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from scalesweep import observables as obs
from scalesweep.plan import RunConfig
from scalesweep.zoo import FAMILIES, TASKS, Dataset

Event = dict[str, Any]
FLUSH_SECONDS = 1.0


class InjectedFailure(RuntimeError):
    """Raised at `training.fail_at_step`, to exercise failure handling end to end."""


def pick_device(gpus_per_run: float = 0.0) -> torch.device:
    """CUDA when the run was given a GPU share and one is visible, else CPU."""
    return torch.device("cuda" if gpus_per_run > 0 and torch.cuda.is_available() else "cpu")


def build(config: RunConfig, device: torch.device) -> tuple[torch.nn.Module, Dataset]:
    """Make the run's data and its freshly initialised model, both from the run's seed."""
    task = TASKS[config.task]
    family = FAMILIES[config.family]
    data = task.make(task.params_model.model_validate(config.task_params), config.data_size, config.seed)
    torch.manual_seed(config.seed)
    params = family.params_model.model_validate(config.model_params)
    model = family.build(params, config.model_size, data.shape, config.parametrization)
    return model.to(device), data.to(device)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    t = config.training
    groups = getattr(model, "param_groups", None)
    params = groups(t.lr) if callable(groups) else model.parameters()
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def loss_fn_for(data: Dataset):
    return F.cross_entropy if data.kind == "classification" else F.mse_loss


def train_runs(configs: list[RunConfig], gpus_per_run: float = 0.0) -> Iterator[Event]:
    """Train runs one after the other (seed ensembles may train them together)."""
    for config in configs:
        yield from train_one(config, pick_device(gpus_per_run))


def train_one(config: RunConfig, device: torch.device | None = None) -> Iterator[Event]:
    """Train one run, yielding metrics events, then a summary or a failure."""
    key = config.run_key
    try:
        yield from _train(config, device or torch.device("cpu"))
    except Exception as err:  # a crashing run is recorded, and the sweep goes on
        yield {"run_key": key, "kind": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}


def _train(config: RunConfig, device: torch.device) -> Iterator[Event]:
    started = time.perf_counter()
    key, t = config.run_key, config.training
    model, data = build(config, device)
    loss_fn = loss_fn_for(data)
    observables = obs.resolve(config.observables)
    optimizer = make_optimizer(model, config)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    history: list[dict[str, float]] = []
    buffer: list[dict[str, float]] = []
    last_flush = time.perf_counter()
    grad_norm = math.nan
    diverged = False
    for step in range(t.steps + 1):
        if step % t.eval_every == 0 or step == t.steps:
            row = _evaluate(model, data, loss_fn, observables, step, grad_norm)
            history.append(row)
            buffer.append(row)
            diverged = not all(math.isfinite(row.get(c, 0.0)) for c in ("train_loss", "test_loss"))
            if buffer and (diverged or time.perf_counter() - last_flush > FLUSH_SECONDS):
                yield {"run_key": key, "kind": "metrics", "rows": buffer}
                buffer, last_flush = [], time.perf_counter()
        if step == t.steps or diverged:
            break
        if t.fail_at_step is not None and step == t.fail_at_step:
            raise InjectedFailure(f"injected failure at step {step} (training.fail_at_step)")
        grad_norm = _train_step(model, data, loss_fn, optimizer, t.batch_size, generator, step % t.eval_every == t.eval_every - 1)
    if buffer:
        yield {"run_key": key, "kind": "metrics", "rows": buffer}
    summary = _summarise(pd.DataFrame(history), model, data, config, observables)
    summary.update(n_params=float(n_params(model)), diverged=float(diverged), train_seconds=time.perf_counter() - started)
    yield {"run_key": key, "kind": "summary", "summary": summary}


def _train_step(model, data: Dataset, loss_fn, optimizer, batch_size: int, generator, want_grad_norm: bool) -> float:
    """One optimiser step on a minibatch (the whole set when it fits in one batch).

    The gradient norm is only read (a host sync) just before an evaluation.
    """
    n = len(data.x_train)
    if batch_size >= n:
        x, y = data.x_train, data.y_train
    else:
        idx = torch.randint(n, (batch_size,), generator=generator, device=data.x_train.device)
        x, y = data.x_train[idx], data.y_train[idx]
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    grad_norm = math.nan
    if want_grad_norm:
        grad_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None))
    optimizer.step()
    return grad_norm


@torch.no_grad()
def _evaluate(model, data: Dataset, loss_fn, observables: list[obs.Observable], step: int, grad_norm: float) -> dict[str, float]:
    model.eval()
    ctx = obs.EvalContext(step, model, data, model(data.x_train), model(data.x_test), loss_fn, grad_norm)
    row: dict[str, float] = {"step": float(step)}
    for observable in observables:
        if observable.step is not None:
            row.update(observable.step(ctx))
    model.train()
    return row


def _summarise(history: pd.DataFrame, model, data: Dataset, config: RunConfig, observables) -> dict[str, float]:
    ctx = obs.RunContext(model, data, config.training.steps, config.training.fit_threshold)
    summary: dict[str, float] = {}
    for observable in observables:
        if observable.summary is not None:
            summary.update({k: float(v) for k, v in observable.summary(history, ctx).items()})
    return summary


def train_to_result(config: RunConfig) -> tuple[pd.DataFrame, dict[str, float]]:
    """Train one run in this process and return (history, summary); raises if it failed."""
    rows: list[dict[str, float]] = []
    for event in train_one(config):
        if event["kind"] == "metrics":
            rows.extend(event["rows"])
        elif event["kind"] == "failed":
            raise RuntimeError(event["error"])
        else:
            return pd.DataFrame(rows), event["summary"]
    raise RuntimeError("training ended without a summary")
