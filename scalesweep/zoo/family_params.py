"""The built-in model families as a spec sees them: parameters, checks, parameter counts (no torch).

Each family's builder is in `models.py` (torch), named here by import path and
imported only where a model is built (see `base.py` for why). A check refuses what
the builder would refuse; the closed-form count equals the built model's
(`tests/test_compute.py`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from scalesweep.errors import UserError
from scalesweep.zoo.base import DataShape, FamilyInfo, Params, add

BUILDERS = "scalesweep.zoo.models"  # the module that builds each family's torch module


class MLPParams(Params):
    depth: int = Field(default=2, ge=1, le=32, description="hidden layers")
    embed_dim: int = Field(default=32, ge=1, le=4096, description="token embedding size")
    base_width: int = Field(default=32, ge=1, le=65536, description="muP: the width at which mup equals sp")


def check_mlp(shape: DataShape) -> None:
    if shape.per_token:
        raise UserError("the mlp family predicts one label per example; a per-token task needs the transformer family.")


def count_mlp(params: MLPParams, width: int, shape: DataShape, parametrization: str) -> int:
    """The MLP's parameters in closed form (what `MLP(...)` holds: embedding, hidden layers, readout)."""
    check_mlp(shape)
    n, in_dim = 0, shape.input_dim
    if shape.input_kind == "tokens":
        n, in_dim = shape.vocab * params.embed_dim, shape.seq_len * params.embed_dim
    for _ in range(params.depth):
        n, in_dim = n + in_dim * width + width, width
    return n + in_dim * shape.output_dim + shape.output_dim


class TransformerParams(Params):
    n_layers: int = Field(default=2, ge=1, le=48)
    n_heads: int = Field(default=4, ge=1, le=256, description="d_model must be a multiple of it")
    attention_only: bool = Field(default=False, description="no MLP blocks (the induction-head setting)")
    mlp_ratio: int = Field(default=4, ge=1, le=16, description="MLP hidden size / d_model")
    layer_norm: bool = True
    base_width: int = Field(default=32, ge=1, le=65536, description="muP: the d_model at which mup equals sp")


def check_transformer(params: TransformerParams, d_model: int, shape: DataShape) -> None:
    if shape.input_kind != "tokens":
        raise UserError("the transformer family reads token sequences; this task gives vectors (use mlp).")
    if d_model % params.n_heads:
        raise UserError(
            f"transformer d_model (model_size) must be a multiple of n_heads={params.n_heads}, got {d_model}."
        )


def count_transformer(params: TransformerParams, d_model: int, shape: DataShape, parametrization: str) -> int:
    """The transformer's parameters in closed form: embeddings, blocks (LayerNorms, qkv and proj
    without biases, the MLP), the final LayerNorm and the readout."""
    check_transformer(params, d_model, shape)
    norm = 2 * d_model if params.layer_norm else 0
    block = norm + 4 * d_model * d_model
    if not params.attention_only:
        hidden = params.mlp_ratio * d_model
        block += norm + 2 * d_model * hidden + hidden + d_model
    embeddings = (shape.vocab + shape.seq_len) * d_model
    return embeddings + params.n_layers * block + norm + d_model * shape.output_dim + shape.output_dim


class TMSParams(Params):
    readout: Literal["relu", "linear"] = Field(default="relu", description="ReLU(W^T W x + b) or W^T W x + b")


def check_tms_shape(shape: DataShape) -> None:
    if shape.input_kind != "vectors" or shape.output_dim != shape.input_dim:
        raise UserError("the tms family reconstructs its input vector; use it with the superposition task.")


def check_tms(shape: DataShape, parametrization: str) -> None:
    if parametrization != "sp":
        raise UserError(
            "the tms family has tied input/output weights and a fixed-size input, so muP does not apply; "
            'use parametrization "sp".'
        )
    check_tms_shape(shape)


def count_tms(params: TMSParams, width: int, shape: DataShape, parametrization: str) -> int:
    """W (m x n) and b (n)."""
    check_tms(shape, parametrization)
    return width * shape.input_dim + shape.input_dim


for info in (
    FamilyInfo("mlp", MLPParams, f"{BUILDERS}:build_mlp", knob="width", count=count_mlp),
    FamilyInfo(
        "transformer", TransformerParams, f"{BUILDERS}:build_transformer", knob="d_model", count=count_transformer
    ),
    FamilyInfo("tms", TMSParams, f"{BUILDERS}:build_tms", knob="hidden dims m", count=count_tms),
):
    add(info)
