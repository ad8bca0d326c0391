"""Model families: each has one width knob that the `model_size` axis sweeps.

Every model exposes, besides `forward`:

- `features(x)`: the last hidden representation (effective rank reads it);
- `layer_outputs(x)`: `{layer: activation}` in depth order, the last entry
  being the last hidden layer (the coordinate sizes of a muP coord check);
- `lr_multipliers(optimizer)`: `{parameter name: factor}` on the base learning
  rate (empty under `sp`); the trainer builds its parameter groups from it.

ReLUs are `nn.ReLU` modules so that observables can hook them.

Parametrizations (Yang et al. 2021, "Tensor Programs V", Table 3, in the form
of the `mup` package's MuReadout / MuAdam / MuSGD). Let r = width / base_width.
`sp` is PyTorch's default initialisation and one learning rate. `mup` keeps
that initialisation but (1) divides the readout by r, (2) for Adam(W), scales
the learning rate of *hidden* matrices (both dimensions grow with width) by
1/r, and for SGD scales every other ("vector-like") parameter's by r, and (3)
in attention, scales logits by 1/d_head instead of 1/sqrt(d_head). At r = 1
the two coincide, so a base-width run is the same model under both.

Each family's parameters, checks and closed-form parameter count are declared in
`family_params.py` (without torch, so that a spec is checked without importing this module).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scalesweep.zoo.base import DataShape
from scalesweep.zoo.family_params import (
    MLPParams,
    TMSParams,
    TransformerParams,
    check_mlp,
    check_tms,
    check_tms_shape,
    check_transformer,
)
from scalesweep.zoo.stacked_mlp import stacked_layers, stacked_logits, stacked_mlp_grads


def mup_multipliers(model: nn.Module, hidden: set[str], width_mult: float, optimizer: str) -> dict[str, float]:
    """Per-parameter learning-rate factors of muP: Adam(W) divides hidden matrices'
    rate by the width multiplier; SGD multiplies every other parameter's by it."""
    names = [name for name, _ in model.named_parameters()]
    if optimizer == "sgd":
        return {name: width_mult for name in names if name not in hidden}
    return {name: 1.0 / width_mult for name in names if name in hidden}


class MupReadout:
    """The readout both width-scaled families share: `readout(features(x))`, divided by the width
    multiplier under muP (1 under sp). A mixin before nn.Module: its `forward` is the model's."""

    readout: nn.Linear
    readout_mult: float

    def set_width(self, width: int, base_width: int, parametrization: str) -> None:
        self.parametrization = parametrization
        self.width_mult = width / base_width
        self.readout_mult = 1.0 / self.width_mult if parametrization == "mup" else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.readout(self.features(x))
        return out * self.readout_mult if self.readout_mult != 1 else out


# ---------------------------------------------------------------- MLP


