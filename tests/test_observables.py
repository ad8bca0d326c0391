"""Each observable against a case computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scalesweep import observables as obs
from scalesweep.plan import RunConfig
from scalesweep.spec import TrainingSpec
from scalesweep.train import train_to_result
from scalesweep.zoo.base import IGNORE
from scalesweep.zoo.data import cross_entropy

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
    for column in ("anisotropy", "rankme", "stable_rank", "weight_displacement"):
        assert math.isfinite(summary[column]) and summary[column] >= 0, column
    assert summary["anisotropy"] >= 1 and summary["rankme"] >= 1
    applies = {
        "fourier_sparsity": task in ("modular_arithmetic", "in_context"),  # any token embedding (validate: mod only)
        "attention_entropy_mean": family == "transformer",
        "attention_sink_max": family == "transformer",
        "nc1": task in obs.CLASSIFICATION_TASKS,
        "memorization_bits": task in obs.CLASSIFICATION_TASKS,
    }
    for column, finite in applies.items():
        assert math.isfinite(summary[column]) == finite, column
    if family == "transformer":
        assert 0 <= summary["attention_sink_max"] <= 1 and summary["attention_entropy_min"] >= 0


# ---------------------------------------------------------------- levels and applicability


def test_every_registered_observable_has_a_valid_level_and_says_where_it_applies():
    from scalesweep.zoo import FAMILIES, TASKS

    for name, ob in obs.OBSERVABLES.items():
        assert ob.level in obs.LEVELS, name
        assert set(ob.families) <= set(FAMILIES) and set(ob.tasks) <= set(TASKS), name
    with pytest.raises(ValueError, match="level"):
        obs.register("nowhere", summary=lambda history, ctx: {}, columns=("x",))
    assert "nowhere" not in obs.OBSERVABLES
    assert obs.does_not_apply("attention_entropy", "modular_arithmetic", "mlp")
    assert obs.does_not_apply("attention_entropy", "in_context", "transformer") is None
    assert "modular_arithmetic" in obs.does_not_apply("fourier_sparsity", "sparse_parity", "mlp")
    assert obs.does_not_apply("neural_collapse", "teacher_student", "mlp")
    assert obs.levels_of(["final_train_acc", "final_test_acc"]) == ["output"]
    assert obs.levels_of(["induction_score", "weight_norm", "model_size"]) == ["weight", "attention"]
    assert obs.levels_of(["anisotropy.hidden0", "activation_rms_final.block1"]) == ["representation"]


# ---------------------------------------------------------------- new observables, known answers


def test_anisotropy_of_rank_one_is_huge_and_of_isotropic_noise_about_one():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(500, 1, generator=g), torch.randn(1, 8, generator=g)
    assert obs.anisotropy_of(u @ v) > 1e6  # float32 rounding leaves sigma2 ~ 1e-8 sigma1
    assert obs.anisotropy_of(torch.randn(4096, 8, generator=g)) == pytest.approx(1.0, abs=0.1)
    assert obs.anisotropy_of(torch.diag(torch.tensor([6.0, 2.0, 1.0]))) == pytest.approx(3.0)


def test_rankme_of_equal_singular_values_is_their_number_and_of_rank_one_is_one():
    assert obs.rankme_of(torch.eye(6) * 3.0) == pytest.approx(6.0, rel=1e-5)
    line = torch.arange(1.0, 11.0)[:, None] * torch.tensor([[1.0, 2.0, 3.0]])
    assert obs.rankme_of(line) == pytest.approx(1.0, rel=1e-5)
    # singular values 3, 1: p = (0.75, 0.25)
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert obs.rankme_of(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(expected, rel=1e-5)


def test_power_law_alpha_recovers_a_pareto_exponent_and_stable_rank_by_hand():
    rng = np.random.default_rng(0)
    for alpha in (2.0, 3.5):
        samples = (1 - rng.random(20_000)) ** (-1 / (alpha - 1))  # density ~ x^-alpha, x >= 1
        assert obs.power_law_alpha(samples) == pytest.approx(alpha, rel=0.05)
    assert math.isnan(obs.power_law_alpha(np.arange(1.0, 10.0)))  # a tail of 5 < 8 values
    assert obs.stable_rank_of(torch.eye(7)) == pytest.approx(7.0)
    assert obs.stable_rank_of(torch.ones(4, 5)) == pytest.approx(1.0)
    assert obs.stable_rank_of(torch.diag(torch.tensor([2.0, 1.0]))) == pytest.approx(1.25)


def test_weight_spectrum_of_a_model_with_a_power_law_spectrum():
    rng = np.random.default_rng(1)
    n = 400
    s = np.sqrt(np.sort((1 - rng.random(n)) ** (-1 / 2.0))[::-1])  # eigenvalues s^2 ~ x^-3
    q1, _ = np.linalg.qr(rng.standard_normal((n, n)))
    q2, _ = np.linalg.qr(rng.standard_normal((n, n)))
    model = nn.Sequential(nn.Linear(n, n, bias=False), nn.ReLU(), nn.Linear(n, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(q1 @ np.diag(s) @ q2.T))
    out = obs.weight_spectrum_of(model)
    assert out["weight_alpha.0.weight"] == pytest.approx(3.0, rel=0.15)
    assert math.isnan(out["weight_alpha.2.weight"]) and out["stable_rank.2.weight"] == pytest.approx(1.0)
    assert out["stable_rank.0.weight"] == pytest.approx(float((s**2).sum() / s[0] ** 2), rel=1e-6)
    assert out["weight_alpha"] == out["weight_alpha.0.weight"]  # the mean over finite alphas


def test_weight_displacement_by_hand():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    initial = {k.removeprefix(obs.INIT_WEIGHTS): v for k, v in obs._init_weights(model, None).items()}
    with torch.no_grad():
        model.weight.add_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # ||dW|| = sqrt 2 = ||W0||
    out = obs.weight_displacement_of(model, initial)
    assert out["weight_displacement.weight"] == pytest.approx(1.0) and out["weight_displacement"] == pytest.approx(1.0)


def test_fourier_sparsity_of_a_pure_cosine_embedding_is_one_and_of_noise_is_low():
    p, t = 31, torch.arange(31.0)[:, None]
    circle = torch.cat([torch.cos(2 * math.pi * 4 * t / p), torch.sin(2 * math.pi * 4 * t / p)], 1)
    out = obs.fourier_sparsity_of(circle)
    assert out["fourier_sparsity"] == pytest.approx(1.0) and out["fourier_key_frequencies"] == 1
    two = torch.cat([circle, 0.5 * torch.cos(2 * math.pi * 9 * t / p) + 3.0], 1)  # + a constant (removed)
    assert obs.fourier_sparsity_of(two, k=1)["fourier_sparsity"] == pytest.approx(1 / 1.125)
    assert obs.fourier_sparsity_of(two)["fourier_key_frequencies"] == 2
    noise = obs.fourier_sparsity_of(torch.randn(p, 64, generator=torch.Generator().manual_seed(0)))
    assert noise["fourier_sparsity"] < 0.5 and noise["fourier_key_frequencies"] > 10  # ~5/15 of 15 frequencies
    # an even p: the Nyquist frequency (alternating signs) counts once
    assert obs.fourier_energy(torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])).tolist() == [0.0, 16.0]


def test_attention_entropy_of_uniform_attention_is_log_t_and_sink_mass_by_hand():
    t = 6
    uniform = torch.full((2, 3, t, t), 1 / t)
    entropy, sink = obs.attention_head_stats([uniform])
    assert torch.allclose(entropy, torch.full((3,), math.log(t), dtype=torch.double))
    assert torch.allclose(sink, torch.full((3,), 1 / t, dtype=torch.double))
    onto_first = torch.zeros(1, 2, t, t)
    onto_first[..., 0] = 1.0
    causal = torch.ones(t, t).tril()
    causal = (causal / causal.sum(-1, keepdim=True)).expand(1, 1, t, t)
    entropy, sink = obs.attention_head_stats([onto_first, causal])  # two layers: 2 + 1 heads
    expected = sum(math.log(q + 1) for q in range(1, t)) / (t - 1)
    assert torch.allclose(entropy, torch.tensor([0.0, 0.0, expected], dtype=torch.double))
    assert torch.allclose(sink, torch.tensor([1.0, 1.0, expected_sink(t)], dtype=torch.double))


def expected_sink(t: int) -> float:
    return sum(1 / (q + 1) for q in range(1, t)) / (t - 1)


def test_nc1_of_collapsed_features_is_zero_and_of_two_noisy_classes_by_hand():
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    y = torch.arange(3).repeat(10)
    assert obs.nc1_of(means[y], y) == pytest.approx(0.0, abs=1e-12)
    # 1-D, class means +-1, within-class variance 0.25: Sigma_W = 0.25, Sigma_B = 1, NC1 = 0.25 / 2
    h = torch.tensor([[1.5], [0.5], [-0.5], [-1.5]])
    assert obs.nc1_of(h, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.125)
    assert math.isnan(obs.nc1_of(h, torch.zeros(4, dtype=torch.long)))


def test_memorization_bits_by_hand():
    assert obs.memorization_bits_of(math.log(8), 8, 100) == pytest.approx(0.0)  # chance: nothing stored
    assert obs.memorization_bits_of(0.0, 8, 100) == pytest.approx(300.0)  # every label: log2 8 bits
    assert obs.memorization_bits_of(math.log(2), 8, 10) == pytest.approx(20.0)


def test_weight_displacement_is_zero_at_init_and_the_same_in_a_seed_ensemble():
    from scalesweep.train import build, train_ensemble, train_one

    config = run("modular_arithmetic", {"p": 11}, "mlp", {"depth": 1, "embed_dim": 4}, 16)
    model, data = build(config, torch.device("cpu"))
    ctx = obs.RunContext(model, data, 1, 0.9, obs._init_weights(model, data))
    assert obs._weight_displacement(pd.DataFrame(), ctx)["weight_displacement"] == 0.0
    history, trained = train_to_result(config)
    assert 0 < trained["weight_displacement"] < 10 and "weight_displacement.hidden.0.weight" in trained
    assert history["weight_displacement"].iloc[0] == 0.0  # the step series starts at init...
    assert history["weight_displacement"].iloc[-1] == pytest.approx(trained["weight_displacement"])  # ...ends here
    assert not any(k.startswith(obs.INIT_WEIGHTS) for k in trained)  # the initial weights are not logged
    seeds = [config.model_copy(update={"seed": s}) for s in (0, 1)]
    alone = [e["summary"] for c in seeds for e in train_one(c) if e["kind"] == "summary"]
    together = [e["summary"] for e in train_ensemble(seeds, torch.device("cpu")) if e["kind"] == "summary"]
    for a, b in zip(alone, together, strict=True):
        assert b["weight_displacement"] == pytest.approx(a["weight_displacement"], rel=1e-4)
        assert b["fourier_sparsity"] == pytest.approx(a["fourier_sparsity"], rel=1e-4)


def test_validate_refuses_an_observable_that_does_not_apply_and_names_what_would_be_valid():

    from conftest import GROKKING_SPEC

    from scalesweep.errors import UserError
    from scalesweep.spec import parse_spec

    quickstart = GROKKING_SPEC
    listed = "observables: [loss, accuracy, fit_steps, weight_norm, grad_norm, loss_spikes]"
    assert listed in quickstart

    def spec_with(observables: str, text: str = quickstart):
        return parse_spec(text.replace(listed, f"observables: [{observables}]"), "q.yaml")

    with pytest.raises(UserError) as err:
        spec_with("loss, accuracy, fit_steps, attention_entropy")
    message = str(err.value)
    assert 'q.yaml: field "observables[3]": observable attention_entropy does not apply' in message
    assert "transformer" in message and "valid here: " in message and "fourier_sparsity" in message
    assert "\n" not in message
    assert spec_with("loss, accuracy, fit_steps, fourier_sparsity, neural_collapse, memorization, rankme")
    parity = quickstart.replace('name: modular_arithmetic\n  params: {p: 31, op: "+"}', "name: sparse_parity")
    assert parity != quickstart
    with pytest.raises(UserError, match="fourier_sparsity does not apply to task sparse_parity.*modular_arithmetic"):
        spec_with("loss, accuracy, fit_steps, fourier_sparsity", parity)
    default = parse_spec(quickstart.replace(listed + "\n", ""), "q.yaml")  # the default list is never refused
    assert "induction_score" in default.observables


def test_the_induction_score_is_logged_at_every_evaluation_and_ends_at_its_summary():
    config = run("in_context", {"vocab": 16, "seq_len": 20, "span": 4, "n_test": 8}, "transformer", {"n_heads": 2}, 8)
    history, summary = train_to_result(config)
    assert list(history["step"]) == [0, 3, 6]
    scores = history["induction_score"].to_numpy()
    assert np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()
    assert scores[-1] == pytest.approx(summary["induction_score"])  # the final model, measured the same way


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("nosuchmodule_xyz:f", "No module named 'nosuchmodule_xyz'"),
        ("math:nothere", "has no attribute 'nothere'"),
        ("math:pi", "is not a function"),
    ],
)
def test_a_user_observable_that_does_not_load_is_a_clear_error(name, said):
    from scalesweep.errors import UserError

    with pytest.raises(UserError, match="module:function") as caught:
        obs.resolve([name])
    assert said in str(caught.value) and f'"{name}"' in str(caught.value)


def test_a_user_observable_loads_as_a_summary():
    (observable,) = obs.resolve(["math:sqrt"])
    assert observable.summary is math.sqrt and observable.step is None
