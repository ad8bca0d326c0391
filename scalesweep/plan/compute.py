"""A run's size and cost: parameters N, tokens per example, training FLOPs C ≈ 6 · N · D.

**N is counted, not guessed.** `n_params_of` counts the family's model at a
width on the task's real input shape, cached, so embeddings, biases and
read-outs count as they do in training: by the family's closed form (every
built-in family has one; `tests/test_compute.py` checks it equals the built
model's count), else by building the model on torch's meta device (no memory).

**Tokens, not sequences.** For a per-token task (one target per position, e.g.
`in_context`) every position of a sequence runs through the model and is
predicted, so an example is `seq_len` tokens and C ≈ 6 · N · tokens seen
(Kaplan et al. 2020: C = 6 · N · B · S, S the context length). Other tasks have
one target per example: one "token" each. `tokens_per_example` reads it off
the task's data shape. The 6 is `scalesweep.flops`, shared with the analysis.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

from scalesweep.flops import FLOPS_PER_PARAM_TOKEN

if TYPE_CHECKING:
    from scalesweep.plan.runconfig import RunConfig

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
    from scalesweep.zoo import FAMILIES

    fam = FAMILIES[family]
    shape = _shape_cached(task, task_json)
    params = fam.params_model.model_validate(json.loads(model_json))
    if fam.count is not None:  # the family's closed form: no model is built
        return fam.count(params, width, shape, parametrization)
    import torch

    with torch.random.fork_rng(devices=[]):  # building must not move the caller's RNG
        try:  # on the meta device a billion-parameter model costs no memory to count
            with torch.device("meta"):
                model = fam.build(params, width, shape, parametrization)
        except (NotImplementedError, RuntimeError):  # an init that needs real tensors
            model = fam.build(params, width, shape, parametrization)
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=1024)
def _shape_cached(task: str, task_json: str) -> Any:
    """The task's DataShape: from its parameters where the task says how (every built-in does, so
    planning imports no torch), else from a few examples made with its own generator (global RNG
    untouched)."""
    from scalesweep.zoo import TASKS

    info = TASKS[task]
    params = info.params_model.model_validate(json.loads(task_json))
    if info.shape_of is not None:
        return info.shape_of(params)
    return info.make(params, PROBE_DATA_SIZE, 0).shape


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
