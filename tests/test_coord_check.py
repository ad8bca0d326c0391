"""muP coordinate check (Yang et al. 2021, "Tensor Programs V", Fig. 5 / the mup package's coord_check).

After a few Adam steps the last hidden layer's coordinate size grows with width
under the standard parametrization (each hidden weight moves by ~lr, and a
width-n layer sums n such coherent moves) and stays flat under muP (hidden
learning rate scaled by 1 / width). Seed-averaged, over a 16x range of widths.
"""

from __future__ import annotations

import numpy as np
import pytest

from scalesweep.plan import RunConfig
from scalesweep.spec import TrainingSpec
from scalesweep.train import train_runs

WIDTHS = [64, 128, 256, 1024]
SEEDS = [0, 1, 2, 3]


def coordinate_sizes(parametrization: str) -> np.ndarray:
    """activation_rms_final of the last hidden layer, one row per width, one column per seed."""
    training = TrainingSpec(steps=2, batch_size=64, optimizer="adam", lr=1e-2, eval_every=2)
    sizes = np.zeros((len(WIDTHS), len(SEEDS)))
    for i, width in enumerate(WIDTHS):
        runs = [
            RunConfig(
                sweep="coord",
                task="modular_arithmetic",
                task_params={"p": 23},
                family="mlp",
                model_params={"depth": 2, "embed_dim": 16, "base_width": 64},
                parametrization=parametrization,
                model_size=width,
                data_size=256,
                seed=seed,
                training=training,
                observables=["activation_rms"],
            )
            for seed in SEEDS
        ]
        summaries = {e["run_key"]: e["summary"] for e in train_runs(runs) if e["kind"] == "summary"}
        sizes[i] = [summaries[r.run_key]["activation_rms_final"] for r in runs]
    return sizes


def slope(sizes: np.ndarray) -> float:
    """d log(coordinate size) / d log(width), seeds averaged."""
    return float(np.polyfit(np.log(WIDTHS), np.log(sizes.mean(1)), 1)[0])


pytestmark = pytest.mark.slow  # trains MLPs at six widths under both parametrizations


@pytest.fixture(scope="module")
def sizes() -> dict[str, np.ndarray]:
    return {p: coordinate_sizes(p) for p in ("sp", "mup")}


def test_sp_coordinates_grow_with_width(sizes):
    sp = sizes["sp"]
    assert np.all(np.diff(sp.mean(1)) > 0), sp.mean(1)
    assert sp.mean(1)[-1] / sp.mean(1)[0] > 2.5 and slope(sp) > 0.3
    assert np.all(sp[-1] > sp[0]), "every seed, not just the average"


def test_mup_coordinates_stay_flat(sizes):
    mup = sizes["mup"]
    assert 0.8 < mup.mean(1)[-1] / mup.mean(1)[0] < 1.25 and abs(slope(mup)) < 0.1, mup.mean(1)
