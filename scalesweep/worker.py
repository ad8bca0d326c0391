"""The Ray task that trains a seed ensemble, in a module of its own.

Ray imports a remote function's module in every worker. Kept here, away from
`execute.py` (which pulls in MLflow, matplotlib and rich for the driver), a
worker imports only what training needs: about 2.5 s less start-up per
worker (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from scalesweep.plan import RunConfig
from scalesweep.startup import mark, mark_first_step, mark_process_start


def warm_up() -> int:
    """A Ray task run once per worker before the sweep's first tasks (`execute.warm_workers`):
    what a task needs on its first step, done while the driver still opens the store and takes
    the lease. Imports torch and the trainer (with pandas and the observables), and runs one
    AdamW step on a single number (the first optimiser step imports `torch._dynamo`, ~1 s)."""
    mark_process_start()
    mark("worker_begin")
    import torch

    import scalesweep.train  # noqa: F401

    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.AdamW([weight], lr=0.0)
    weight.sum().backward()
    optimizer.step()
    mark("worker_imported")
    return os.getpid()


def train_task(
    configs: list[dict[str, Any]],
    gpus_per_run: float,
    checkpoint: dict[str, Any] | None = None,
    resume: dict[str, bytes] | None = None,
) -> Iterator[dict[str, Any]]:
    """Ray streaming task: train a seed ensemble, yielding events as they come.
    `checkpoint`: the spec's checkpoint section (when to send checkpoints); `resume`: run key ->
    the checkpoint a killed attempt left, to go on from."""
    mark_process_start()
    mark("task_started")
    from scalesweep.spec import CheckpointSpec
    from scalesweep.train import train_runs

    mark("worker_imported")
    mark_first_step()

    runs = [RunConfig.model_validate(c) for c in configs]
    policy = CheckpointSpec.model_validate(checkpoint) if checkpoint is not None else None
    for config in runs:
        yield {"run_key": config.run_key, "kind": "started"}
    # A loop, not `yield from`: Ray sends values into streaming generators, and a
    # delegated `yield from` would pass them on to inner list iterators, which fail.
    for event in train_runs(runs, gpus_per_run, policy, resume):  # noqa: UP028
        yield event
