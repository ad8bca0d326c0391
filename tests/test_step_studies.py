"""The two studies over training steps (docs/studies.md): induction-head formation against width and
depth, and the Fourier structure of the embedding through grokking against data size."""

from __future__ import annotations

import pytest

from scalesweep.analysis.phenomena import load_phenomenon
from scalesweep.spec import load_spec
from tests import test_studies as studies
from tests.conftest import REPO

NEW_STUDIES = ["induction_formation", "fourier_grokking"]


@pytest.mark.parametrize("name", NEW_STUDIES)
def test_cpu_and_gpu_specs_validate_and_study_the_same_thing(name):
    studies.test_cpu_and_gpu_specs_validate_and_study_the_same_thing(name)


@pytest.mark.parametrize("name", NEW_STUDIES)
def test_each_study_classifies_one_phenomenon_over_steps(name):
    spec = load_spec(REPO / "sweeps" / f"{name}.yaml")
    phenomena = [load_phenomenon(ref.name) for ref in spec.phenomenon_refs]
    over = [ph.name for ph in phenomena if ph.over == "step"]
    assert len(over) == 1, over
    docs = (REPO / "docs" / "studies.md").read_text(encoding="utf-8")
    assert f"sweeps/{name}.yaml" in docs and f"sweeps/{name}_gpu.yaml" in docs


def test_the_formation_step_reads_the_in_context_accuracy_series():
    ph = load_phenomenon("induction_formation")
    assert ph.direction == "lower" and ph.strength == "first_step(test_acc >= level)"
    spec = load_spec(REPO / "sweeps" / "induction_formation.yaml")
    assert spec.model.params["attention_only"] is True and list(spec.grid) == ["model.params.n_layers"]
