"""Tasks: deterministic data generators, each known for a phenomenon."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from scalesweep.errors import UserError
from scalesweep.zoo.base import Dataset, DataShape, Params, register_task


class ModularArithmeticParams(Params):
    p: int = Field(default=97, ge=2, le=2000, description="the modulus (a prime for ÷)")
    op: Literal["+", "-", "*", "/"] = "+"


def _modular_table(p: int, op: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair (a, b) and its label (a op b) mod p; for ÷ only b != 0."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    if op == "/":
        keep = b != 0
        a, b = a[keep], b[keep]
        inverse = torch.tensor([pow(int(v), p - 2, p) if v else 0 for v in range(p)])
        labels = (a * inverse[b]) % p
    else:
        labels = {"+": a + b, "-": a - b, "*": a * b}[op] % p
    return torch.stack([a, b], dim=1), labels


@register_task(
    "modular_arithmetic",
    ModularArithmeticParams,
    known_for="grokking (Power et al. 2022); phases comprehension / grokking / "
    "memorization / confusion (Liu et al. 2022)",
)
def modular_arithmetic(params: ModularArithmeticParams, data_size: int, seed: int) -> Dataset:
    """(a op b) mod p. `data_size` pairs are trained on; the test set is every other pair."""
    x, y = _modular_table(params.p, params.op)
    if not 1 <= data_size < len(x):
        raise UserError(
            f"modular_arithmetic with p={params.p} has {len(x)} pairs; data_size must be "
            f"between 1 and {len(x) - 1} (so that some pairs are left to test on), got {data_size}."
        )
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:data_size], order[data_size:]
    shape = DataShape("tokens", output_dim=params.p, vocab=params.p, seq_len=2)
    return Dataset(x[train], y[train], x[test], y[test], shape, "classification")
