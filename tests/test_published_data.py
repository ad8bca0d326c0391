"""The analysis layer on real cross-scale data that others measured.

Reads `<repo>/../shared/data/` (see its README for the reference numbers);
skips cleanly where that folder is absent. Nothing is copied into the repo.

Slices of irregular tables: Chinchilla's runs have D = C / 6N, so no two runs
share an exact D. "Loss along N at fixed D" is read as loss along N within
half-decade bins of D (and vice versa); within compute budgets (IsoFLOP
profiles) loss vs N is U-shaped, which the classifier calls a transformation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scalesweep.analysis import fits
from scalesweep.analysis.classify import classify_runs, log_bins
from scalesweep.analysis.phenomena import Phenomenon, load_phenomenon
from scalesweep.analysis.table import classify_table
from scalesweep.commands import fit_command

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHIN = DATA / "chinchilla_hoffmann2022_fig4_epoch_extracted.csv"
BNSL = DATA / "bnsl_4digit_addition.csv"
OBS = DATA / "obsscaling_emergent_bigbench.csv"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"published data folder {DATA} is absent")

# Besiroglu et al. 2024, bootstrap 95 % intervals
REPLICATION_CI = {
    "A": (285.2, 743.6),
    "B": (1042.4, 5810.3),
    "E": (1.769, 1.871),
    "alpha": (0.317, 0.373),
    "beta": (0.331, 0.415),
}


@pytest.fixture(scope="module")
def chinchilla() -> pd.DataFrame:
    frame = pd.read_csv(CHIN)
    return frame[frame["excluded_top5_loss_outlier"] == 0].copy()


def test_chinchilla_fit_lands_in_replication_intervals(chinchilla):
    assert len(chinchilla) == 240
    table = fit_command(
        CHIN, "chinchilla", "loss", n="N_params", d="D_tokens", exclude_col="excluded_top5_loss_outlier", n_boot=40
    )
    for name, (lo, hi) in REPLICATION_CI.items():
        assert lo <= table[name]["value"] <= hi, (name, table[name])
        assert table[name]["ci_low"] <= table[name]["value"] <= table[name]["ci_high"]


def test_bnsl_extrapolates_held_out_points():
    frame = pd.read_csv(BNSL)
    fit_rows, held = frame[frame.bnsl_split == "fit"], frame[frame.bnsl_split != "fit"]
    assert len(fit_rows) == 14 and len(held) == 3
    fit = fits.fit_bnsl(fit_rows.train_dataset_size, fit_rows.test_cross_entropy, n_boot=0)
    err = fits.rmsle(fit.predict(held.train_dataset_size), held.test_cross_entropy)
    assert err <= 2e-2


def _loss_verdicts(chinchilla, axis, other):
    runs = chinchilla.assign(bin=log_bins(chinchilla[other]))
    ph = load_phenomenon("test_loss", {"strength": "loss"})
    return classify_runs(runs, [ph], axes=[axis], grid=["bin"], seed=None, n_boot=50)


@pytest.mark.parametrize(("axis", "other"), [("N_params", "D_tokens"), ("D_tokens", "N_params")])
def test_chinchilla_loss_shrinks_along_n_and_d(chinchilla, axis, other):
    v = _loss_verdicts(chinchilla, axis, other)
    decided = v[v.verdict != "inconclusive"]
    assert len(decided) >= 4
    assert (decided.verdict == "shrinkage").all(), decided[["slice", "verdict", "detail"]]
    assert (decided.effect < 0).all() and (decided.confidence >= 0.8).all()


def test_chinchilla_isoflop_profiles_are_u_shaped(chinchilla):
    runs = chinchilla.assign(budget=np.round(np.log10(chinchilla.C_flop), 1))
    ph = load_phenomenon("test_loss", {"strength": "loss"})
    v = classify_runs(runs, [ph], axes=["N_params"], grid=["budget"], seed=None, n_boot=0)
    u = v[v.detail.str.startswith("U-shaped")]
    assert len(u) >= 5
    assert not v.detail.str.startswith("inverted-U").any()


@pytest.fixture(scope="module")
def open_models() -> pd.DataFrame:
    return pd.read_csv(OBS).rename(
        columns={"Model Size (B)": "size_b", "FLOPs (1E21)": "flops", "Model Family": "family"}
    )


@pytest.mark.parametrize(
    "task", ["arithmetic_3ds_2_acc", "arithmetic_3da_2_acc", "arithmetic_2dm_2_acc", "arithmetic_2da_2_acc"]
)
def test_arithmetic_accuracy_expands_across_open_models(open_models, task):
    # Across families, as Ruan et al. 2024 pool them: one value per model, no seeds.
    ph = Phenomenon(name=task, strength=task, presence=0.05, min_effect=0.1)
    for axis in ("flops", "size_b"):
        v = classify_runs(open_models, [ph], axes=[axis], grid=[], seed=None, n_boot=50)
        assert v.verdict.tolist() == ["expansion"], v.detail.tolist()
        assert v.confidence.iloc[0] >= 0.9


def test_ipa_exact_match_and_bleu_disagree_within_families(open_models):
    # Schaeffer et al. 2023: the discontinuous metric can hide smooth progress.
    ph = Phenomenon(
        name="ipa_transliterate",
        strength="ipa_transliterate_2_exact_match",
        alternative="ipa_transliterate_2_bleu / 100",
        presence=0.05,
        min_effect=0.05,
    )
    pooled = classify_runs(open_models, [ph], axes=["flops"], grid=[], seed=None, n_boot=0).iloc[0]
    assert pooled.verdict == "expansion" and pooled.detail.startswith("emerges")
    fam = classify_runs(open_models, [ph], axes=["size_b"], grid=["family"], seed=None, n_boot=0, fdr=None)
    flagged = fam[fam.flag != ""]
    assert {"family=OPT", "family=StarCoder"} <= set(flagged.slice)
    assert (flagged.verdict == "absent").all() and (flagged.alt_verdict == "expansion").all()


def test_classify_command_on_a_published_table(tmp_path):
    _, v = classify_table(
        CHIN,
        axis="N_params",
        value="loss",
        group=[],
        seed=None,
        direction="higher",
        presence=None,
        min_effect=None,
        out_dir=tmp_path,
    )
    assert (tmp_path / "verdicts.csv").is_file()
    assert v.columns[0] == "phenomenon" and len(v) == 1
