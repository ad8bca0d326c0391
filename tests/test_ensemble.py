"""Seed ensembles: each seed's numbers equal the same seed trained alone; failures stay contained."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scalesweep.plan import RunConfig
from scalesweep.spec import TrainingSpec
from scalesweep.train import (
    GroupData,
    Minibatches,
    build,
    draw_minibatches,
    train_ensemble,
    train_one,
    train_runs,
)
from scalesweep.zoo import FAMILIES, TASKS
from scalesweep.zoo.base import DataShape, Params, register_family, register_task
from scalesweep.zoo.data import Dataset

CPU = torch.device("cpu")
OBSERVABLES = [
    "loss",
    "accuracy",
    "fit_steps",
    "weight_norm",
    "grad_norm",
    "loss_spikes",
    "activation_rms",
    "effective_rank",
]
NOT_COMPARED = {"train_seconds", "ensemble_size"}


def configs(seeds=(0, 1, 2), **overrides) -> list[RunConfig]:
    training = {"steps": 30, "batch_size": 32, "eval_every": 10, "lr": 1e-2, "weight_decay": 0.5}
    training.update(overrides.pop("training", {}))
    base = dict(
        sweep="t",
        task="modular_arithmetic",
        task_params={"p": 13},
        family="mlp",
        model_params={"depth": 2, "embed_dim": 8},
        parametrization="sp",
        model_size=16,
        data_size=100,
        training=TrainingSpec(**training),
        observables=OBSERVABLES,
    )
    base.update(overrides)
    return [RunConfig(seed=s, **base) for s in seeds]


def by_run(events) -> dict[str, dict]:
    runs: dict[str, dict] = {}
    for event in events:
        run = runs.setdefault(event["run_key"], {"rows": [], "end": []})
        if event["kind"] == "metrics":
            assert not run["end"], "no metrics after the run ended"
            run["rows"] += event["rows"]
        else:
            run["end"].append(event)
    return runs


def assert_same(alone: dict, together: dict, rtol: float = 1e-4) -> None:
    assert [e["kind"] for e in alone["end"]] == [e["kind"] for e in together["end"]] == ["summary"]
    a, b = alone["end"][0]["summary"], together["end"][0]["summary"]
    assert set(a) == set(b) - {"ensemble_size"}
    for key in set(a) - NOT_COMPARED:
        assert a[key] == pytest.approx(b[key], rel=rtol, abs=1e-5, nan_ok=True), key
    assert len(alone["rows"]) == len(together["rows"])
    for ra, rb in zip(alone["rows"], together["rows"], strict=True):
        assert ra == pytest.approx(rb, rel=rtol, abs=1e-5, nan_ok=True)


def assert_together_equals_alone(runs: list[RunConfig]) -> dict[str, dict]:
    """Train `runs` as one vectorised model and each alone: every run's rows and summary agree,
    and each knows the size of the model it was trained in. Returns the together events by run."""
    alone = by_run(e for c in runs for e in train_one(c, CPU))
    together = by_run(train_ensemble(runs, CPU))
    assert set(together) == {c.run_key for c in runs}
    for config in runs:
        assert_same(alone[config.run_key], together[config.run_key])
        assert together[config.run_key]["end"][0]["summary"]["ensemble_size"] == len(runs)
    return together


# A per-token transformer on in-context sequences (10 steps: Adam amplifies rounding differences
# beyond that), and the toy model of superposition (regression): cases tests/test_groups.py reuses.
TRANSFORMER = {
    "task": "in_context",
    "task_params": {"vocab": 12, "seq_len": 12, "span": 3, "n_test": 16},
    "family": "transformer",
    "model_params": {"n_heads": 2, "attention_only": True},
    "parametrization": "mup",
    "model_size": 16,
    "training": {"steps": 10, "batch_size": 64, "eval_every": 5, "optimizer": "adam"},
}
TMS = {"task": "superposition", "task_params": {"n_features": 6, "n_test": 50}, "family": "tms", "model_params": {}}


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # minibatches of an MLP with AdamW
        {"parametrization": "mup", "model_size": 64, "training": {"optimizer": "sgd", "lr": 0.1}},
        {**TRANSFORMER, "data_size": 40},
        {**TMS, "model_size": 2, "observables": OBSERVABLES + ["features_per_dim"]},
    ],
    ids=["mlp-adamw", "mlp-mup-sgd", "transformer-mup-adam", "tms"],
)
def test_ensemble_equals_each_seed_trained_alone(overrides):
    runs = configs(**overrides)
    together = assert_together_equals_alone(runs)
    summaries = [together[c.run_key]["end"][0]["summary"]["final_train_loss"] for c in runs]
    assert len(set(summaries)) == len(runs), "seeds differ (own init, own data)"


class NaNParams(Params):
    bad_seed: int = 1


@pytest.fixture
def nan_task():
    """Regression data that is NaN for one seed only: that seed must diverge alone."""

    @register_task("test_nan_for_one_seed", NaNParams, known_for="testing")
    def make(params: NaNParams, data_size: int, seed: int) -> Dataset:
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(data_size + 20, 3, generator=g), torch.randn(data_size + 20, 1, generator=g)
        if seed == params.bad_seed:
            y[:] = math.nan
        return Dataset(
            x[:data_size],
            y[:data_size],
            x[data_size:],
            y[data_size:],
            DataShape("vectors", 1, input_dim=3),
            "regression",
        )

    yield "test_nan_for_one_seed"
    TASKS.pop("test_nan_for_one_seed")


def test_a_diverging_seed_is_isolated(nan_task):
    runs = configs(task=nan_task, task_params={}, model_params={"depth": 1})
    together = by_run(train_ensemble(runs, CPU))
    for config in runs:
        summary = together[config.run_key]["end"][0]["summary"]
        assert summary["diverged"] == float(config.seed == 1)
        if config.seed == 1:
            assert [r["step"] for r in together[config.run_key]["rows"]] == [0.0]  # stopped at its first eval
        else:
            assert_same(by_run(train_one(config, CPU))[config.run_key], together[config.run_key])


def test_an_exception_fails_the_ensemble_not_the_process():
    runs = configs(training={"fail_at_step": 12})
    ends = {k: v["end"] for k, v in by_run(train_runs(runs)).items()}
    assert all([e["kind"] for e in end] == ["failed"] for end in ends.values()) and len(ends) == 3
    assert "InjectedFailure" in next(iter(ends.values()))[0]["error"]
    bad = configs(data_size=10_000)  # more pairs than the task has: fails while building
    assert all(e["kind"] == "failed" and "data_size" in e["error"] for e in train_runs(bad))


class Branchy(nn.Module):
    """Data-dependent control flow, which vmap cannot batch."""

    def __init__(self, width: int, shape: DataShape):
        super().__init__()
        self.embed = nn.Embedding(shape.vocab, width)
        self.readout = nn.Linear(width * shape.seq_len, shape.output_dim)

    def forward(self, x):
        h = self.embed(x).flatten(1)
        return self.readout(h if h.sum() > 0 else -h)


@pytest.fixture
def branchy_family():
    register_family("test_branchy", Params, knob="width")(lambda p, w, shape, par: Branchy(w, shape))
    yield "test_branchy"
    FAMILIES.pop("test_branchy")


def test_an_architecture_vmap_cannot_batch_falls_back_to_one_by_one(branchy_family):
    runs = configs(family=branchy_family, model_params={}, observables=["loss"])
    together = by_run(train_runs(runs))
    for config in runs:
        assert_same(by_run(train_one(config, CPU))[config.run_key], together[config.run_key])
        assert "ensemble_size" not in together[config.run_key]["end"][0]["summary"]


def test_train_runs_groups_mixed_runs_by_ensemble():
    runs = configs(seeds=(0, 1)) + configs(seeds=(0,), model_size=8) + configs(seeds=(5, 6), training={"lr": 3e-3})
    events = list(train_runs(runs))
    ends = [e for e in events if e["kind"] != "metrics"]
    assert sorted(e["run_key"] for e in ends) == sorted(c.run_key for c in runs)
    assert all(e["kind"] == "summary" for e in ends)


def test_a_block_of_minibatches_is_the_draws_one_step_at_a_time():
    """Training draws a block of steps' minibatches in one call (`train.BlockDraws`); on the CPU
    that call must give the numbers, and leave the generator where, one call a step would."""
    for n, batch, steps in [(1000, 256, 100), (800, 512, 7), (70_000, 128, 33)]:
        one_by_one, block = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        expected = torch.stack([torch.randint(n, (batch,), generator=one_by_one) for _ in range(steps)])
        assert torch.equal(draw_minibatches(n, batch, steps, block), expected)
        assert torch.equal(block.get_state(), one_by_one.get_state())
    assert draw_minibatches(100, 128, 5, torch.Generator()) is None  # the whole set fits in one batch


@pytest.mark.parametrize("together", [False, True], ids=["alone", "ensemble"])
def test_a_runs_training_does_not_depend_on_its_evaluation_interval(together):
    """A run's minibatches, hence its trained model, must not depend on when it evaluates (a
    checkpoint can only come at an evaluation): the final losses agree exactly for three
    evaluation intervals."""
    finals = []
    for eval_every in (7, 10, 60):
        runs = configs(training={"steps": 60, "eval_every": eval_every})
        events = train_ensemble(runs, CPU) if together else (e for c in runs for e in train_one(c, CPU))
        rows = by_run(events)
        finals.append([rows[c.run_key]["rows"][-1]["train_loss"] for c in runs])
    assert finals[0] == finals[1] == finals[2]


def test_a_block_of_draws_stays_small_however_rarely_a_run_evaluates():
    """Blocks sit at fixed steps, not at evaluations: a run that evaluates only at its end (100 000
    steps of 512 rows: 400 MB of indices) must hold at most a MiB of them at once."""
    t = TrainingSpec(steps=100_000, batch_size=512, eval_every=100_000)
    alone = Minibatches(1000, torch.Generator().manual_seed(0), t)
    assert alone.at(0).shape == (512,) and alone.block.numel() * 8 <= 1 << 20
    t = t.model_copy(update={"batch_size": 64})  # a member of 100 pairs draws, one of 50 is whole
    runs = [configs()[0], configs(data_size=50)[0]]
    group = GroupData([build(c, CPU)[1] for c in runs], [torch.Generator().manual_seed(s) for s in (0, 1)], t)
    x, _, rows = group.batch(0)
    assert x.shape[:2] == (2, 64) and rows[1].sum() == 50
    assert group.flat.numel() * 8 <= 2 << 20
