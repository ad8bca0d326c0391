"""Phenomena over training steps (`over: step`): the per-step table, the classifier along `step`
within each scale point (judged by error rates over many simulated slices), and the report's
small multiples over steps."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from scalesweep.analysis import series, steps
from scalesweep.analysis.classify import EXTRA_COLUMNS, VERDICT_COLUMNS, classify_runs
from scalesweep.analysis.phenomena import Phenomenon, load_phenomenon
from scalesweep.errors import UserError

LOGGED = np.arange(0, 2001, 25)  # 81 evaluations, as a 2000-step run with eval_every 25 logs them
TRENDS = ("expansion", "shrinkage", "transformation")
PER_STEP = Phenomenon(name="s", strength="s", over="step", presence=0.5, min_effect=0.05)


def simulate(
    points: int,
    seeds: int,
    signal,
    rng: np.random.Generator,
    noise: float = 0.1,
    seed_sd: float = 0.0,
    phi: float = 0.0,
) -> pd.DataFrame:
    """A sweep's runs table with step series `s` attached: `points` scale points (model_size) x
    `seeds`; s = 1 + a seed offset + signal(step) + AR(1) noise of stationary SD `noise`."""
    runs, rows = [], []
    for p in range(points):
        for s in range(seeds):
            run_id = f"r{p}_{s}"
            runs.append(dict(run_id=run_id, model_size=32 * (p + 1), data_size=100, seed=s))
            shocks = rng.normal(0, 1, len(LOGGED))
            ar = np.zeros(len(LOGGED))
            for i, z in enumerate(shocks):
                ar[i] = phi * (ar[i - 1] if i else 0.0) + math.sqrt(1 - phi**2) * z
            y = 1.0 + seed_sd * rng.normal() + signal(LOGGED) + noise * ar
            rows.append(pd.DataFrame({"run_id": run_id, "step": LOGGED, "s": y}))
    return series.attach(pd.DataFrame(runs), pd.concat(rows, ignore_index=True))


def trend_rate(runs: pd.DataFrame, ph: Phenomenon = PER_STEP) -> tuple[float, pd.DataFrame]:
    """Share of slices (scale points) called a trend, per-slice (no FDR), no bootstrap."""
    verdicts = classify_runs(runs, [ph], axes=["model_size", "data_size"], grid=[], n_boot=0, fdr=None)
    return float(verdicts["verdict"].isin(TRENDS).mean()), verdicts


def flat(t):
    return 0.0 * t


def rising(per_decade: float):
    return lambda t: per_decade * np.log10(t + 1.0)


# ---------------------------------------------------------------- the per-step table


def test_thin_steps_spreads_at_most_k_logged_steps_evenly_in_log_step():
    kept = steps.thin_steps(LOGGED, 8)
    assert 5 <= len(kept) <= 8 and kept[0] == 25 and kept[-1] == 2000  # step 0 is not on a log axis
    assert set(kept) <= set(LOGGED)
    gaps = np.diff(np.log10(kept))
    assert gaps.max() < 2.5 * np.log10(2000 / 25) / 7  # no decade left out
    assert steps.thin_steps(np.array([0, 10, 20]), 8).tolist() == [10.0, 20.0]


def test_step_rows_evaluate_the_strength_at_every_logged_step_beside_the_run_columns():
    runs = simulate(2, 2, rising(0.2), np.random.default_rng(0))
    ph = Phenomenon(name="x", strength="2 * s + step * k", over="step", params={"k": 0.0})
    rows = steps.step_rows(runs, ph, max_points=None)
    assert len(rows) == 4 * len(LOGGED)
    assert {"run_id", "model_size", "seed", "step", "strength", "present"} <= set(rows.columns)
    table = runs.attrs["step_series"].table
    merged = rows.merge(table, on=["run_id", "step"])
    assert np.allclose(merged["strength"], 2 * merged["s"])
    thinned = steps.step_rows(runs, ph)
    assert set(thinned["step"]) == set(steps.thin_steps(LOGGED)) and len(thinned) == 4 * len(set(thinned["step"]))


def test_a_series_wins_over_a_summary_of_the_same_name():
    runs = simulate(1, 1, flat, np.random.default_rng(1)).assign(s=-99.0)  # a summary `s` on the runs table
    rows = steps.step_rows(runs, PER_STEP, max_points=None)
    assert rows["strength"].between(0, 2).all()


def test_bad_input_is_one_clear_paragraph():
    runs = simulate(1, 1, flat, np.random.default_rng(2))
    with pytest.raises(UserError, match=r'"x" \(over: step.*unknown column "final_s".*valid columns.*\bs\b'):
        steps.step_rows(runs, Phenomenon(name="x", strength="final_s", over="step"))
    with pytest.raises(UserError, match="no step series came with the runs"):
        steps.step_rows(pd.DataFrame(runs), PER_STEP)  # a copy without its series
    with pytest.raises(ValueError, match="cannot use a step function"):
        Phenomenon(name="x", strength="first_step(s > 1)", over="step")
    with pytest.raises(ValueError, match="regimes are a property of a run"):
        Phenomenon(name="x", strength="s", over="step", regimes={"hi": "s > 1"})


def test_a_per_step_phenomenon_says_it_reads_step_series(tmp_path):
    path = tmp_path / "sparsity.yaml"
    path.write_text("strength: fourier_sparsity\nover: step\npresence: 0.5\nmin_effect: 0.05\n")
    ph = load_phenomenon(str(path))
    assert ph.over == "step"
    # so `validate` checks each name is a step series and the report reads it from MLflow
    assert series.series_needed(ph.expressions_used(), ph.params) == ["fourier_sparsity"]


# ---------------------------------------------------------------- the classifier along step


def test_verdicts_along_step_have_one_slice_per_scale_point_and_the_stable_columns():
    runs = simulate(3, 3, rising(0.3), np.random.default_rng(3))
    plain = Phenomenon(name="plain", strength="model_size", presence=0.0, min_effect=0.0)
    verdicts = classify_runs(runs, [PER_STEP, plain], axes=["model_size", "data_size"], grid=[], n_boot=50)
    assert list(verdicts.columns) == [*VERDICT_COLUMNS, *EXTRA_COLUMNS]
    mine = verdicts[verdicts["phenomenon"] == "s"]
    assert set(mine["axis"]) == {"step"}  # never along model_size: its strength has no one value per run
    assert mine["slice"].tolist() == [f"model_size={m}, data_size=100" for m in (32, 64, 96)]
    assert (mine["verdict"] == "expansion").all() and (mine["n_seeds"] == 3).all()
    assert (mine["n_points"] == len(steps.thin_steps(LOGGED))).all()
    assert mine["confidence"].between(0.5, 1).all()
    assert set(verdicts[verdicts["phenomenon"] == "plain"]["axis"]) == {"model_size"}


def test_flat_noise_over_steps_rarely_gives_a_trend():
    rng = np.random.default_rng(10)
    with_seeds, _ = trend_rate(simulate(300, 3, flat, rng, seed_sd=0.1))
    one_seed, _ = trend_rate(simulate(300, 1, flat, rng))
    assert with_seeds <= 0.05  # measured 0.007-0.010: a seed's offset is in every step, the slope ignores it
    assert one_seed <= 0.09  # measured 0.04-0.07, the classifier's 4.5 % at 8 points


def test_autocorrelated_noise_over_steps_stays_near_the_nominal_rate():
    """Evaluations of one run a few updates apart are not independent: thinning to
    `MAX_STEP_POINTS` log-spaced steps keeps an AR(1) wander (0.5 or 0.9 from one evaluation to
    the next) near the nominal false-trend rate (measured 0.05-0.06; 16 points gave 0.12-0.18)."""
    rng = np.random.default_rng(11)
    for phi in (0.5, 0.9):
        rate, _ = trend_rate(simulate(300, 3, flat, rng, phi=phi))
        assert rate <= 0.09, (phi, rate)


def test_a_rising_series_is_expansion_along_step():
    rng = np.random.default_rng(12)
    _, verdicts = trend_rate(simulate(200, 3, rising(0.2), rng))  # 2 noise SDs per decade of steps
    assert (verdicts["verdict"] == "expansion").mean() >= 0.95
    falling = Phenomenon(name="s", strength="2 - s", over="step", presence=0.5, min_effect=0.05)
    _, verdicts = trend_rate(simulate(200, 3, rising(0.2), rng), falling)
    assert (verdicts["verdict"] == "shrinkage").mean() >= 0.95
    _, verdicts = trend_rate(simulate(200, 1, rising(0.2), rng))
    assert (verdicts["verdict"] == "expansion").mean() >= 0.6  # measured 0.75


def test_benjamini_hochberg_runs_over_the_scale_points_of_the_step_family():
    rng = np.random.default_rng(13)
    runs = simulate(40, 3, flat, rng)
    verdicts = classify_runs(runs, [PER_STEP], axes=["model_size", "data_size"], grid=[], n_boot=0)
    assert verdicts["p_adjusted"].notna().all() and (verdicts["p_adjusted"] >= verdicts["p_value"] - 1e-12).all()
    assert verdicts["verdict"].isin(TRENDS).mean() <= 0.05


def test_validate_checks_that_a_per_step_strength_reads_step_series(tmp_path, monkeypatch):
    from pathlib import Path

    from scalesweep.spec import parse_spec
    from tests.conftest import GROKKING_SPEC

    monkeypatch.chdir(tmp_path)
    phenomena = "phenomena:\n  - name: grokking\n    params: {gap: 150}\n  - generalization_gap\n"
    assert phenomena in GROKKING_SPEC

    def spec_with(strength: str):
        Path("p.yaml").write_text(f"strength: {strength}\nover: step\npresence: 0.5\n")
        return parse_spec(GROKKING_SPEC.replace(phenomena, "phenomena: [p.yaml]\n"), "q.yaml")

    assert spec_with('"test_acc - train_acc + 0 * step"')
    with pytest.raises(UserError, match=r"final_test_acc, which no observable logs as a step series.*test_acc"):
        spec_with("final_test_acc")
    with pytest.raises(UserError, match=r"weight_displacement \(recorded by weight_displacement\)"):
        spec_with("weight_displacement")  # a step series the spec does not record
