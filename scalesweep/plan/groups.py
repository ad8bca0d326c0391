"""Which runs train together as one vectorised model (`train.train_ensemble`): `group_by_stack`.

Runs that differ only in seed, data size, lr or weight decay (`RunConfig.stack_key`) share every
shape, so one vectorised model trains them exactly: each member has its own data, minibatch
stream and optimiser groups (`train.Ensemble`, `train.GroupData`; tests/test_groups.py checks each
member against its run trained alone). Whether grouping *pays* is another matter, measured by
`benchmarks/group_speed.py` on one CPU thread (2026-12-01, a shared 2-core EPYC):

- a group's fixed cost per step (Python, dispatch, vmap) is paid once instead of once per seed
  ensemble: the gain, largest for small models;
- members whose batches have fewer rows than the group's largest (full batches of smaller sets)
  are padded to it, and padded rows cost as much as real ones: a seed ensemble joins a group only
  while at most `PADDING_WASTE` of the padded rows are padding (re-measured 2026-12-07, below);
- past about half a megabyte per activation (rows x width x members, float32) the elementwise and
  matmul kernels leave the core's cache and a step costs more than its parts (width 128: 8 members
  of 512 rows take 2.4x the time of 4; width 32: one group of 16 members takes 1.19x the time of
  its 4 seed ensembles, two groups of 8 take 0.83x), so a group stays within `ACTIVATIONS`.

Seed ensembles are never split (`group_by_ensemble` is the seeds-only case). The driver hands each
group to one Ray task (`execute.Driver`), and `train.train_runs` forms the same groups again inside it.
"""

from __future__ import annotations

from scalesweep.plan.compute import tokens_per_example
from scalesweep.plan.runconfig import RunConfig, group_by_ensemble

# The largest share of a group's batch rows that may be padding. Merging seed ensembles saves
# their per-step fixed cost, at most ~2 - 10% of a step on this CPU once the MLP family's forward
# went without vmap (`benchmarks/group_speed.py`, 2026-12-07: groups that need no padding 1.02x,
# compare.py's grid grouped with up to 60% padding 0.95x), while a padded row costs what a real one
# does: more than ~10% of padding cannot pay back. (0.6 was measured before `stacked_forward`.)
PADDING_WASTE = 0.1
ACTIVATIONS = 2**17  # the most activation elements per layer of a group (512 KiB of float32)


def group_by_stack(
    runs: list[RunConfig], waste: float = PADDING_WASTE, activations: int = ACTIVATIONS
) -> list[list[RunConfig]]:
    """Runs grouped to train as one vectorised model: per stack key, its seed ensembles (most
    batch rows first) merged while the group stays within `waste` and `activations` (`_fits`).
    Within a group, runs of equal (lr, weight decay) come together (stable): they share stacked
    tensors, so a group that differs only in seed and data size is as cheap as a seed ensemble."""
    by_key: dict[str, list[RunConfig]] = {}
    for run in runs:
        by_key.setdefault(run.stack_key, []).append(run)
    parts = [part for same in by_key.values() for part in _merged(group_by_ensemble(same), waste, activations)]
    return [sorted(part, key=lambda r: (r.training.lr, r.training.weight_decay)) for part in parts]


def batch_rows(run: RunConfig) -> int:
    """Rows of the run's batch at each step: a minibatch, or its whole set when that is smaller."""
    return min(run.training.batch_size, run.data_size)


def _merged(ensembles: list[list[RunConfig]], waste: float, activations: int) -> list[list[RunConfig]]:
    parts: list[list[RunConfig]] = []
    for ensemble in sorted(ensembles, key=lambda e: -batch_rows(e[0])):  # stable: plan order within equal rows
        if parts and _fits(parts[-1] + ensemble, waste, activations):
            parts[-1].extend(ensemble)
        else:
            parts.append(list(ensemble))
    return parts


def _fits(runs: list[RunConfig], waste: float, activations: int) -> bool:
    """At most `waste` of the padded rows are padding, and the padded rows x width (x tokens for a
    per-token task) stay within `activations`."""
    rows = [batch_rows(r) for r in runs]
    padded = max(rows) * len(runs)
    tokens = tokens_per_example(runs[0].task, runs[0].task_params)
    return sum(rows) >= (1 - waste) * padded and padded * runs[0].model_size * tokens <= activations
