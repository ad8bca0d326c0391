"""Model families: parameter counts, the width knob, and sp vs mup."""

from __future__ import annotations

import math

import pytest
import torch

from scalesweep.errors import UserError
from scalesweep.zoo import FAMILIES
from scalesweep.zoo.base import DataShape

TOKENS = DataShape("tokens", output_dim=11, vocab=11, seq_len=2)
SEQUENCE = DataShape("tokens", output_dim=13, vocab=13, seq_len=8, per_token=True)
VECTORS = DataShape("vectors", output_dim=6, input_dim=6)


def build(family: str, width: int, shape: DataShape, parametrization: str = "sp", seed: int = 0, **params):
    info = FAMILIES[family]
    torch.manual_seed(seed)
    return info.build(info.params_model(**params), width, shape, parametrization)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_family_names_its_knob():
    assert {name: info.knob for name, info in FAMILIES.items()} == {
        "mlp": "width",
        "transformer": "d_model",
        "tms": "hidden dims m",
    }


@pytest.mark.parametrize("width", [8, 32])
def test_mlp_parameter_count_and_shapes(width):
    v, e, p = 11, 4, 11
    model = build("mlp", width, TOKENS, depth=2, embed_dim=e)
    assert count(model) == v * e + (2 * e * width + width) + (width * width + width) + (width * p + p)
    x = torch.randint(v, (5, 2))
    assert model(x).shape == (5, p) and model.features(x).shape == (5, width)
    assert list(model.layer_outputs(x)) == ["hidden0", "hidden1"]


@pytest.mark.parametrize("attention_only", [False, True])
def test_transformer_parameter_count_and_shapes(attention_only):
    d, layers, v, t = 16, 2, 13, 8
    model = build("transformer", d, SEQUENCE, n_layers=layers, n_heads=4, attention_only=attention_only)
    per_block = 2 * d + 4 * d * d + (0 if attention_only else 2 * d + 8 * d * d + 4 * d + d)
    assert count(model) == v * d + t * d + layers * per_block + 2 * d + d * v + v
    x = torch.randint(v, (3, t))
    assert model(x).shape == (3, t, v) and model.features(x).shape == (3, t, d)
    patterns = model.attention_patterns(x)
    assert len(patterns) == layers and patterns[0].shape == (3, 4, t, t)
    assert torch.allclose(patterns[0].sum(-1), torch.ones(3, 4, t)) and patterns[0].triu(1).abs().max() == 0


def test_transformer_reads_a_single_label_off_the_last_position():
    model = build("transformer", 8, TOKENS, n_layers=1, n_heads=2)
    assert model(torch.randint(11, (4, 2))).shape == (4, 11)


def test_tms_is_the_elhage_model():
    model = build("tms", 3, VECTORS)
    assert count(model) == 3 * 6 + 6 and model.feature_weights().shape == (3, 6)
    x = torch.rand(4, 6)
    w, b = model.W.detach(), model.b.detach()
    assert torch.allclose(model(x), torch.relu(x @ w.T @ w + b))


@pytest.mark.parametrize(
    ("family", "width", "shape", "parametrization", "message"),
    [
        ("mlp", 8, SEQUENCE, "sp", "per-token"),
        ("transformer", 10, TOKENS, "sp", "multiple of n_heads"),
        ("transformer", 8, VECTORS, "sp", "token"),
        ("tms", 3, TOKENS, "sp", "superposition"),
        ("tms", 3, VECTORS, "mup", "sp"),
    ],
)
def test_impossible_combinations_are_user_errors(family, width, shape, parametrization, message):
    with pytest.raises(UserError, match=message):
        build(family, width, shape, parametrization)


@pytest.mark.parametrize(("family", "shape"), [("mlp", TOKENS), ("transformer", SEQUENCE)])
def test_mup_equals_sp_at_the_base_width(family, shape):
    sp, mup = build(family, 32, shape, "sp", base_width=32), build(family, 32, shape, "mup", base_width=32)
    x = torch.randint(shape.vocab, (4, shape.seq_len))
    assert torch.allclose(sp(x), mup(x))
    assert all(math.isclose(v, 1.0) for v in mup.lr_multipliers("adamw").values())


def test_mup_scales_readout_and_hidden_learning_rates_with_width():
    sp, mup = build("mlp", 128, TOKENS, "sp", base_width=32), build("mlp", 128, TOKENS, "mup", base_width=32)
    x = torch.randint(11, (4, 2))
    assert torch.allclose(mup(x), sp(x) / 4)  # readout divided by width / base_width
    assert sp.lr_multipliers("adamw") == {}
    assert mup.lr_multipliers("adamw") == {"hidden.2.weight": 0.25}  # only the width x width matrix
    sgd = mup.lr_multipliers("sgd")
    assert "hidden.2.weight" not in sgd and sgd["hidden.0.weight"] == sgd["readout.weight"] == 4.0


def test_transformer_mup_uses_one_over_d_attention_and_scales_block_matrices():
    model = build("transformer", 64, SEQUENCE, "mup", n_heads=4, base_width=16)
    assert math.isclose(model.blocks[0].attn.scale, math.sqrt(4) / 16)
    multipliers = model.lr_multipliers("adam")
    assert multipliers["blocks.0.attn.qkv.weight"] == 0.25 and "embed.weight" not in multipliers
    assert "blocks.0.ln1.weight" not in multipliers
