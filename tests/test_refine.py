"""Adaptive refinement: proposals narrow a known transition, never repeat a run, respect the budget."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from scalesweep.analysis.classify import classify_runs
from scalesweep.analysis.phenomena import Phenomenon
from scalesweep.plan import plan
from scalesweep.refine import propose, record
from scalesweep.sidecar import refine_path
from scalesweep.spec import load_spec
from tests.conftest import RAY_ENV, TINY_SPEC, cli_here, fresh_store, run_on, write_spec

SIZES = [8, 32, 128, 512, 2048]
TRUE_TRANSITION = 300.0  # regime "small" below, "large" above
AXES, GRID = ["model_size", "data_size", "compute"], []

SYNTH_SPEC = f"""
name: synth
task: {{name: teacher_student}}
model: {{family: mlp}}
axes:
  model_size: {SIZES}
  data_size: [100]
  seeds: 2
phenomena: [test_loss]
"""

FLIP = Phenomenon(
    name="flip",
    strength="value",
    presence=0.5,
    min_effect=0.1,
    regimes={"large": "value >= 0.5", "small": "value < 0.5"},
)


def measure(points: list[tuple[int, int, int]], rng: np.random.Generator) -> pd.DataFrame:
    """Synthetic runs: a step at TRUE_TRANSITION in model size, plus noise."""
    rows = [
        dict(model_size=w, data_size=n, seed=s, value=float(w > TRUE_TRANSITION) + rng.normal(0, 0.1))
        for w, n, s in points
    ]
    return pd.DataFrame(rows).assign(compute=lambda t: 6.0 * t["model_size"] * t["data_size"], status="FINISHED")


def bracket(verdicts: pd.DataFrame, runs: pd.DataFrame) -> tuple[float, float]:
    row = verdicts[(verdicts["phenomenon"] == "flip") & (verdicts["axis"] == "model_size")].iloc[0]
    assert row["verdict"] == "transformation"
    sizes = np.sort(runs["model_size"].unique())
    return float(sizes[sizes <= row["transition"]][-1]), float(sizes[sizes > row["transition"]][0])


def test_refinement_narrows_a_known_transition_without_repeats_within_budget(tmp_path):
    spec_path = write_spec(tmp_path, SYNTH_SPEC)
    spec = load_spec(spec_path)
    rng = np.random.default_rng(0)
    runs = measure([(r.model_size, r.data_size, r.seed) for r in plan(spec)], rng)
    widths = []
    for budget in (2, 3, 2):
        verdicts = classify_runs(runs, [FLIP], axes=AXES, grid=GRID, n_boot=0)
        lo, hi = bracket(verdicts, runs)
        assert lo < TRUE_TRANSITION < hi
        widths.append(math.log(hi / lo))
        proposals = propose(spec, runs, verdicts, [FLIP], budget, AXES, GRID)
        points = [p for proposal in proposals for p in proposal.points]
        assert 0 < len(points) <= budget
        assert proposals[0].kind == "transition"
        new = [(p.model_size, p.data_size, p.seed) for p in points]
        done = set(zip(runs["model_size"], runs["data_size"], runs["seed"], strict=True))
        assert len(set(new)) == len(new) and not set(new) & done  # no run twice
        assert all(lo < w < hi for w, _, _ in new[: len(spec.axes.seed_list)])
        record(spec_path, proposals)
        spec = load_spec(spec_path)  # the sidecar is read back: the plan now holds the added points
        assert {(r.model_size, r.data_size, r.seed) for r in plan(spec)} >= set(new)
        runs = pd.concat([runs, measure(new, rng)], ignore_index=True)
    verdicts = classify_runs(runs, [FLIP], axes=AXES, grid=GRID, n_boot=0)
    lo, hi = bracket(verdicts, runs)
    widths.append(math.log(hi / lo))
    assert widths[-1] < widths[0] / 2  # each round halves the bracket in log scale
    assert len(plan(spec)) == len(runs)  # every run planned once, the added ones included


def test_inconclusive_for_lack_of_seeds_gets_one_more_seed_per_point(tmp_path):
    spec = load_spec(write_spec(tmp_path, SYNTH_SPEC.replace("seeds: 2", "seeds: 1")))
    rng = np.random.default_rng(1)
    runs = measure([(w, 100, 0) for w in SIZES[:3]], rng)  # 3 runs: no spread can be estimated
    flat = FLIP.model_copy(update={"regimes": None})
    verdicts = classify_runs(runs, [flat], axes=AXES, grid=GRID, n_boot=0, fdr=None)
    assert verdicts.iloc[0]["verdict"] == "inconclusive"
    proposals = propose(spec, runs, verdicts, [flat], 10, AXES, GRID)
    assert [p.kind for p in proposals] == ["seeds"]
    assert sorted((p.model_size, p.seed) for p in proposals[0].points) == [(w, 1) for w in SIZES[:3]]
    assert sum(len(p.points) for p in propose(spec, runs, verdicts, [flat], 2, AXES, GRID)) == 2


def test_vanishing_point_just_outside_the_range_gets_one_point_beyond(tmp_path):
    spec = load_spec(write_spec(tmp_path, SYNTH_SPEC))
    vanish = 5000.0  # the log-linear trend crosses presence (0.5) here, 2.4x past the largest size
    rows = [
        dict(model_size=w, data_size=100, seed=s, value=0.5 + 0.5 * math.log10(vanish / w) + 0.01 * (2 * s - 1))
        for w in SIZES
        for s in (0, 1)
    ]
    runs = pd.DataFrame(rows).assign(compute=1.0, status="FINISHED")
    ph = FLIP.model_copy(update={"regimes": None})
    verdicts = classify_runs(runs, [ph], axes=AXES, grid=GRID, n_boot=0)
    assert verdicts.iloc[0]["verdict"] == "shrinkage"
    proposals = propose(spec, runs, verdicts, [ph], 4, AXES, GRID)
    assert [p.kind for p in proposals] == ["beyond"]
    assert [abs(p.model_size - vanish) <= 1 for p in proposals[0].points] == [True, True]
    far = runs.assign(value=runs["value"] + 1.0)  # now it would vanish 100x past the range: too far to test
    assert propose(spec, far, classify_runs(far, [ph], axes=AXES, grid=GRID, n_boot=0), [ph], 4, AXES, GRID) == []


NOISE_PHENOMENON = """
description: the seed number itself, so that no trend can be decided without more seeds
strength: seed
presence: -1
min_effect: 0
"""


@pytest.mark.slow
def test_refine_end_to_end_through_the_cli(workdir, empty_store, ray_cluster):
    text = TINY_SPEC.format(name="tiny_refine", steps=30).replace("data_size: [30, 60, 120]", "data_size: [60]")
    text = text[: text.index("phenomena:")] + "phenomena: [noise.yaml]\n"
    write_spec(workdir, NOISE_PHENOMENON, "noise.yaml")
    spec_path = write_spec(workdir, text)
    fresh_store(workdir, empty_store)
    assert run_on(ray_cluster, spec_path, cwd=workdir).returncode == 0
    dry = cli_here("refine", str(spec_path), "--budget", "2", "--dry-run", cwd=workdir)
    assert dry.returncode == 0 and "seeds" in dry.stdout, dry.stderr
    assert not refine_path(spec_path).exists()  # a dry run records nothing
    address = ("--address", ray_cluster.gcs)
    done = cli_here("refine", str(spec_path), "--budget", "2", *address, cwd=workdir, env=RAY_ENV)
    assert done.returncode == 0 and "2 runs to add" in done.stdout and "report:" in done.stdout, done.stderr
    added = load_spec(spec_path).refinements
    assert [(p.model_size, p.seed) for p in added] == [(8, 2), (16, 2)]  # budget 2 of the 3 points
    status = cli_here("status", str(spec_path), cwd=workdir)
    assert " 0 missing" in status.stdout and " 0 failed" in status.stdout  # the added runs ran and finished
    again = run_on(ray_cluster, spec_path, cwd=workdir)  # the original spec: the added runs are neither lost nor redone
    assert again.returncode == 0 and "all 8 runs" in again.stderr + again.stdout
    # A phenomenon over the runs' step series: refine reads the series back as report does
    write_spec(workdir, "description: the best test accuracy of a run\nstrength: series_max(test_acc)\n", "peak.yaml")
    spec_path.write_text(spec_path.read_text().replace("phenomena: [noise.yaml]", "phenomena: [noise.yaml, peak.yaml]"))
    stepped = cli_here("refine", str(spec_path), "--budget", "2", "--dry-run", cwd=workdir)
    assert stepped.returncode == 0, stepped.stdout + stepped.stderr
