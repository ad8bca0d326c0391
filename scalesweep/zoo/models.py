"""Model families: each has one width knob that the `model_size` axis sweeps."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from scalesweep.zoo.base import DataShape, Params, register_family


class MLPParams(Params):
    depth: int = Field(default=2, ge=1, le=32, description="hidden layers")
    embed_dim: int = Field(default=32, ge=1, le=4096, description="token embedding size")


class MLP(nn.Module):
    """Tokens are embedded and concatenated (vectors pass straight in), then
    `depth` ReLU layers of `width` units and a linear readout."""

    def __init__(self, params: MLPParams, width: int, shape: DataShape):
        super().__init__()
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

    def features(self, x):
        """The last hidden representation (observables read it)."""
        if self.embed is not None:
            x = self.embed(x).flatten(1)
        return self.hidden(x)

    def forward(self, x):
        return self.readout(self.features(x))


@register_family("mlp", MLPParams, knob="width")
def build_mlp(params: MLPParams, width: int, shape: DataShape, parametrization: str) -> nn.Module:
    return MLP(params, width, shape)
