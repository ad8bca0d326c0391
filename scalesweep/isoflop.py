"""The IsoFLOP design (Hoffmann et al. 2022, approach 2) and a run's compute.

An IsoFLOP study fixes a few compute budgets C (FLOPs) and, for each, trains
every model size N of the `model_size` axis on just enough data that
6 · N · D ≈ C, where D is the number of tokens seen (examples seen, for a task
with one target per example; 6 = forward + backward multiply-adds, Kaplan et al.
2020). The loss along each budget's profile is U-shaped in log N; its minimum
is the compute-optimal size for that budget (`scalesweep.analysis.isoflop` fits it).

**What the design sets.** The trainer's compute is fixed by steps · batch_size
(minibatches are drawn with replacement from the training set), not by the
training-set size. So the design sets `training.steps` to
round(C / (6 · N · batch_size)) and, because Hoffmann's D is tokens *seen* with
(almost) no repetition, sets `data_size` to the examples seen, steps ·
batch_size: one epoch-like pass, each example drawn about once. D_opt is then
both the unique data and the data seen, as in Chinchilla. The spec must not
give `axes.data_size` for this design (the spec loader says so).

**N is measured, not guessed.** `n_params_of` builds the family's model at
each width on the task's real input shape and counts its parameters (cached),
so embeddings, biases and read-outs count as they do in training.

**Tokens, not sequences.** For a per-token task (one target per position, e.g.
`in_context`) every position of a sequence runs through the model and is
predicted, so an example is `seq_len` tokens and C ≈ 6 · N · tokens seen
(Kaplan et al. 2020: C = 6 · N · B · S, S the context length). Other tasks have
one target per example: one "token" each. `tokens_per_example` reads it off
the task's data shape.

Integer steps cannot hit C exactly; a point whose compute would miss C by
more than `TOLERANCE` is refused with a clear message (raise the budget,
shrink batch_size, or drop the largest model size).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from scalesweep.errors import UserError
from scalesweep.plan import RunConfig, _apply_grid, _run_config
from scalesweep.spec import SweepSpec

FLOPS_PER_PARAM_TOKEN = 6  # forward (2) + backward (4) multiply-adds per parameter per token
FLOPS_PER_PARAM_EXAMPLE = FLOPS_PER_PARAM_TOKEN  # an example of a task with one target per example
TOLERANCE = 0.05  # largest relative miss of the budget an IsoFLOP point may have
PROBE_DATA_SIZE = 8  # examples made only to learn the task's input shape


def n_params_of(
    task: str, task_params: dict[str, Any], family: str, model_params: dict[str, Any], parametrization: str, width: int
) -> int:
    """Parameters of the family's model at `width` on the task's input shape (built once, cached)."""
    return _n_params_cached(
        task, json.dumps(task_params, sort_keys=True), family, json.dumps(model_params, sort_keys=True),
        parametrization, width,
    )  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _n_params_cached(task: str, task_json: str, family: str, model_json: str, parametrization: str, width: int) -> int:
    import torch

    from scalesweep.zoo import FAMILIES

    fam = FAMILIES[family]
    shape = _shape_cached(task, task_json)
    params = fam.params_model.model_validate(json.loads(model_json))
    with torch.random.fork_rng(devices=[]):  # building must not move the caller's RNG
        try:  # on the meta device a billion-parameter model costs no memory to count
            with torch.device("meta"):
                model = fam.build(params, width, shape, parametrization)
        except (NotImplementedError, RuntimeError):  # an init that needs real tensors
            model = fam.build(params, width, shape, parametrization)
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=1024)
def _shape_cached(task: str, task_json: str) -> Any:
    """The task's DataShape, from a few examples made with its own generator (global RNG untouched)."""
    from scalesweep.zoo import TASKS

    info = TASKS[task]
    return info.make(info.params_model.model_validate(json.loads(task_json)), PROBE_DATA_SIZE, 0).shape


def tokens_per_example(task: str, task_params: dict[str, Any]) -> int:
    """Tokens an example puts through the model and the loss: `seq_len` for a per-token task
    (a target at every position), 1 for a task with one target per example."""
    shape = _shape_cached(task, json.dumps(task_params, sort_keys=True))
    return shape.seq_len if shape.per_token else 1


def config_n_params(config: RunConfig) -> int:
    return n_params_of(
        config.task, config.task_params, config.family, config.model_params, config.parametrization, config.model_size
    )


def compute_of(config: RunConfig) -> float:
    """C ≈ 6 · n_params · tokens seen; tokens seen = examples seen · tokens per example, examples
    seen = steps · min(batch_size, data_size) (a batch as large as the training set is the whole set)."""
    tokens = config.examples_seen * tokens_per_example(config.task, config.task_params)
    return float(FLOPS_PER_PARAM_TOKEN * config_n_params(config) * tokens)


def steps_for(budget: float, n_params: int, batch_size: int, tokens: int = 1) -> int:
    """Optimiser steps that spend `budget` FLOPs on a model of `n_params` at this batch size
    (of examples of `tokens` tokens each)."""
    return max(1, round(budget / (FLOPS_PER_PARAM_TOKEN * n_params * batch_size * tokens)))


def isoflop_runs(spec: SweepSpec, resolved: dict[str, Any], labels: dict[str, Any]) -> list[RunConfig]:
    """One grid slice of an IsoFLOP design: budgets x model sizes x seeds."""
    runs = []
    for budget in spec.design.budgets:
        for width in spec.axes.model_size:
            for seed in spec.axes.seed_list:
                runs.append(isoflop_run(spec.name, resolved, labels, width, budget, seed))
    return runs


def isoflop_run(
    sweep: str, resolved: dict[str, Any], labels: dict[str, Any], width: int, budget: float, seed: int
) -> RunConfig:
    """The run of one (budget, model size, seed): steps and data_size set from the budget."""
    n = n_params_of(
        resolved["task"]["name"], resolved["task"]["params"], resolved["model"]["family"],
        resolved["model"]["params"], resolved["model"]["parametrization"], width,
    )  # fmt: skip
    batch = int(resolved["training"]["batch_size"])
    tokens = tokens_per_example(resolved["task"]["name"], resolved["task"]["params"])
    steps = steps_for(budget, n, batch, tokens)
    miss = FLOPS_PER_PARAM_TOKEN * n * steps * batch * tokens / budget - 1
    if abs(miss) > TOLERANCE:
        raise UserError(
            f"isoflop design: budget {budget:.3g} FLOPs at model_size {width} ({n:,} parameters) and batch_size "
            f"{batch} gives {steps} step(s), which miss the budget by {100 * miss:+.0f}% (at most "
            f"{100 * TOLERANCE:.0f}% allowed). Raise the budget, lower training.batch_size, or drop that model size."
        )
    resolved = _apply_grid(resolved, {"training.steps": steps})
    return _run_config(sweep, resolved, width, steps * batch, seed, {"budget": budget, **labels})


def total_compute(runs: list[RunConfig]) -> float:
    """Estimated FLOPs of a list of runs (6 · N · tokens seen, summed)."""
    return sum(compute_of(run) for run in runs)