class MLP(MupReadout, nn.Module):
    """Tokens are embedded and concatenated (vectors pass straight in), then
    `depth` ReLU layers of `width` units and a linear readout."""

    def __init__(self, params: MLPParams, width: int, shape: DataShape, parametrization: str = "sp"):
        super().__init__()
        check_mlp(shape)
        if shape.input_kind == "tokens":
            self.embed = nn.Embedding(shape.vocab, params.embed_dim)
            in_dim = shape.seq_len * params.embed_dim
        else:
            self.embed = None
            in_dim = shape.input_dim
        layers: list[nn.Module] = []
        for _ in range(params.depth):
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        self.hidden = nn.Sequential(*layers)
        self.readout = nn.Linear(in_dim, shape.output_dim)
        self.set_width(width, params.base_width, parametrization)

    def layer_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output of each hidden layer (after its ReLU)."""
        if self.embed is not None:
            x = self.embed(x).flatten(1)
        outputs = {}
        for i in range(0, len(self.hidden), 2):
            x = self.hidden[i + 1](self.hidden[i](x))
            outputs[f"hidden{i // 2}"] = x
        return outputs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden representation (observables read it)."""
        if self.embed is not None:
            x = self.embed(x).flatten(1)
        return self.hidden(x)

    def stacked_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The forward of S models of this architecture at once, without vmap (train.Ensemble uses
        it when a family has one): `params` stacked as `torch.func.stack_module_state` stacks them,
        (S, ...) each, and x (S, batch, ...). One lookup into the stacked embedding tables and
        batched matmuls: a quarter to a third cheaper a training step than vmap(functional_call)
        on CPU (8 members at width 32, benchmarks/ensemble_speed.py); each member's outputs equal its own
        model's forward to float rounding."""
        table, layers = stacked_layers(params, len(self.hidden) // 2)
        return stacked_logits(x, self.readout_mult, table, layers)[0]

    def stacked_grads(
        self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The gradients of S stacked models' summed mean cross-entropies (`stacked_forward`'s
        arguments, y (S, batch) labels, `rows` each member's own rows or None: all),
        written out without autograd (`stacked_mlp`)."""
        return stacked_mlp_grads(params, x, y, len(self.hidden) // 2, self.readout_mult, rows)

    def lr_multipliers(self, optimizer: str) -> dict[str, float]:
        if self.parametrization != "mup":
            return {}
        hidden = {f"hidden.{i}.weight" for i in range(2, len(self.hidden), 2)}  # width x width
        return mup_multipliers(self, hidden, self.width_mult, optimizer)


def build_mlp(params: MLPParams, width: int, shape: DataShape, parametrization: str) -> nn.Module:
    return MLP(params, width, shape, parametrization)


# ---------------------------------------------------------------- transformer


class Attention(nn.Module):
    """Causal multi-head self-attention that also returns its pattern (B, H, T, T)."""

    def __init__(self, d_model: int, n_heads: int, scale: float):
        super().__init__()
        self.n_heads, self.scale = n_heads, scale
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-2, -1)) * self.scale
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        pattern = logits.masked_fill(~causal, float("-inf")).softmax(-1)
        out = (pattern @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out), pattern


class Block(nn.Module):
    def __init__(self, d_model: int, params: TransformerParams, scale: float):
        super().__init__()
        norm = nn.LayerNorm if params.layer_norm else (lambda d: nn.Identity())
        self.ln1, self.attn = norm(d_model), Attention(d_model, params.n_heads, scale)
        self.mlp = None
        if not params.attention_only:
            self.ln2 = norm(d_model)
            hidden = params.mlp_ratio * d_model
            self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, d_model))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, pattern = self.attn(self.ln1(x))
        x = x + out
        if self.mlp is not None:
            x = x + self.mlp(self.ln2(x))
        return x, pattern


class Transformer(MupReadout, nn.Module):
    """A small pre-LayerNorm GPT (token + learned position embeddings, causal
    attention, optional ReLU MLPs). For per-token tasks it predicts at every
    position; otherwise it reads the prediction off the last position (as the
    grokking transformers of Power et al. 2022 read it off the "=" token)."""

    def __init__(self, params: TransformerParams, d_model: int, shape: DataShape, parametrization: str = "sp"):
        super().__init__()
        check_transformer(params, d_model, shape)
        d_head = d_model // params.n_heads
        if parametrization == "mup":  # 1/d attention, equal to 1/sqrt(d) at the base width
            base_head = params.base_width / params.n_heads
            scale = math.sqrt(base_head) / d_head
        else:
            scale = 1 / math.sqrt(d_head)
        self.per_token = shape.per_token
        self.embed = nn.Embedding(shape.vocab, d_model)
        self.pos = nn.Embedding(shape.seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, params, scale) for _ in range(params.n_layers))
        self.ln_f = nn.LayerNorm(d_model) if params.layer_norm else nn.Identity()
        self.readout = nn.Linear(d_model, shape.output_dim)
        self.set_width(d_model, params.base_width, parametrization)

    def run(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """The residual stream after the embedding and after each block, and each layer's pattern."""
        h = self.embed(x) + self.pos(torch.arange(x.shape[-1], device=x.device))
        streams, patterns = {"embed": h}, []
        for i, block in enumerate(self.blocks):
            h, pattern = block(h)
            streams[f"block{i}"] = h
            patterns.append(pattern)
        return streams, patterns

    def layer_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The residual stream after the embedding and each block (before the final LayerNorm,
        which would hide a change of scale)."""
        return self.run(x)[0]

    def attention_patterns(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One (batch, heads, query, key) attention pattern per layer."""
        return self.run(x)[1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised final residual stream: (B, d) at the last position, or (B, T, d) per token."""
        streams, _ = self.run(x)
        h = self.ln_f(streams[f"block{len(self.blocks) - 1}"])
        return h if self.per_token else h[:, -1]

    def lr_multipliers(self, optimizer: str) -> dict[str, float]:
        if self.parametrization != "mup":
            return {}
        hidden = {n for n, p in self.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
        return mup_multipliers(self, hidden, self.width_mult, optimizer)


def build_transformer(params: TransformerParams, width: int, shape: DataShape, parametrization: str) -> nn.Module:
    return Transformer(params, width, shape, parametrization)


# ---------------------------------------------------------------- toy model of superposition


class TMS(nn.Module):
    """The toy model of superposition (Elhage et al. 2022): h = W x with W of
    shape (m, n), x' = ReLU(W^T h + b). With a linear readout it keeps only the
    m most important features (PCA); with ReLU and sparse inputs it packs more
    than m features into m dimensions."""

    def __init__(self, params: TMSParams, m: int, shape: DataShape):
        super().__init__()
        check_tms_shape(shape)
        n = shape.input_dim
        self.W = nn.Parameter(torch.empty(m, n))
        nn.init.xavier_normal_(self.W)
        self.b = nn.Parameter(torch.zeros(n))
        self.act = nn.ReLU() if params.readout == "relu" else nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W.T

    def layer_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"hidden": self.features(x)}

    def feature_weights(self) -> torch.Tensor:
        """W (m, n): column i is feature i's direction in the hidden space."""
        return self.W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.features(x) @ self.W + self.b)


def build_tms(params: TMSParams, width: int, shape: DataShape, parametrization: str) -> nn.Module:
    check_tms(shape, parametrization)
    return TMS(params, width, shape)
