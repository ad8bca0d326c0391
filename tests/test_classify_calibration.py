"""Calibration of the classifier on simulated slices.

Every case simulates hundreds of slices with a fixed numpy seed and asserts
on RATES, never on one draw. The structures and their bounds live in
`scalesweep.analysis.calibration` (`python3 -m scalesweep.analysis.calibration`
prints the table); the tests here assert each, plus what a rate cannot say
(messages, transitions, confidence). Rates run with n_boot=0 (no confidence)
so the file stays fast. "Noise SD" is the SD of one run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scalesweep.analysis import calibration
from scalesweep.analysis.classify import REASONS, VERDICT_COLUMNS, classify_runs, classify_slice
from scalesweep.analysis.phenomena import Phenomenon


@pytest.mark.slow  # a minute of simulation in all; `python3 -m scalesweep.analysis.calibration` prints the rates
@pytest.mark.parametrize("case", calibration.CASES, ids=[c.name for c in calibration.CASES])
def test_calibration_case(case):
    rate = case.rate()
    assert case.holds(rate), f"{case.name}: rate {rate:.3f}, bound {'<=' if case.at_most else '>='} {case.bound}"


TRENDS = ("expansion", "shrinkage", "transformation")


def _ph(**kw) -> Phenomenon:
    base = dict(name="sim", strength="y", presence=-1e9, min_effect=0.25)
    return Phenomenon(**(base | kw))


def _simulate(f, xs, seeds, sd, n, seed, ph=None, labels=None, seed_col=True):
    rng = np.random.default_rng(seed)
    ph = ph or _ph()
    x = np.repeat(xs, seeds)
    u = np.log10(x)
    out = []
    for _ in range(n):
        frame = pd.DataFrame({"x": x, "strength": f(u) + rng.normal(0, sd, len(x))})
        if seed_col:
            frame["seed"] = np.tile(np.arange(seeds), len(xs))
        if labels is not None:
            frame["regime"] = labels(u, rng)
        out.append(classify_slice(frame, x="x", phenomenon=ph, n_boot=0))
    return out


def _rate(results, pred) -> float:
    return float(np.mean([pred(r) for r in results]))


XS5 = np.logspace(1, 3, 5)


def _flip(u, rng, at=2.75, noise=0.1):
    labels = np.where(u < at, "A", "B")
    flipped = rng.random(len(u)) < noise
    return np.where(flipped, np.where(labels == "A", "B", "A"), labels)


def test_regime_flip_at_mid_range():
    xs = np.logspace(1, 4.5, 8)  # grid step 0.5 decade, flip at 10**2.75
    res = _simulate(lambda u: 0 * u, xs, 3, 1.0, n=300, seed=7, labels=_flip)
    flips = [r for r in res if r["verdict"] == "transformation" and r["detail"].startswith("A -> B")]
    assert len(flips) / len(res) >= 0.9
    step = np.log10(xs[1] / xs[0])
    near = [abs(np.log10(r["transition"]) - 2.75) <= step + 1e-9 for r in flips]
    assert np.mean(near) >= 0.9


def test_no_regime_change_is_not_a_flip():
    xs = np.logspace(1, 4.5, 8)
    res = _simulate(lambda u: 0 * u, xs, 3, 1.0, n=300, seed=8, labels=lambda u, r: _flip(u, r, 99, 0.3))
    assert _rate(res, lambda r: r["verdict"] == "transformation") <= 0.05


def _irregular(f, sd, n, seed):
    """Published-table style: one value per point, 8-12 irregular scales, no seeds."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        u = np.sort(rng.uniform(1, 4, rng.integers(8, 13)))
        frame = pd.DataFrame({"x": 10**u, "strength": f(u) + rng.normal(0, sd, len(u))})
        out.append(classify_slice(frame, x="x", phenomenon=_ph(), seed=None, n_boot=0))
    return out


def test_no_seed_tables_are_calibrated_and_detect_clear_trends():
    noise = _irregular(lambda u: 0 * u, 1.0, n=600, seed=9)
    assert _rate(noise, lambda r: r["verdict"] in TRENDS) <= 0.05
    assert all(r["noise"].startswith("one value per model") and r["n_seeds"] == 1 for r in noise)
    trend = _irregular(lambda u: (u - 1) / 3 * 6.0, 1.0, n=300, seed=10)  # change 6 SD
    assert _rate(trend, lambda r: r["verdict"] == "expansion") >= 0.8


