"""Vectorised groups beyond seeds: runs that differ in data size, lr or weight decay train as one
model, and each member's numbers equal that run trained alone (as test_ensemble checks for seeds),
across minibatches, full batches of different lengths (padded, masked), and a mix of both."""

from __future__ import annotations

import pytest
import torch

from scalesweep.plan import group_by_ensemble, group_by_stack
from scalesweep.plan.groups import ACTIVATIONS, PADDING_WASTE, batch_rows
from scalesweep.spec import TrainingSpec
from scalesweep.train import train_ensemble, train_runs
from tests.test_checkpoints import EVERY_EVAL, results, until_checkpoint
from tests.test_checkpoints import assert_same as assert_same_resumed
from tests.test_ensemble import TMS, TRANSFORMER, assert_together_equals_alone, configs

CPU = torch.device("cpu")


def varied(points, **overrides):
    """One run per (seed, data_size, lr, weight_decay) point, otherwise test_ensemble's runs."""
    training = {"steps": 30, "batch_size": 32, "eval_every": 10, **overrides.pop("training", {})}
    runs = []
    for seed, size, lr, wd in points:
        (run,) = configs((seed,), data_size=size, training={**training, "lr": lr, "weight_decay": wd}, **overrides)
        runs.append(run)
    return runs


POINTS = [(0, 60, 1e-2, 0.5), (1, 100, 1e-2, 0.5), (0, 100, 3e-3, 0.5), (2, 150, 1e-2, 0.0), (1, 60, 3e-2, 1.0)]


@pytest.mark.parametrize(
    "points,overrides",
    [
        (POINTS, {}),  # every member draws minibatches (32 < n): the batches stack, no mask
        (POINTS, {"training": {"batch_size": 512}}),  # full batches of different lengths: padded, masked
        (POINTS, {"training": {"batch_size": 80}}),  # a mix: 60 is its whole set, 100 and 150 draw 80
        (POINTS, {"parametrization": "mup", "model_size": 64, "training": {"optimizer": "sgd"}}),
        ([(0, 20, 1e-2, 0.0), (1, 40, 3e-3, 0.1)], TRANSFORMER),  # full batches, a per-token mask
        ([(0, 60, 1e-2, 0.0), (1, 100, 3e-2, 0.1), (0, 100, 1e-2, 0.0)], {**TMS, "model_size": 2}),
    ],
    ids=["minibatches", "full-batches", "mixed", "mup-sgd", "transformer-per-token", "tms-regression"],
)
def test_a_group_of_data_sizes_lrs_and_weight_decays_equals_each_run_trained_alone(points, overrides):
    runs = varied(points, **overrides)
    assert len(group_by_stack(runs, waste=1.0)) == 1  # exact whatever the padding (whether it pays: the bound)
    assert_together_equals_alone(runs)


@pytest.mark.parametrize("batch_size", [32, 80])
def test_a_group_resumed_from_a_checkpoint_ends_as_if_never_stopped(batch_size):
    (runs,) = group_by_stack(varied(POINTS, training={"steps": 60, "batch_size": batch_size}))  # train_runs' order
    whole = results(train_ensemble(runs, CPU))
    saved = until_checkpoint(train_ensemble(runs, CPU, EVERY_EVAL), 3)
    assert saved["run_keys"] == [c.run_key for c in runs], "one checkpoint for the whole group"
    resumed = results(train_runs(runs, 0.0, EVERY_EVAL, {c.run_key: saved["data"] for c in runs}))
    for config in runs:
        assert resumed[config.run_key]["resumed"] == 20
        assert_same_resumed(whole[config.run_key], resumed[config.run_key])


def test_group_by_stack_joins_seeds_data_sizes_lrs_and_weight_decays_never_shapes():
    grouped = varied(POINTS)
    other_width = configs((0, 1), model_size=8)
    other_steps = configs((0,), training={"steps": 20})
    other_task = configs((0,), task_params={"p": 11})
    groups = group_by_stack(grouped + other_width + other_steps + other_task)
    assert [len(g) for g in groups] == [len(grouped), 2, 1, 1]
    assert [(r.training.lr, r.training.weight_decay) for r in groups[0]] == sorted(
        (r.training.lr, r.training.weight_decay) for r in grouped
    ), "equal hyperparameters together: they share stacked tensors"
    assert len(group_by_ensemble(grouped)) == 5, "the seed ensembles stay as they were"


def test_train_runs_trains_a_varied_group_together():
    runs = varied(POINTS[:3])
    summaries = [e["summary"] for e in train_runs(runs) if e["kind"] == "summary"]
    assert [s["ensemble_size"] for s in summaries] == [3.0] * 3


def test_a_training_spec_other_than_lr_and_weight_decay_splits_the_group():
    base = TrainingSpec(steps=30, batch_size=32, eval_every=10)
    assert base.model_dump().keys() >= {"lr", "weight_decay", "optimizer", "batch_size", "steps"}
    runs = varied(POINTS[:2]) + varied(POINTS[:2], training={"optimizer": "adam"})
    assert [len(g) for g in group_by_stack(runs)] == [2, 2]


def test_group_by_stack_bounds_padding_and_activations_and_never_splits_a_seed_ensemble():
    """compare.py's grid (benchmarks/group_speed.py): full batches of 100-400 pairs and minibatches
    of 512 from 800; a group joins seed ensembles only while padding and activations stay bounded."""
    from benchmarks.group_speed import grid

    runs = grid(steps=30)
    groups = group_by_stack(runs)
    assert sorted(c.run_key for g in groups for c in g) == sorted(c.run_key for c in runs)
    seed_ensembles = {c.run_key: c.ensemble_key for c in runs}
    for group in groups:
        assert len({c.stack_key for c in group}) == 1
        members = {seed_ensembles[c.run_key] for c in group}
        assert sum(len(e) for e in group_by_ensemble(group)) == len(group) == 4 * len(members), "whole ensembles"
        rows = [batch_rows(c) for c in group]
        if len(members) == 1:
            continue  # a seed ensemble alone trains as it always did, whatever its size
        assert sum(rows) >= (1 - PADDING_WASTE) * max(rows) * len(rows)
        assert max(rows) * len(rows) * group[0].model_size <= ACTIVATIONS
    widths = {w: sorted(sorted({c.data_size for c in g}) for g in groups if g[0].model_size == w) for w in (32, 128)}
    assert widths[32] == [[100], [200], [400], [800]], "25% or more padding: measured slower than apart"
    assert widths[128] == [[100], [200], [400], [800]], "wide ones: 8 x 512 rows x 128 leaves the cache"
    loose = group_by_stack(runs, waste=0.6, activations=ACTIVATIONS)
    assert sorted(sorted({c.data_size for c in g}) for g in loose if g[0].model_size == 32) == [[100, 200], [400, 800]]


def test_runs_that_need_no_padding_group_within_the_activation_bound():
    """benchmarks/group_speed.py's hyper grid: 800 pairs (512-row minibatches) x 3 lrs x 2 weight
    decays x 4 seeds per width: width 32 joins two seed ensembles (8 x 512 x 32 = 2^17), wider ones
    stay apart."""
    from benchmarks.group_speed import grid

    groups = group_by_stack(grid(steps=30, kind="hyper"))
    sizes = {w: sorted(len(g) for g in groups if g[0].model_size == w) for w in (32, 64, 128)}
    assert sizes == {32: [8, 8, 8], 64: [4] * 6, 128: [4] * 6}
