"""The stacked MLPs' cross-entropy with its backward written out (`zoo.stacked_mlp`): each member's
loss and gradient equal its own model's, computed by autograd one model at a time."""

from __future__ import annotations

import pytest
import torch
from torch.func import stack_module_state

from scalesweep.zoo.base import DataShape
from scalesweep.zoo.data import cross_entropy
from scalesweep.zoo.family_params import MLPParams
from scalesweep.zoo.models import MLP

MEMBERS, BATCH, CLASSES = 3, 5, 7


def members(shape: DataShape, depth: int, parametrization: str, gain: float) -> list[MLP]:
    """MLPs in float64 with their own initial weights; `gain` scales every weight (a large gain
    gives the confident, log-probabilities below -87, regime of a trained classifier)."""
    models = []
    for seed in range(MEMBERS):
        torch.manual_seed(seed)
        model = MLP(MLPParams(depth=depth, embed_dim=3, base_width=4), 8, shape, parametrization).double()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(gain)
        models.append(model)
    return models


def inputs(shape: DataShape) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if shape.input_kind == "tokens":
        return torch.randint(shape.vocab, (MEMBERS, BATCH, shape.seq_len), generator=g)
    return torch.randn(MEMBERS, BATCH, shape.input_dim, generator=g, dtype=torch.float64)


TOKENS = DataShape("tokens", CLASSES, vocab=CLASSES, seq_len=2)
VECTORS = DataShape("vectors", CLASSES, input_dim=4)


@pytest.mark.parametrize(
    ("shape", "depth", "parametrization", "gain"),
    [
        (TOKENS, 1, "sp", 1.0),
        (TOKENS, 3, "mup", 1.0),  # muP: the readout is divided by width / base_width = 2
        (VECTORS, 2, "sp", 1.0),
        (TOKENS, 2, "sp", 40.0),  # log-probabilities far below -87: the clamped exp's regime
    ],
    ids=["tokens-depth1", "tokens-depth3-mup", "vectors-depth2", "confident"],
)
def test_each_members_loss_and_gradient_equal_its_own_models(shape, depth, parametrization, gain):
    models = members(shape, depth, parametrization, gain)
    x = inputs(shape)
    y = torch.randint(CLASSES, (MEMBERS, BATCH), generator=torch.Generator().manual_seed(8))
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)  # d total / d loss_s, not all 1

    alone_losses, alone_grads = [], []
    for s, model in enumerate(models):
        loss = cross_entropy(model(x[s]), y[s])
        (weights[s] * loss).backward()
        alone_losses.append(loss.detach())
        alone_grads.append({name: p.grad for name, p in model.named_parameters()})

    params, _ = stack_module_state(models)
    losses = models[0].stacked_cross_entropy(params, x, y)
    (weights * losses).sum().backward()

    if gain > 1:
        assert min(model(x[0]).log_softmax(-1).min().item() for model in models) < -87
    torch.testing.assert_close(losses.detach(), torch.stack(alone_losses), rtol=1e-12, atol=1e-12)
    for name, stacked in params.items():
        expected = torch.stack([grads[name] for grads in alone_grads])
        torch.testing.assert_close(stacked.grad, expected, rtol=1e-10, atol=1e-12, msg=name)


def test_a_second_backward_through_the_same_graph_is_refused_not_wrong():
    """The backward works in place of what the forward saved; autograd's version check must
    refuse a second pass (retain_graph) rather than let it read the overwritten tensor."""
    models = members(TOKENS, 1, "sp", 1.0)
    params, _ = stack_module_state(models)
    x, y = inputs(TOKENS), torch.zeros(MEMBERS, BATCH, dtype=torch.long)
    total = models[0].stacked_cross_entropy(params, x, y).sum()
    total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        total.backward()