def test_persistent_absent_and_inconclusive():
    flat = _simulate(lambda u: 1 + 0 * u, XS5, 3, 0.05, n=100, seed=11, ph=_ph(min_effect=0.3))
    assert _rate(flat, lambda r: r["verdict"] == "persistent") >= 0.9
    never = _simulate(lambda u: 0 * u, XS5, 3, 0.05, n=100, seed=12, ph=_ph(presence=5))
    assert _rate(never, lambda r: r["verdict"] == "absent") >= 0.95
    few = _simulate(lambda u: u, XS5[:2], 3, 0.1, n=5, seed=13)
    assert all(r["verdict"] == "inconclusive" and "scale point" in r["detail"] for r in few)
    narrow = _simulate(lambda u: u, np.array([10, 20, 30]), 3, 0.1, n=5, seed=13)
    assert all("spans only" in r["detail"] for r in narrow)


def test_confidence_is_high_for_clear_and_lower_for_borderline_cases():
    def conf(slope, seed):
        rng = np.random.default_rng(seed)
        x = np.repeat(XS5, 3)
        vals = []
        for _ in range(6):
            y = slope * np.log10(x) + rng.normal(0, 1.0, len(x))
            frame = pd.DataFrame({"x": x, "strength": y, "seed": np.tile([0, 1, 2], 5)})
            vals.append(classify_slice(frame, x="x", phenomenon=_ph(), n_boot=100, rng=seed)["confidence"])
        return float(np.mean(vals))

    clear, borderline = conf(3.0, 17), conf(0.75, 18)
    assert clear >= 0.9
    assert borderline < clear - 0.15


def test_classify_runs_table_interface():
    rng = np.random.default_rng(19)
    rows = [
        dict(model_size=m, data_size=d, seed=s, status="FINISHED", loss=1 / m**0.3 + rng.normal(0, 0.01))
        for m in (8, 16, 32, 64, 128)
        for d in (100, 1000)
        for s in range(3)
    ]
    runs = pd.DataFrame(rows)
    runs.loc[0, "status"] = "FAILED"
    ph = _ph(strength="loss", presence=0.0, min_effect=0.01)
    out = classify_runs(runs, [ph], axes=["model_size", "data_size"], grid=[], n_boot=20)
    assert list(out.columns[: len(VERDICT_COLUMNS)]) == VERDICT_COLUMNS
    by_axis = out.set_index(["axis", "slice"])["verdict"]
    assert by_axis["model_size", "data_size=100"] == "shrinkage"
    assert (out.loc[out.axis == "data_size", "verdict"] == "inconclusive").all()
    assert "p_adjusted" in out.columns


def test_near_identical_replicates_add_no_evidence_beyond_the_point_means():
    # Issue 13's pseudo-replication: replicates that barely differ (generation seeds at
    # temperature ~0) must not make a trend more significant than the point means allow.
    rng = np.random.default_rng(30)
    xs = np.logspace(0, 3, 8)
    alone, replicated = [], []
    for _ in range(300):
        means = 0.1 * np.log10(xs) + rng.normal(0, 0.3, len(xs))
        five = pd.DataFrame({"x": np.repeat(xs, 5), "strength": np.repeat(means, 5) + rng.normal(0, 1e-3, 40)})
        five["seed"] = np.tile(np.arange(5), len(xs))
        one = five.groupby("x", as_index=False)["strength"].mean()  # the same point means, unreplicated
        alone.append(classify_slice(one, x="x", phenomenon=_ph(), seed=None, n_boot=0))
        replicated.append(classify_slice(five, x="x", phenomenon=_ph(), n_boot=0))
    p_alone = np.array([r["p_value"] for r in alone])
    p_rep = np.array([r["p_value"] for r in replicated])
    assert np.all(p_rep >= p_alone * (1 - 1e-9) - 1e-12)
    trend = lambda r: r["verdict"] in calibration.TRENDS  # noqa: E731
    assert _rate(replicated, trend) <= _rate(alone, trend) + 1e-9
    assert all(r["noise"].startswith("scatter of the point means") for r in replicated)


def test_confidence_on_noise_does_not_pile_up_at_one_and_ignores_duplicated_scales():
    # Issue 13: a few repeated scale values in a table with one value per model used to switch
    # the bootstrap to "seeds" and give confidence ~1.00; a 1e-6 nudge then dropped it.
    rng = np.random.default_rng(31)
    ph = calibration.phenomenon()
    conf, nudged = [], []
    for i in range(40):
        frame = calibration._duplicated_scales(rng)
        x = frame["x"].to_numpy().copy()
        x[1:10:2] *= 1 + 1e-6
        conf.append(classify_slice(frame, x="x", phenomenon=ph, seed=None, n_boot=60, rng=i))
        nudged.append(classify_slice(frame.assign(x=x), x="x", phenomenon=ph, seed=None, n_boot=60, rng=i))
    c = np.array([r["confidence"] for r in conf])
    d = np.array([r["confidence"] for r in nudged])
    assert all(r["noise"].startswith("one value per model") and r["n_seeds"] == 1 for r in conf)
    assert [r["verdict"] for r in conf] == [r["verdict"] for r in nudged]
    assert np.mean(np.abs(c - d)) <= 0.05
    assert np.mean(c >= 0.99) <= 1 / 3


