"""The Ray task that trains a seed ensemble, in a module of its own.

Ray imports a remote function's module in every worker. Kept here, away from
`execute.py` (which pulls in MLflow, matplotlib and rich for the driver), a
worker imports only what training needs: about 2.5 s less start-up per
worker (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

from scalesweep.plan import RunConfig
from scalesweep.startup import mark, mark_first_step, mark_process_start

# glibc's mallopt parameters (malloc.h) and the values a worker sets
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
KEEP_FREED = {M_MMAP_THRESHOLD: 64 << 20, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}


@functools.cache  # once per process: a worker calls it from its warm-up and from every task
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory a training step frees, for the next step.

    By default glibc serves a block above its mmap threshold (128 KiB, raised as such blocks are
    freed) with a fresh mmap and gives it back on free, and trims the heap's top once more than
    its trim threshold is free: a step's activations of half a megabyte and more (members x batch
    rows x width x 4 bytes) then come back as new pages, each one page-faulted and zeroed by the
    kernel on first touch, at every step. That made a seed ensemble at width 128 on 512-row
    batches erratically slower than its seeds one after the other (0.71 - 1.49 s against 0.81 -
    0.92 s for 4 seeds, 300 steps; 0.65 - 0.72 s with this; benchmarks/RESULTS.md). Blocks up to
    64 MiB now come from the heap, which is never trimmed below 1 GiB free and grows 64 MiB at a
    time: a worker keeps its high-water mark, which it reaches in its first steps anyway.
    Linux with glibc only (mallopt via ctypes); elsewhere nothing changes. Returns whether set."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return all(libc.mallopt(param, value) == 1 for param, value in KEEP_FREED.items())
    except (OSError, AttributeError):  # no glibc (macOS, musl): its allocator, unchanged
        return False


def warm_up() -> int:
    """A Ray task run once per worker before the sweep's first tasks (`execute.warm_workers`):
    what a task needs on its first step, done while the driver still opens the store and takes
    the lease. Imports torch and the trainer (with the observables; pandas waits for a run's
    summary), and runs one AdamW step on a single number, the fused kernel's first call
    (scalesweep's optimiser: torch.optim's would import `torch._dynamo`, ~1 s more)."""
    mark_process_start()
    mark("worker_begin")
    keep_freed_memory()
    import torch

    import scalesweep.train  # noqa: F401
    from scalesweep.optim import Optimizer

    weight = torch.zeros(1, requires_grad=True)
    optimizer = Optimizer([{"params": [weight], "lr": 0.0, "weight_decay": 0.0}], "adamw")
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
    keep_freed_memory()  # a worker may not have run the warm-up
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
