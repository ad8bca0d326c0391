"""A run's parameter count comes from each family's closed form (no model is built to count it):
it must equal the count of the model the trainer builds, for every family, shape and option, and
refuse the same combinations with the same message."""

from __future__ import annotations

import itertools

import pytest

from scalesweep.errors import UserError
from scalesweep.plan.compute import _n_params_cached, _shape_cached, n_params_of
from scalesweep.zoo import FAMILIES, TASKS
from scalesweep.zoo.base import DataShape

SHAPES = [
    DataShape("tokens", output_dim=11, vocab=11, seq_len=2),
    DataShape("tokens", output_dim=13, vocab=13, seq_len=8, per_token=True),
    DataShape("vectors", output_dim=6, input_dim=6),
    DataShape("vectors", output_dim=1, input_dim=10),
    *(info.make(info.params_model(), 8, 0).shape for info in TASKS.values()),  # every task's real shape
]
OPTIONS = {
    "mlp": [{}, {"depth": 1}, {"depth": 3, "embed_dim": 5}, {"base_width": 8}],
    "transformer": [{}, {"n_layers": 1, "attention_only": True}, {"layer_norm": False, "mlp_ratio": 2}],
    "tms": [{}, {"readout": "linear"}],
}
BUILT_IN = ("mlp", "transformer", "tms")


def test_every_built_in_family_has_a_closed_form_count():
    assert set(OPTIONS) == set(BUILT_IN) and all(FAMILIES[name].count is not None for name in BUILT_IN)


@pytest.mark.parametrize("family", BUILT_IN)
def test_closed_form_count_equals_the_built_models_count(family):
    info = FAMILIES[family]
    compared = 0
    for shape, options, width, parametrization in itertools.product(
        SHAPES, OPTIONS[family], (4, 8, 12, 64), ("sp", "mup")
    ):
        params = info.params_model(**options)
        try:
            built = sum(p.numel() for p in info.build(params, width, shape, parametrization).parameters())
        except UserError as refused:
            with pytest.raises(UserError) as counted:
                info.count(params, width, shape, parametrization)
            assert str(counted.value) == str(refused)
            continue
        assert info.count(params, width, shape, parametrization) == built, (shape, options, width, parametrization)
        compared += 1
    assert compared >= 16  # the product is not all refusals


def test_counting_builds_no_model(monkeypatch):
    """`n_params_of` (what RunConfig.compute and the IsoFLOP design use) never calls a builder,
    nor a task's generator (the shape is declared)."""
    import dataclasses

    def refuse(*args):
        raise AssertionError("a model was built, or data made, to count parameters")

    monkeypatch.setitem(FAMILIES, "mlp", dataclasses.replace(FAMILIES["mlp"], builder=refuse))
    monkeypatch.setitem(TASKS, "modular_arithmetic", dataclasses.replace(TASKS["modular_arithmetic"], generator=refuse))
    _n_params_cached.cache_clear()
    _shape_cached.cache_clear()
    n = n_params_of("modular_arithmetic", {"p": 7}, "mlp", {"depth": 2, "embed_dim": 4}, "sp", 16)
    expected = 7 * 4 + (2 * 4 * 16 + 16) + (16 * 16 + 16) + (16 * 7 + 7)
    assert n == expected
