"""Each observable against a case computed by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scalesweep import observables as obs
from scalesweep.plan import RunConfig
from scalesweep.spec import TrainingSpec
from scalesweep.train import train_to_result
from scalesweep.zoo.base import IGNORE, cross_entropy

ANALYSIS_COLUMNS = [
    "final_train_loss",
    "final_test_loss",
    "final_train_acc",
    "final_test_acc",
    "steps_to_fit_train",
    "steps_to_fit_test",
    "grokking_delay",
    "weight_norm",
    "n_params",
    "diverged",
    "loss_spikes",
    "activation_rms_init",
    "activation_rms_final",
    "effective_rank",
    "dead_fraction",
    "features_per_dim",
    "induction_score",
]
ALL = list(obs.OBSERVABLES)  # every registered observable, in the order they register


def run(task: str, task_params: dict, family: str, model_params: dict, width: int, **training) -> RunConfig:
    return RunConfig(
        sweep="t",
        task=task,
        task_params=task_params,
        family=family,
        model_params=model_params,
        parametrization="sp",
        model_size=width,
        data_size=64,
        seed=0,
        training=TrainingSpec(**{"steps": 6, "batch_size": 32, "eval_every": 3, "lr": 1e-2, **training}),
        observables=ALL,
    )


def test_rms_and_accuracy_by_hand():
    assert math.isclose(obs.rms(torch.tensor([3.0, -4.0])), math.sqrt(12.5))
    out = torch.tensor([[[2.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    y = torch.tensor([[0, IGNORE], [1, 0]])
    assert obs.accuracy_of(out, y) == pytest.approx(2 / 3)  # the IGNORE position does not count


def test_cross_entropy_matches_torch():
    out, y = torch.randn(7, 5), torch.randint(5, (7,))
    assert torch.allclose(cross_entropy(out, y), F.cross_entropy(out, y))


def test_effective_rank_by_hand():
    k = 3
    h = torch.cat([torch.eye(k), -torch.eye(k)]) * 2.0  # centred, equal variance on k axes
    assert math.isclose(obs.effective_rank_of(h), k, rel_tol=1e-9)
    line = torch.arange(10.0)[:, None] * torch.tensor([[1.0, 2.0, 3.0]])
    assert math.isclose(obs.effective_rank_of(line), 1.0, rel_tol=1e-6)
    # variances 3:1 -> p = (0.75, 0.25)
    two = torch.tensor([[3.0**0.5, 0], [-(3.0**0.5), 0], [0, 1.0], [0, -1.0]])
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert obs.effective_rank_of(two) == pytest.approx(expected, rel=1e-6)


def test_relu_unit_fractions_by_hand():
    linear = nn.Linear(1, 4)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.0], [0.0], [1.0], [1.0]]))
        linear.bias.copy_(torch.tensor([-1.0, 1.0, 0.0, -1.5]))
    model = nn.Sequential(linear, nn.ReLU())
    x = torch.tensor([[-1.0], [0.5], [1.0], [2.0]])
    # unit 0 never on, unit 1 always on, unit 2 on for 3 of 4, unit 3 for 1 of 4
    assert torch.allclose(obs.relu_rates(model, x), torch.tensor([0.0, 1.0, 0.75, 0.25]))
    assert obs.unit_fractions(obs.relu_rates(model, x)) == {
        "dead_fraction": 0.25,
        "hyperactive_fraction": 0.25,
        "nonlinear_rate": 0.5,
    }
    assert math.isnan(obs.unit_fractions(obs.relu_rates(nn.Linear(1, 1), x))["dead_fraction"])


def test_features_per_dim_by_hand():
    w = torch.tensor([[1.0, 0.0, 0.3, 0.6], [0.0, 1.0, 0.3, 0.0]])  # norms 1, 1, 0.42, 0.6
    assert obs.features_per_dim_of(w) == 3 / 2


def test_induction_scores_by_hand():
    period, t = 3, 9
    pattern = torch.zeros(1, 2, t, t)
    pattern[0, :, 0, 0] = 1
    for q in range(1, t):
        pattern[0, 0, q, q - period + 1 if q >= period else 0] = 1.0  # head 0: a perfect induction head
        pattern[0, 1, q, q] = 1.0  # head 1: attends to itself
    scores = obs.induction_scores([pattern], period)
    assert torch.allclose(scores, torch.tensor([[1.0, 0.0]]))
    tokens = obs.repeated_random_tokens(vocab=20, period=10, repeats=5, batch=2)
    assert tokens.shape == (2, 50) and torch.equal(tokens[:, :10], tokens[:, 40:])
    assert len(set(tokens[0, :10].tolist())) == 10


def test_sharpness_of_a_quadratic():
    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))

    model, a = Quadratic(), torch.diag(torch.tensor([5.0, 2.0, -1.0]))
    value = obs.sharpness_of(model, lambda: 0.5 * model.w @ a @ model.w, iters=50)
    assert math.isclose(value, 5.0, rel_tol=1e-4)


def test_loss_spikes_and_fit_steps_by_hand():
    assert obs.count_loss_spikes([1.0, 1.0, 3.0, 1.0, 0.9, 5.0]) == 2
    history = pd.DataFrame({"step": [0, 10, 100], "train_acc": [0.1, 0.95, 1.0], "test_acc": [0.0, 0.2, 0.91]})
    ctx = obs.RunContext(nn.Linear(1, 1), None, 100, 0.9)
    out = obs.fit_steps(history, ctx)
    assert out["steps_to_fit_train"] == 10 and out["steps_to_fit_test"] == 100 and out["grokking_delay"] == 1.0


def test_activation_rms_is_measured_at_init_and_at_the_end():
    config = run("modular_arithmetic", {"p": 11}, "mlp", {"depth": 2, "embed_dim": 4}, 16)
    history, summary = train_to_result(config)
    from scalesweep.train import build

    model, data = build(config, torch.device("cpu"))  # the same seed: the same initial model
    at_init = obs.activation_rms_of(model, data.x_test[: obs.PROBE_SIZE])
    assert math.isclose(summary["activation_rms_init"], at_init["hidden1"], rel_tol=1e-6)
    assert math.isclose(summary["activation_rms_init.hidden0"], at_init["hidden0"], rel_tol=1e-6)
    assert summary["activation_rms_final"] == summary["activation_rms_final.hidden1"]
    assert "activation_rms" in history and history["activation_rms"].iloc[0] == pytest.approx(at_init["hidden1"])


@pytest.mark.parametrize(
    ("task", "task_params", "family", "model_params", "width", "task_specific"),
    [
        ("modular_arithmetic", {"p": 11}, "mlp", {"depth": 1, "embed_dim": 4}, 16, None),
        ("superposition", {"n_features": 8, "n_test": 50}, "tms", {}, 3, "features_per_dim"),
        (
            "in_context",
            {"vocab": 16, "seq_len": 20, "span": 4, "n_test": 8},
            "transformer",
            {"n_heads": 2},
            8,
            "induction_score",
        ),
        ("sparse_parity", {"n_bits": 10, "k": 2, "n_test": 50}, "mlp", {"depth": 1}, 16, None),
        ("teacher_student", {"input_dim": 4, "n_test": 50}, "mlp", {"depth": 1}, 16, None),
    ],
)
def test_every_analysis_column_is_in_the_summary(task, task_params, family, model_params, width, task_specific):
    _, summary = train_to_result(run(task, task_params, family, model_params, width))
    assert set(ANALYSIS_COLUMNS) <= set(summary)
    for name in ("features_per_dim", "induction_score"):
        assert math.isnan(summary[name]) == (name != task_specific), name
    assert math.isfinite(summary["sharpness"]) and math.isfinite(summary["effective_rank"])
    if family != "tms":
        assert 0 <= summary["dead_fraction"] <= 1
    if task_specific == "induction_score":
        assert 0 <= summary["induction_score"] <= 1
