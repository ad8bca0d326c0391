"""IsoFLOP design and analysis: plans hold the budget, the fitted optimum is where it should be."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scalesweep.analysis.isoflop import fit_exponents, isoflop_optima
from scalesweep.commands import isoflop_study
from scalesweep.errors import UserError
from scalesweep.plan import plan
from scalesweep.plan.compute import config_n_params
from scalesweep.plan.designs import TOLERANCE
from scalesweep.preview import fit_rate
from scalesweep.spec import parse_spec
from tests.conftest import TINY_SPEC, cli_here, write_spec

ISOFLOP_SPEC = """
name: iso
task:
  name: teacher_student
  params: {input_dim: 8, n_test: 100}
model:
  family: mlp
  params: {depth: 1}
axes:
  model_size: [4, 8, 16, 32, 64]
  seeds: 2
design:
  kind: isoflop
  budgets: [2e8, 1e9, 5e9]
training:
  batch_size: 64
grid:
  training.lr: [0.001, 0.01]
"""


def test_isoflop_plan_holds_every_budget_within_tolerance():
    runs = plan(parse_spec(ISOFLOP_SPEC))
    assert len(runs) == 3 * 5 * 2 * 2
    for run in runs:
        assert abs(run.compute / run.grid["budget"] - 1) <= TOLERANCE
        assert run.data_size == run.examples_seen  # one epoch-like pass: each example seen about once
    widths = {run.model_size: config_n_params(run) for run in runs}
    assert sorted(widths.values()) == [widths[w] for w in sorted(widths)]  # measured, grows with width
    big, small = (next(r for r in runs if r.model_size == w and r.grid["budget"] == 1e9) for w in (64, 4))
    assert big.training.steps < small.training.steps  # a bigger model sees less data at equal compute


def test_isoflop_plan_refuses_a_budget_integer_steps_cannot_hold():
    text = ISOFLOP_SPEC.replace("budgets: [2e8, 1e9, 5e9]", "budgets: [1e5]")
    with pytest.raises(UserError, match="miss the budget"):
        plan(parse_spec(text))


def test_isoflop_spec_must_not_give_data_size_and_grid_must():
    with pytest.raises(UserError, match="data size from its budget"):
        parse_spec(ISOFLOP_SPEC.replace("seeds: 2", "seeds: 2\n  data_size: [10, 20]"))
    with pytest.raises(UserError, match="data_size is required"):
        parse_spec(TINY_SPEC.format(name="t", steps=5).replace("  data_size: [30, 60, 120]\n", ""))
    with pytest.raises(UserError, match="needs budgets"):
        parse_spec(ISOFLOP_SPEC.replace("budgets: [2e8, 1e9, 5e9]", "budgets: []"))


def test_grid_runs_get_compute_from_steps_and_measured_params():
    runs = plan(parse_spec(TINY_SPEC.format(name="t", steps=40)))
    for run in runs:
        seen = 40 * min(128, run.data_size)
        assert run.compute == 6 * config_n_params(run) * seen


# ---------------------------------------------------------------- analysis on a known surface

E, A, ALPHA, B, BETA = 1.0, 40.0, 0.5, 300.0, 0.4  # L = E + A/N^alpha + B/D^beta
BUDGETS = [1e8, 1e9, 1e10]
STEP = 2.0  # model sizes a factor 2 apart


def true_optimum(c: float) -> float:
    """Argmin over N of L(N, C/6N): closed form N* = G (C/6)^(beta/(alpha+beta))."""
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    return g * (c / 6) ** (BETA / (ALPHA + BETA))


def synthetic_runs(rng: np.random.Generator, noise: float = 0.01, seeds: int = 2) -> pd.DataFrame:
    rows = []
    for c in BUDGETS:
        centre = true_optimum(c) * rng.uniform(0.7, 1.4)  # the grid is not centred on the optimum
        for k in range(-3, 4):
            n = centre * STEP**k
            d = c / (6 * n)
            for seed in range(seeds):
                loss = E + A / n**ALPHA + B / d**BETA + rng.normal(0, noise)
                rows.append(dict(budget=c, n_params=n, seed=seed, final_test_loss=loss))
    return pd.DataFrame(rows)


def test_fitted_optimum_lands_within_one_grid_step_of_the_true_one():
    misses, trials = 0, 40
    for trial in range(trials):
        rng = np.random.default_rng(trial)
        optima, _ = isoflop_optima(synthetic_runs(rng), n_boot=50, rng=trial)
        for row in optima.itertuples():
            misses += abs(np.log(row.n_opt / true_optimum(row.budget))) > np.log(STEP)
    assert misses / (trials * len(BUDGETS)) <= 0.05


def test_optimum_is_close_and_exponent_is_recovered_within_its_interval():
    rng = np.random.default_rng(7)
    optima, boots = isoflop_optima(synthetic_runs(rng, seeds=3), n_boot=300, rng=1)
    for row in optima.itertuples():
        assert row.n_low <= row.n_opt <= row.n_high
        # the parabola's misfit to this asymmetric profile biases N_opt by a few percent, not more
        assert abs(np.log(row.n_opt / true_optimum(row.budget))) < np.log(1.15)
    fit = fit_exponents(optima, boots)
    want = BETA / (ALPHA + BETA)
    assert fit.a_low <= want <= fit.a_high
    assert fit.b == pytest.approx(1 - fit.a)


def test_profile_minimum_at_the_edge_is_flagged():
    runs = synthetic_runs(np.random.default_rng(0), noise=0.001)
    shifted = runs.assign(n_params=runs["n_params"] * 100)  # true optimum far below the sizes tried
    shifted["final_test_loss"] = (
        E + A / shifted["n_params"] ** ALPHA + B / (shifted["budget"] / (6 * shifted["n_params"])) ** BETA
    )
    optima, _ = isoflop_optima(shifted, n_boot=20)
    assert optima["at_edge"].all()


def test_exponents_need_two_budgets():
    optima, boots = isoflop_optima(synthetic_runs(np.random.default_rng(0)).query("budget == 1e9"), n_boot=20)
    with pytest.raises(UserError, match="2 or more budgets"):
        fit_exponents(optima, boots)


def test_isoflop_analysis_of_a_grid_sweep_says_what_design_it_needs():
    with pytest.raises(UserError, match="needs design"):
        isoflop_study(parse_spec(TINY_SPEC.format(name="t", steps=5)))


def test_isoflop_study_reads_only_the_current_runs_of_the_spec(monkeypatch):
    """After `run --force` (a key finished twice) or an edited spec (keys of another plan),
    only the latest finished run of each planned key enters the fit (issue 15's bug)."""
    from scalesweep import commands, store, uris

    spec = parse_spec(ISOFLOP_SPEC)
    configs = plan(spec)
    good = pd.DataFrame(
        dict(
            run_id=[f"good-{i}" for i in range(len(configs))],  # the store's table always has run ids
            run_key=[c.run_key for c in configs],
            status="FINISHED",
            start_time=1,
            budget=[c.grid["budget"] for c in configs],
            n_params=[float(c.model_size) for c in configs],  # a stand-in: the fit needs sizes, not counts
        )
    )
    good["final_test_loss"] = (np.log(good["n_params"]) - np.log(good["budget"]) / 8) ** 2 + 0.01 * good.index
    # another spec's runs, and a `run --force` superseded by `good` (started before it):
    stale = good.assign(run_id="stale-" + good["run_id"], run_key="stale-" + good["run_key"], final_test_loss=0.0)
    forced = good.assign(run_id="forced-" + good["run_id"], start_time=0, final_test_loss=good["final_test_loss"] + 100)
    monkeypatch.setattr(uris, "require_store", lambda uri: uri)
    monkeypatch.setattr(store, "runs_table", lambda *a, **k: pd.concat([stale, forced, good]))
    optima, _ = isoflop_study(spec, n_boot=20)
    expected, _ = isoflop_optima(commands.with_compute(good, spec), n_boot=20)
    assert np.allclose(optima["n_opt"], expected["n_opt"])


def test_plan_previews_runs_and_total_compute_without_creating_a_store(workdir):
    spec_path = write_spec(workdir, ISOFLOP_SPEC)
    shown = cli_here("plan", str(spec_path), cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    total = sum(run.compute for run in plan(parse_spec(ISOFLOP_SPEC)))
    assert f"60 runs, about {total:.3g} FLOPs in all" in shown.stdout
    assert "time: unknown" in shown.stdout and not (workdir / "mlflow.db").exists()


def test_time_model_recovers_per_step_and_per_flop_costs():
    runs = plan(parse_spec(ISOFLOP_SPEC))
    seconds = [2e-3 * run.training.steps + 5e-10 * run.compute for run in runs]
    per_step, per_flop = fit_rate(runs, seconds)
    assert per_step == pytest.approx(2e-3, rel=1e-6) and per_flop == pytest.approx(5e-10, rel=1e-6)


# One small config per registered task, its parameters counted by hand from the architecture,
# and the tokens one example puts through the model and the loss (seq_len for a per-token task).
HAND_COUNTS = {
    # embed 11*4 + hidden (2*4 -> 8) 8*8+8 + readout 8*11+11; one target per pair
    "modular_arithmetic": (
        "{name: modular_arithmetic, params: {p: 11}}",
        "{family: mlp, params: {depth: 1, embed_dim: 4}}",
        11 * 4 + (8 * 8 + 8) + (8 * 11 + 11),
        1,
    ),
    # hidden 10*8+8 + readout 8*2+2
    "sparse_parity": (
        "{name: sparse_parity, params: {n_bits: 10, k: 3, n_test: 10}}",
        "{family: mlp, params: {depth: 1}}",
        (10 * 8 + 8) + (8 * 2 + 2),
        1,
    ),
    # hidden 4*8+8, 8*8+8 + readout 8*1+1
    "teacher_student": (
        "{name: teacher_student, params: {input_dim: 4, n_test: 10}}",
        "{family: mlp, params: {depth: 2}}",
        (4 * 8 + 8) + (8 * 8 + 8) + (8 * 1 + 1),
        1,
    ),
    # W (m=8, n=5) + b (5)
    "superposition": (
        "{name: superposition, params: {n_features: 5, n_test: 10}}",
        "{family: tms}",
        8 * 5 + 5,
        1,
    ),
    # token + position embeddings 8*8 each; one attention-only block: LayerNorm 2*8, qkv 8*24, proj 8*8;
    # final LayerNorm 2*8; readout 8*8+8. A target at each of the 8 positions: 8 tokens per sequence.
    "in_context": (
        "{name: in_context, params: {vocab: 8, seq_len: 8, span: 3, n_test: 4}}",
        "{family: transformer, params: {n_layers: 1, n_heads: 2, attention_only: true}}",
        8 * 8 + 8 * 8 + (2 * 8 + 8 * 24 + 8 * 8) + 2 * 8 + (8 * 8 + 8),
        8,
    ),
}


@pytest.mark.parametrize("task", sorted(HAND_COUNTS))
def test_compute_is_six_n_tokens_by_hand_for_every_task(task):
    task_yaml, model_yaml, n_params, tokens = HAND_COUNTS[task]
    spec = parse_spec(
        f"name: hand\ntask: {task_yaml}\nmodel: {model_yaml}\n"
        "axes: {model_size: [8], data_size: [20, 100], seeds: 1}\n"
        "training: {steps: 10, batch_size: 32}\n"
    )
    runs = sorted(plan(spec), key=lambda run: run.data_size)
    assert [config_n_params(run) for run in runs] == [n_params, n_params]
    # 10 steps of min(batch 32, data size) examples: the whole set of 20, or batches of 32 of 100
    assert [run.compute for run in runs] == [6 * n_params * 10 * 20 * tokens, 6 * n_params * 10 * 32 * tokens]


def test_every_registered_task_has_a_hand_count():
    from scalesweep.zoo import TASKS

    assert set(TASKS) == set(HAND_COUNTS)


def test_isoflop_budget_counts_tokens_for_a_per_token_task():
    task_yaml, model_yaml, n_params, tokens = HAND_COUNTS["in_context"]
    spec = parse_spec(
        f"name: iso_tokens\ntask: {task_yaml}\nmodel: {model_yaml}\n"
        "axes: {model_size: [8], seeds: 1}\ndesign: {kind: isoflop, budgets: [1e8]}\n"
        "training: {batch_size: 16}\n"
    )
    (run,) = plan(spec)
    assert run.training.steps == round(1e8 / (6 * n_params * 16 * tokens))
    assert abs(run.compute / 1e8 - 1) <= TOLERANCE
