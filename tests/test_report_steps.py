"""The report over training steps (small multiples, one panel per scale point) and grouped by level."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from scalesweep.analysis import figures, levels, series
from scalesweep.analysis.classify import classify_runs
from scalesweep.analysis.phenomena import Phenomenon
from scalesweep.analysis.report import LEVEL_TITLES, ReportHeader, write_report

AXES = ["model_size", "data_size"]
LOGGED = np.arange(0, 1001, 50)


def sweep(widths=(32, 64, 128), data_sizes=(200, 800), seeds=2, rng=0) -> pd.DataFrame:
    """Runs whose test accuracy jumps at a step that falls with width, and whose Fourier
    sparsity rises over training; summaries as MLflow gives them (the series' last values)."""
    gen = np.random.default_rng(rng)
    runs, rows = [], []
    for w in widths:
        for n in data_sizes:
            for seed in range(seeds):
                run_id = f"w{w}n{n}s{seed}"
                jump = 20_000 / w * (1 + 0.1 * gen.normal())
                acc = 1 / (1 + np.exp(-(LOGGED - jump) / 40))
                sparsity = 0.3 + 0.2 * np.log10(LOGGED + 1) + gen.normal(0, 0.02, len(LOGGED))
                rows.append(
                    pd.DataFrame({"run_id": run_id, "step": LOGGED, "test_acc": acc, "fourier_sparsity": sparsity})
                )
                runs.append(
                    dict(run_id=run_id, status="FINISHED", model_size=w, data_size=n, seed=seed, n_params=w * 40)
                    | dict(final_test_acc=acc[-1], final_train_acc=1.0, custom_metric=gen.normal())
                    | dict(test_acc=acc[-1], fourier_sparsity=sparsity[-1])  # MLflow's latest value of each series
                )
    return series.attach(pd.DataFrame(runs), pd.concat(rows, ignore_index=True))


FORMATION = Phenomenon(name="formation", strength="first_step(test_acc >= 0.5)", direction="lower", presence=1e9)
SPARSITY = Phenomenon(name="sparsity", strength="fourier_sparsity", over="step", presence=0.5, min_effect=0.05)
GAP = Phenomenon(name="gap", strength="final_train_acc - final_test_acc", presence=0.1)
CUSTOM = Phenomenon(name="custom", strength="custom_metric")


@pytest.fixture
def panels(monkeypatch):
    """The number of visible panels of every figure drawn over steps, by file name."""
    seen: dict[str, int] = {}
    save = figures._save

    def counting(fig, path, tight=True):
        if "__step__" in path.name:
            seen[path.name] = sum(ax.get_visible() for ax in fig.axes)
        return save(fig, path, tight)

    monkeypatch.setattr(figures, "_save", counting)
    return seen


def report(tmp_path, runs, phenomena):
    verdicts = classify_runs(runs, phenomena, axes=AXES, grid=[], n_boot=20)
    header = ReportHeader(title="steps", axes=AXES, runs_finished=len(runs))
    path = write_report(tmp_path, header, runs, phenomena, verdicts)
    return path.read_text(encoding="utf-8"), pd.read_csv(tmp_path / "verdicts.csv")


def test_a_per_step_phenomenon_in_the_report_one_panel_per_scale_point(tmp_path, panels):
    page, verdicts = report(tmp_path, sweep(), [SPARSITY, GAP])
    mine = verdicts[verdicts["phenomenon"] == "sparsity"]
    assert set(mine["axis"]) == {"step"} and len(mine) == 6 and (mine["verdict"] == "expansion").all()
    png = tmp_path / "figures" / "sparsity__step__strength.png"
    assert png.is_file() and panels[png.name] == 6  # 3 widths x 2 data sizes
    assert "data-file='figures/sparsity__step__strength.png'" in page
    assert "over: step" in page and "Sparsity grows over training" in page
    section = page[page.index("<h2 id='ph-sparsity'>") :]
    assert "model_size=128, data_size=800" in section[section.index("<h3>Evidence") :]


def test_the_series_a_step_function_reads_are_drawn_over_steps_with_each_runs_step(tmp_path, panels):
    page, verdicts = report(tmp_path, sweep(widths=(16, 32, 64, 128)), [FORMATION])
    png = tmp_path / "figures" / "formation__step__test_acc.png"
    assert png.is_file() and panels[png.name] == 8
    section = page[page.index("<h2 id='ph-formation'>") :]
    assert "<h3>Over training</h3>" in section and "figures/formation__step__test_acc.png" in section
    assert "dotted: each run&#x27;s strength (a step)" in section or "dotted: each run's strength" in section
    along = verdicts[(verdicts["phenomenon"] == "formation") & (verdicts["axis"] == "model_size")]
    assert (along["verdict"] == "shrinkage").all() or (along["effect"] < 0).all()  # the jump comes earlier
    # a phenomenon that reads no step series gets no figure over steps
    page, _ = report(tmp_path / "plain", sweep(), [GAP])
    assert "__step__" not in page and "Over training" not in page


def test_phenomena_are_grouped_under_a_heading_per_level(tmp_path):
    page, _ = report(tmp_path, sweep(), [CUSTOM, GAP, SPARSITY, FORMATION])
    headings = re.findall(r"<h2 class='level' id='level-(\w+)'>", page)
    assert headings == ["weight", "output", "other"]  # LEVELS order, "other" last
    order = [page.index(f"<h2 id='ph-{name}'>") for name in ("sparsity", "gap", "formation", "custom")]
    assert order == sorted(order)  # each under its level's heading, in the spec's order within a level
    weight, output, other = (page.index(f"id='level-{lv}'") for lv in ("weight", "output", "other"))
    assert weight < order[0] < output < order[1] < order[2] < other < order[3]
    assert "Phenomena by level:" in page and "<a href='#ph-custom'>custom</a>" in page


def test_level_of_a_phenomenon_follows_its_columns():
    assert levels.level_of(GAP) == "output" and levels.level_of(SPARSITY) == "weight"
    assert levels.level_of(Phenomenon(name="e", strength="first_step(attention_entropy_min < 1)")) == "attention"
    assert levels.level_of(Phenomenon(name="d", strength="dead_fraction + final_test_acc")) == "neuron"
    assert levels.levels_of(["anisotropy.layer1", "nc1"]) == ["representation"]  # a per-layer column
    assert levels.level_of(CUSTOM) == levels.OTHER
    assert [lv for lv, _ in levels.by_level([CUSTOM, GAP])] == ["output", "other"]


def test_the_reports_copy_of_the_levels_matches_the_observables_registry():
    """The report opens without torch, so it keeps a copy of each level's columns; every column the
    registry knows must have the same level in both (a new observable must be added to levels.py)."""
    from scalesweep import observables

    assert levels.LEVELS == observables.LEVELS
    registered = {c for ob in observables.OBSERVABLES.values() for c in ob.columns}
    copied = {c for cols in levels.COLUMNS.values() for c in cols}
    assert registered == copied
    for column in [*registered, "anisotropy.block0", "weight_alpha.fc1", "nonsense"]:
        assert levels.levels_of([column]) == observables.levels_of([column]), column
    assert LEVEL_TITLES.keys() == {*levels.LEVELS, levels.OTHER}
