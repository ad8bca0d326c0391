"""Phenomenon A turns into phenomenon B: pairs judged by rates on simulated studies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scalesweep.analysis.classify import classify_runs
from scalesweep.analysis.phenomena import Phenomenon
from scalesweep.analysis.transformations import find_pairs, holm, shared_transitions

XS = np.logspace(0, 4, 9)
SEEDS = 4


def _step(u, at, lo, hi, width=0.15):
    return lo + (hi - lo) / (1 + np.exp(-(u - at) / width))


def _study(rng, a_truth, b_truth, slices: int = 3, sd: float = 0.03) -> pd.DataFrame:
    """Runs of `slices` widths along data_size, two phenomena measured on every run."""
    rows = []
    for w in range(slices):
        for x in XS:
            u = np.log10(x)
            for s in range(SEEDS):
                rows.append(
                    dict(width=w, n=x, seed=s, a=a_truth(u) + rng.normal(0, sd), b=b_truth(u) + rng.normal(0, sd))
                )
    return pd.DataFrame(rows)


A = Phenomenon(name="memorise", strength="a", presence=0.1, min_effect=0.05)
B = Phenomenon(name="generalise", strength="b", presence=0.1, min_effect=0.05)


def _pair_rate(a_truth, b_truth, n: int, seed: int, phenomena=(A, B)) -> float:
    rng = np.random.default_rng(seed)
    found = 0
    for _ in range(n):
        verdicts = classify_runs(_study(rng, a_truth, b_truth), list(phenomena), ["n"], ["width"], n_boot=0)
        pairs = find_pairs(verdicts, phenomena)
        found += bool(((pairs.phenomenon_a == "memorise") & (pairs.phenomenon_b == "generalise")).any())
    return found / n


@pytest.mark.slow  # simulates and classifies 40 studies
def test_a_true_pair_is_found():
    fades = lambda u: _step(u, 2.0, 0.8, 0.0)  # noqa: E731
    grows = lambda u: _step(u, 2.1, 0.0, 0.8)  # noqa: E731
    assert _pair_rate(fades, grows, 40, 1) >= 0.8


@pytest.mark.slow  # simulates and classifies 200 studies
def test_independent_phenomena_give_no_pair():
    flat = lambda u: 0.5 + 0 * u  # noqa: E731
    grows = lambda u: _step(u, 2.0, 0.0, 0.8)  # noqa: E731
    fades = lambda u: _step(u, 2.0, 0.8, 0.0)  # noqa: E731
    far = lambda u: _step(u, 3.6, 0.0, 0.8)  # noqa: E731  transitions 40x apart
    assert _pair_rate(flat, flat, 60, 2) <= 0.05
    assert _pair_rate(flat, grows, 60, 3) <= 0.05
    assert _pair_rate(fades, flat, 60, 4) <= 0.05
    assert _pair_rate(_shift(fades, -1.0), far, 40, 5) <= 0.05


def _shift(f, by):
    return lambda u: f(u - by)


def test_holm_holds_the_family_wise_error():
    rng = np.random.default_rng(6)
    rejections = [(holm(rng.uniform(size=20)) <= 0.05).any() for _ in range(2000)]
    assert np.mean(rejections) <= 0.06
    assert np.allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])


def test_shared_transition_scales_are_grouped():
    verdicts = pd.DataFrame(
        dict(
            phenomenon=["a", "b", "c", "d"],
            axis="n",
            slice="all",
            verdict=["shrinkage", "expansion", "transformation", "expansion"],
            detail="...",
            transition=[100.0, 150.0, 250.0, 10_000.0],
        )
    )
    groups = shared_transitions(verdicts)
    assert len(groups) == 1 and groups[0]["phenomena"] == ["a", "b", "c"]
    assert 100 < groups[0]["scale"] < 250


def test_the_report_writes_transformations_csv_and_says_the_pair_first(tmp_path):
    from scalesweep.analysis.report import ReportHeader, write_report
    from scalesweep.analysis.transformations import TRANSFORMATION_COLUMNS

    rng = np.random.default_rng(7)
    runs = _study(rng, lambda u: _step(u, 2.0, 0.8, 0.0), lambda u: _step(u, 2.1, 0.0, 0.8))
    verdicts = classify_runs(runs, [A, B], ["n"], ["width"], n_boot=20)
    page = write_report(tmp_path, ReportHeader(title="pair", axes=["n"], grid=["width"]), runs, [A, B], verdicts)
    table = pd.read_csv(tmp_path / "transformations.csv")
    assert list(table.columns) == TRANSFORMATION_COLUMNS
    assert set(table["slice"]) == {"width=0", "width=1", "width=2"}
    assert (table.p_adjusted <= 0.05).all() and table.transition.between(30, 300).all()
    first_screen = page.read_text()[: page.read_text().index("<h2 id='verdicts'>")]
    assert "memorise gives way to generalise near n = " in first_screen and "in every slice" in first_screen
