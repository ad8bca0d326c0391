"""Calibration of the classifier on simulated slices.

Every case simulates hundreds of slices with a fixed numpy seed and asserts
on RATES, never on one draw. Rates run with n_boot=0 (no confidence) so the
file stays fast. "Noise SD" is the SD of one run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scalesweep.analysis.classify import VERDICT_COLUMNS, classify_runs, classify_slice
from scalesweep.analysis.phenomena import Phenomenon

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


def test_pure_noise_five_points_three_seeds_rarely_calls_a_trend():
    res = _simulate(lambda u: 0 * u, XS5, 3, 1.0, n=600, seed=1)
    assert _rate(res, lambda r: r["verdict"] in TRENDS) <= 0.05


def test_monotone_trend_of_two_noise_sd_is_found_in_the_right_direction():
    # 6 points x 4 seeds over 2.5 decades; change across the range = 2 SD.
    # (With 5 points x 3 seeds no valid 5 % test reaches 80 % power here.)
    xs = np.logspace(1, 3.5, 6)
    up = _simulate(lambda u: (u - 1) / 2.5 * 2.0, xs, 4, 1.0, n=300, seed=2)
    assert _rate(up, lambda r: r["verdict"] == "expansion") >= 0.8
    down = _simulate(lambda u: (u - 1) / 2.5 * 2.0, xs, 4, 1.0, n=300, seed=3, ph=_ph(direction="lower", presence=1e9))
    assert _rate(down, lambda r: r["verdict"] == "shrinkage") >= 0.8


def test_u_shape_is_a_transformation():
    xs = np.logspace(1, 4, 7)
    res = _simulate(lambda u: 3.0 * ((u - 2.5) / 1.5) ** 2, xs, 3, 1.0, n=300, seed=4)
    assert _rate(res, lambda r: r["verdict"] == "transformation" and "U-shaped" in r["detail"]) >= 0.8
    inv = _simulate(lambda u: -3.0 * ((u - 2.5) / 1.5) ** 2, xs, 3, 1.0, n=200, seed=5)
    assert _rate(inv, lambda r: "inverted-U" in r["detail"]) >= 0.8


def test_saturating_curve_is_not_called_u_shaped():
    xs = np.logspace(1, 4, 7)
    res = _simulate(lambda u: -4 * (1 - 10 ** (-(u - 1))), xs, 3, 0.3, n=300, seed=6)
    assert _rate(res, lambda r: r["verdict"] == "transformation") <= 0.05
    assert _rate(res, lambda r: r["verdict"] == "expansion") == 0.0


def _flip(u, rng, at=2.75, noise=0.1):
    labels = np.where(u < at, "A", "B")
    flipped = rng.random(len(u)) < noise
    return np.where(flipped, np.where(labels == "A", "B", "A"), labels)


def test_regime_flip_at_mid_range():
    xs = np.logspace(1, 4.5, 8)  # grid step 0.5 decade, flip at 10**2.75
    res = _simulate(lambda u: 0 * u, xs, 3, 1.0, n=300, seed=7, labels=_flip)
    flips = [r for r in res if r["verdict"] == "transformation" and r["detail"] == "A -> B"]
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
    assert all(r["noise"].startswith("residuals") for r in noise)
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


def test_emerges_and_vanishes():
    up = _simulate(lambda u: u - 2, XS5, 3, 0.1, n=50, seed=14, ph=_ph(presence=0.0))
    assert _rate(up, lambda r: r["detail"] == "emerges") >= 0.9
    assert all(10 < r["transition"] < 1000 for r in up if r["detail"] == "emerges")
    down = _simulate(lambda u: 2 - u, XS5, 3, 0.1, n=50, seed=15, ph=_ph(presence=0.0))
    assert _rate(down, lambda r: r["verdict"] == "shrinkage" and r["detail"] == "vanishes") >= 0.9


def test_signed_strength_sign_flip():
    ph = _ph(signed=True)
    res = _simulate(lambda u: 2 - u, XS5, 3, 0.3, n=100, seed=16, ph=ph)
    assert _rate(res, lambda r: r["detail"] == "sign flip + -> -") >= 0.9


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