def test_false_trend_calls_get_low_confidence():
    rng = np.random.default_rng(32)
    ph = calibration.phenomenon()
    false_calls = []
    for i in range(400):
        frame = calibration.grid_slice(lambda u: 0 * u, calibration.XS5, 3, 1.0, rng)
        if classify_slice(frame, x="x", phenomenon=ph, n_boot=0)["verdict"] in calibration.TRENDS:
            false_calls.append(classify_slice(frame, x="x", phenomenon=ph, n_boot=60, rng=i)["confidence"])
    assert len(false_calls) >= 5
    assert np.median(false_calls) < 0.6


def test_emergence_is_said_only_of_an_abrupt_onset():
    rng = np.random.default_rng(33)
    ph = calibration.phenomenon(**calibration.PRESENT_ABOVE_CHANCE)
    onset = classify_slice(calibration.table_slice(calibration.TAKE_OFF, 30, 0, 4, 0.03, rng), x="x", phenomenon=ph)
    smooth = classify_slice(
        calibration.table_slice(lambda u: 0.25 + 0.15 * u, 30, 0, 4, 0.03, rng), x="x", phenomenon=ph
    )
    assert onset["verdict"] == "expansion" and onset["detail"].startswith("emerges")
    assert onset["reason"] == "abrupt_onset" and 10**1.7 < onset["transition"] < 10**2.7
    assert smooth["verdict"] == "expansion" and not smooth["detail"].startswith("emerges")
    assert "crosses presence near" in smooth["detail"] and "no abrupt onset" in smooth["detail"]
    assert smooth["reason"] == "smooth_trend"


def test_messages_state_thresholds_and_fit_the_table():
    rng = np.random.default_rng(34)
    flat = lambda u: 0 * u  # noqa: E731
    seeds = classify_slice(calibration.grid_slice(flat, calibration.XS5, 3, 1.0, rng), x="x", phenomenon=_ph())
    table = classify_slice(
        calibration.table_slice(flat, 12, 0, 3, 1.0, rng), x="x", phenomenon=_ph(), seed=None, n_boot=0
    )
    for r, more in ((seeds, "more seeds"), (table, "more models")):
        assert r["verdict"] == "inconclusive" and r["reason"] == "not_significant", r["detail"]
        assert "needs < 0.035" in r["detail"] and more in r["detail"]
    assert "seeds" not in table["detail"] and "seeds" not in table["noise"]


def test_every_reason_is_documented_and_at_the_end_of_the_table():
    rng = np.random.default_rng(35)
    rows = [
        dict(n=n, d=d, seed=s, y=float(rng.normal(np.log10(n), 0.1)))
        for n in (10, 30, 100, 300, 1000)
        for d in (1, 2)
        for s in range(3)
    ]
    out = classify_runs(pd.DataFrame(rows), [_ph()], axes=["n", "d"], grid=[], n_boot=10)
    assert list(out.columns[-3:]) == ["reason", "n_left_out", "midpoint"]
    assert set(out["reason"]) <= set(REASONS)
    assert set(out.loc[out.axis == "d", "reason"]) == {"too_few_points"}


def test_benjamini_hochberg_family_is_one_phenomenon_along_one_axis():
    rng = np.random.default_rng(36)
    rows = [
        dict(n=n, g=g, seed=s, y=float(rng.normal(0.3 * np.log10(n), 0.5)), z=float(rng.normal(0, 1)))
        for n in (10, 30, 100, 300, 1000)
        for g in range(4)
        for s in range(3)
    ]
    runs = pd.DataFrame(rows)
    alone = classify_runs(runs, [_ph()], axes=["n"], grid=["g"], n_boot=0)
    noise = _ph(name="other", strength="z")
    together = classify_runs(runs, [_ph(), noise], axes=["n"], grid=["g"], n_boot=0)
    mine = together[together.phenomenon == "sim"].reset_index(drop=True)
    assert np.allclose(mine["p_adjusted"], alone["p_adjusted"])
    assert mine["verdict"].tolist() == alone["verdict"].tolist()
