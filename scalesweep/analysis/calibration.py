"""Calibration of the classifier: simulated slices with a known answer, judged by rates.

Each `Case` simulates many slices of one structure (noise, trends, U-shapes,
sigmoid take-offs, family offsets, near-deterministic replicates, duplicated
scale values, outlying points) and states the rate a calibrated classifier
must reach: at most `bound` for a false call, at least `bound` for power.
`tests/test_classify_calibration.py` asserts every case; the table of rates
is printed by

    python3 -m scalesweep.analysis.calibration [--slices N]

Rates are over many slices from a fixed numpy seed, never one draw. "sd" is
the standard deviation of one run (or one model) around the truth.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from scalesweep.analysis.classify import TRENDS, classify_slice
from scalesweep.analysis.phenomena import Phenomenon

Truth = Callable[[np.ndarray], np.ndarray]


def phenomenon(**fields) -> Phenomenon:
    """A simulated phenomenon: strength column "y", present everywhere unless told."""
    return Phenomenon(**(dict(name="sim", strength="y", presence=-1e9, min_effect=0.25) | fields))


def grid_slice(
    truth: Truth, xs: np.ndarray, seeds: int, sd: float, rng: np.random.Generator, point_sd: float = 0.0
) -> pd.DataFrame:
    """A sweep-style slice: `seeds` replicates at each scale in `xs`; `point_sd` adds a
    random effect shared by the replicates of a point (e.g. one model, many generation seeds)."""
    x = np.repeat(xs, seeds)
    u = np.log10(x)
    shared = np.repeat(rng.normal(0, point_sd, len(xs)), seeds)
    frame = pd.DataFrame({"x": x, "strength": truth(u) + shared + rng.normal(0, sd, len(x))})
    return frame.assign(seed=np.tile(np.arange(seeds), len(xs)))


def table_slice(truth: Truth, n_models: int, lo: float, hi: float, sd, rng: np.random.Generator) -> pd.DataFrame:
    """A published-table-style slice: one value per model at irregular log-uniform scales."""
    u = np.sort(rng.uniform(lo, hi, n_models))
    noise = sd(u) if callable(sd) else sd
    return pd.DataFrame({"x": 10**u, "strength": truth(u) + rng.normal(0, 1, n_models) * noise})


def sigmoid(lo: float, hi: float, centre: float, width: float) -> Truth:
    return lambda u: lo + (hi - lo) / (1 + np.exp(-(u - centre) / width))


def sigmoid_onset(centre: float, width: float) -> float:
    """Where a rising sigmoid has done 10 % of its rise: the take-off a researcher sees."""
    return centre - width * np.log(9)


def asymmetric_peak(u: np.ndarray) -> np.ndarray:
    """0.90 -> 0.96 over the first 0.6 decade, then a steep fall to 0.50 at 3 decades."""
    return np.where(u < 0.6, 0.90 + 0.1 * u, 0.96 - 0.46 * (u - 0.6) / 2.4)


@dataclass
class Case:
    """One simulated structure: how to draw a slice, what counts as a hit, the bound."""

    name: str
    draw: Callable[[np.random.Generator], pd.DataFrame]
    hit: Callable[[dict], bool]
    bound: float
    at_most: bool  # True: a false call, the rate must stay at or below `bound`
    ph: Phenomenon
    seed: int
    slices: int = 300
    seed_column: bool = True

    def rate(self, slices: int | None = None) -> float:
        rng = np.random.default_rng(self.seed)
        hits = []
        for _ in range(slices or self.slices):
            frame = self.draw(rng)
            seed = "seed" if self.seed_column and "seed" in frame.columns else None
            hits.append(self.hit(classify_slice(frame, x="x", phenomenon=self.ph, seed=seed, n_boot=0)))
        return float(np.mean(hits))

    def holds(self, rate: float) -> bool:
        return rate <= self.bound if self.at_most else rate >= self.bound


def _trend(r: dict) -> bool:
    return r["verdict"] in TRENDS


def _reason(*codes: str) -> Callable[[dict], bool]:
    return lambda r: r["reason"] in codes


def _onset_near(truth: float, factor: float = 3.0) -> Callable[[dict], bool]:
    return lambda r: r["reason"] == "abrupt_onset" and abs(np.log10(r["transition"]) - truth) <= np.log10(factor)


XS5 = np.logspace(1, 3, 5)
XS6 = np.logspace(1, 3.5, 6)
XS7 = np.logspace(1, 4, 7)
XS10 = np.logspace(1, 4, 10)
TAKE_OFF = sigmoid(0.25, 0.95, 2.5, 0.12)  # accuracy: chance 0.25 until ~10^2.2, then up within a decade
PRESENT_ABOVE_CHANCE = dict(presence=0.30, min_effect=0.05)


def _with_outlier(frame: pd.DataFrame, rng: np.random.Generator, shift: float) -> pd.DataFrame:
    """Shift every value at one random scale point (one outlying model, or one bad point)."""
    x = frame["x"].to_numpy()
    bad = x == rng.choice(np.unique(x))
    return frame.assign(strength=frame["strength"] + np.where(bad, shift, 0.0))


def _duplicated_scales(rng: np.random.Generator) -> pd.DataFrame:
    """51 models, one value each, 5 of them sharing a scale value with another model."""
    frame = table_slice(lambda u: 0 * u, 51, 0, 3, 1.0, rng)
    x = frame["x"].to_numpy().copy()
    x[1:10:2] = x[0:9:2]
    return frame.assign(x=x)


def _families(trend: float) -> Callable[[np.random.Generator], pd.DataFrame]:
    """Four model families over the same range, each with its own offset; noise grows with scale."""

    def draw(rng: np.random.Generator) -> pd.DataFrame:
        parts = []
        for offset in rng.normal(0, 0.5, 4):
            part = table_slice(lambda u, offset=offset: trend * u + offset, 10, 0, 3, lambda u: 0.5 + u / 3, rng)
            parts.append(part)
        return pd.concat(parts, ignore_index=True)

    return draw


CASES: list[Case] = [
    Case(
        "noise, 5 points x 3 seeds: false trend",
        lambda g: grid_slice(lambda u: 0 * u, XS5, 3, 1, g),
        _trend,
        0.05,
        True,
        phenomenon(),
        1,
        600,
    ),
    Case(
        "trend of 2 sd, 6 points x 6 seeds: found",
        lambda g: grid_slice(lambda u: (u - 1) / 2.5 * 2, XS6, 6, 1, g),
        lambda r: r["verdict"] == "expansion",
        0.8,
        False,
        phenomenon(),
        2,
    ),
    Case(
        "falling trend, lower is more: shrinkage",
        lambda g: grid_slice(lambda u: (u - 1) / 2.5 * 2, XS6, 6, 1, g),
        lambda r: r["verdict"] == "shrinkage",
        0.8,
        False,
        phenomenon(direction="lower", presence=1e9),
        3,
    ),
    Case(
        "symmetric U, 7 points x 3 seeds: U",
        lambda g: grid_slice(lambda u: 3 * ((u - 2.5) / 1.5) ** 2, XS7, 3, 1, g),
        _reason("u_shape"),
        0.8,
        False,
        phenomenon(),
        4,
    ),
    Case(
        "symmetric inverted U: inverted U",
        lambda g: grid_slice(lambda u: -3 * ((u - 2.5) / 1.5) ** 2, XS7, 3, 1, g),
        _reason("inverted_u"),
        0.8,
        False,
        phenomenon(),
        5,
        200,
    ),
    Case(
        "saturating curve: called U-shaped",
        lambda g: grid_slice(lambda u: -4 * (1 - 10 ** (-(u - 1))), XS7, 3, 0.3, g),
        _reason("u_shape", "inverted_u"),
        0.05,
        True,
        phenomenon(),
        6,
    ),
    Case(
        "saturating sigmoid, 50 models: called U-shaped",
        lambda g: table_slice(sigmoid(0.2, 0.9, 1.0, 0.3), 50, 0, 3, 0.03, g),
        _reason("u_shape", "inverted_u"),
        0.05,
        True,
        phenomenon(),
        7,
    ),
    Case(
        "asymmetric inverted U, 50 models: inverted U",
        lambda g: table_slice(asymmetric_peak, 50, 0, 3, 0.02, g),
        _reason("inverted_u"),
        0.8,
        False,
        phenomenon(min_effect=0.05),
        8,
        seed_column=False,
    ),
    Case(
        "noise, one value per model (8-12): false trend",
        lambda g: table_slice(lambda u: 0 * u, int(g.integers(8, 13)), 1, 4, 1.0, g),
        _trend,
        0.05,
        True,
        phenomenon(),
        9,
        600,
    ),
    Case(
        "trend of 6 sd, one value per model: found",
        lambda g: table_slice(lambda u: (u - 1) / 3 * 6, int(g.integers(8, 13)), 1, 4, 1.0, g),
        lambda r: r["verdict"] == "expansion",
        0.8,
        False,
        phenomenon(),
        10,
    ),
    Case(
        "near-deterministic replicates, point scatter: false trend",
        lambda g: grid_slice(lambda u: 0 * u, XS10, 3, 0.01, g, point_sd=1.0),
        _trend,
        0.05,
        True,
        phenomenon(),
        11,
        1500,
    ),
    Case(
        "replicates and a point effect as large: false trend",
        lambda g: grid_slice(lambda u: 0 * u, XS6, 4, 1.0, g, point_sd=0.5),
        _trend,
        0.10,
        True,
        phenomenon(),
        12,
        600,
    ),
    Case(
        "families with offsets, heteroscedastic: false trend", _families(0.0), _trend, 0.05, True, phenomenon(), 13, 400
    ),
    Case(
        "families with offsets, trend 1/decade: found",
        _families(1.0),
        lambda r: r["verdict"] == "expansion",
        0.8,
        False,
        phenomenon(),
        14,
    ),
    Case("duplicated scale values, noise: false trend", _duplicated_scales, _trend, 0.05, True, phenomenon(), 15, 400),
    Case(
        "sigmoid take-off, 30 models: abrupt onset within 3x",
        lambda g: table_slice(TAKE_OFF, 30, 0, 4, 0.03, g),
        _onset_near(sigmoid_onset(2.5, 0.12)),
        0.8,
        False,
        phenomenon(**PRESENT_ABOVE_CHANCE),
        16,
    ),
    Case(
        "sigmoid take-off, 8 points x 4 seeds: abrupt onset within 3x",
        lambda g: grid_slice(TAKE_OFF, np.logspace(0, 4, 9), 4, 0.03, g),
        _onset_near(sigmoid_onset(2.5, 0.12)),
        0.8,
        False,
        phenomenon(**PRESENT_ABOVE_CHANCE),
        17,
    ),
    Case(
        "sigmoid take-off with one outlying model: onset within 3x",
        lambda g: _with_outlier(table_slice(TAKE_OFF, 30, 0, 4, 0.03, g), g, 0.3),
        _onset_near(sigmoid_onset(2.5, 0.12)),
        0.8,
        False,
        phenomenon(**PRESENT_ABOVE_CHANCE),
        18,
    ),
    Case(
        "log-linear rise crossing presence: called abrupt",
        lambda g: table_slice(lambda u: 0.25 + 0.15 * u, 30, 0, 4, 0.03, g),
        _reason("abrupt_onset"),
        0.10,
        True,
        phenomenon(**PRESENT_ABOVE_CHANCE),
        19,
    ),
    Case(
        "log-linear rise, 8 points x 4 seeds: called abrupt",
        lambda g: grid_slice(lambda u: 0.25 + 0.15 * u, np.logspace(0, 4, 9), 4, 0.03, g),
        _reason("abrupt_onset"),
        0.10,
        True,
        phenomenon(**PRESENT_ABOVE_CHANCE),
        20,
    ),
    Case(
        "abrupt fall to nothing, 30 models: vanishes",
        lambda g: table_slice(sigmoid(0.9, 0.0, 2.5, 0.12), 30, 0, 4, 0.03, g),
        _reason("abrupt_offset"),
        0.8,
        False,
        phenomenon(presence=0.05, min_effect=0.05),
        21,
    ),
    Case(
        "noise with one outlying point, 8 x 3: false trend",
        lambda g: _with_outlier(grid_slice(lambda u: 0 * u, np.logspace(1, 4, 8), 3, 1.0, g), g, 5.0),
        _trend,
        0.05,
        True,
        phenomenon(),
        22,
        400,
    ),
    Case(
        "trend with one outlying model, 30 models: found",
        lambda g: _with_outlier(table_slice(lambda u: u, 30, 0, 3, 0.5, g), g, 3.0),
        lambda r: r["verdict"] == "expansion",
        0.8,
        False,
        phenomenon(),
        23,
    ),
    Case(
        "signed strength crossing zero: sign flip",
        lambda g: grid_slice(lambda u: 2 - u, XS5, 3, 0.3, g),
        _reason("sign_flip"),
        0.9,
        False,
        phenomenon(signed=True),
        24,
        100,
    ),
    Case(
        "flat and present: persistent",
        lambda g: grid_slice(lambda u: 1 + 0 * u, XS5, 3, 0.05, g),
        lambda r: r["verdict"] == "persistent",
        0.9,
        False,
        phenomenon(min_effect=0.3),
        25,
        100,
    ),
    Case(
        "never present: absent",
        lambda g: grid_slice(lambda u: 0 * u, XS5, 3, 0.05, g),
        lambda r: r["verdict"] == "absent",
        0.95,
        False,
        phenomenon(presence=5),
        26,
        100,
    ),
]


def table(slices: int | None = None) -> pd.DataFrame:
    """The rate of every case against its bound."""
    rows = []
    for case in CASES:
        rate = case.rate(slices)
        bound = f"{'<=' if case.at_most else '>='} {case.bound:.2f}"
        rows.append(dict(case=case.name, rate=round(rate, 3), bound=bound, holds=case.holds(rate)))
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=None, help="slices per case (default: each case's own)")
    args = parser.parse_args()
    frame = table(args.slices)
    print(frame.to_markdown(index=False) if _has_tabulate() else frame.to_string(index=False))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
