"""The Ray task that trains a seed ensemble, in a module of its own.

Ray imports a remote function's module in every worker. Kept here, away from
`execute.py` (which pulls in MLflow, matplotlib and rich for the driver), a
worker imports only what training needs: about 2.5 s less start-up per
worker (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from scalesweep.plan import RunConfig


def train_task(
    configs: list[dict[str, Any]],
    gpus_per_run: float,
    checkpoint: dict[str, Any] | None = None,
    resume: dict[str, bytes] | None = None,
) -> Iterator[dict[str, Any]]:
    """Ray streaming task: train a seed ensemble, yielding events as they come.
    `checkpoint`: the spec's checkpoint section (when to send checkpoints); `resume`: run key ->
    the checkpoint a killed attempt left, to go on from."""
    from scalesweep.spec import CheckpointSpec
    from scalesweep.train import train_runs

    runs = [RunConfig.model_validate(c) for c in configs]
    policy = CheckpointSpec.model_validate(checkpoint) if checkpoint is not None else None
    for config in runs:
        yield {"run_key": config.run_key, "kind": "started"}
    # A loop, not `yield from`: Ray sends values into streaming generators, and a
    # delegated `yield from` would pass them on to inner list iterators, which fail.
    for event in train_runs(runs, gpus_per_run, policy, resume):  # noqa: UP028
        yield event
