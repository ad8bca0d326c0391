"""The stacked MLPs' cross-entropy gradients written out (`zoo.stacked_mlp`): each member's gradient
equals its own model's, computed by autograd one model at a time."""

from __future__ import annotations

import pytest
import torch
from torch.func import stack_module_state

from scalesweep.train import Ensemble
from scalesweep.zoo.base import IGNORE, DataShape
from scalesweep.zoo.data import cross_entropy, masked_cross_entropy
from scalesweep.zoo.family_params import MLPParams
from scalesweep.zoo.models import MLP

MEMBERS, BATCH, CLASSES = 3, 5, 7


def members(shape: DataShape, depth: int, parametrization: str, gain: float, dtype=torch.float64) -> list[MLP]:
    """MLPs with their own initial weights; `gain` scales every weight (a large gain gives the
    confident, log-probabilities below -87, regime of a trained classifier, where float32's exp
    underflows)."""
    models = []
    for seed in range(MEMBERS):
        torch.manual_seed(seed)
        model = MLP(MLPParams(depth=depth, embed_dim=3, base_width=4), 8, shape, parametrization).to(dtype)
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


FLOAT32 = {"rtol": 1e-5, "atol": 1e-6}
FLOAT64 = {"rtol": 1e-10, "atol": 1e-12}


TOKENS = DataShape("tokens", CLASSES, vocab=CLASSES, seq_len=2)
VECTORS = DataShape("vectors", CLASSES, input_dim=4)


@pytest.mark.parametrize(
    ("shape", "depth", "parametrization", "gain", "dtype"),
    [
        (TOKENS, 1, "sp", 1.0, torch.float64),
        (TOKENS, 3, "mup", 1.0, torch.float64),  # muP: the readout is divided by width / base_width = 2
        (VECTORS, 2, "sp", 1.0, torch.float64),
        (TOKENS, 2, "sp", 40.0, torch.float64),  # log-probabilities far below -87
        (TOKENS, 2, "sp", 40.0, torch.float32),  # ... where float32's probabilities underflow
    ],
    ids=["tokens-depth1", "tokens-depth3-mup", "vectors-depth2", "confident", "confident-float32"],
)
def test_each_members_gradient_equals_its_own_models(shape, depth, parametrization, gain, dtype):
    models = members(shape, depth, parametrization, gain, dtype)
    x = inputs(shape).to(dtype) if shape.input_kind == "vectors" else inputs(shape)
    y = torch.randint(CLASSES, (MEMBERS, BATCH), generator=torch.Generator().manual_seed(8))

    alone = []
    for s, model in enumerate(models):
        cross_entropy(model(x[s]), y[s]).backward()
        alone.append({name: p.grad for name, p in model.named_parameters()})

    params, _ = stack_module_state(models)
    grads = models[0].stacked_grads(params, x, y)

    if gain > 1:
        assert min(model(x[0]).log_softmax(-1).min().item() for model in models) < -87
    assert set(grads) == set(params)
    for name, stacked in grads.items():
        expected = torch.stack([g[name] for g in alone])
        torch.testing.assert_close(stacked, expected, **(FLOAT64 if dtype == torch.float64 else FLOAT32), msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_padded_groups_gradients_are_each_members_over_its_own_rows(dtype):
    """Members with batches of different lengths (a group of data sizes, padded): member s's
    gradient is its loss's over its own rows (and not over an IGNORE label), as alone."""
    models = members(TOKENS, 2, "sp", 1.0, dtype)
    x = inputs(TOKENS)
    y = torch.randint(CLASSES, (MEMBERS, BATCH), generator=torch.Generator().manual_seed(8))
    y[1, 0] = IGNORE
    rows = (torch.arange(BATCH) < torch.tensor([BATCH, 3, 1])[:, None]).float()  # float32, as GroupData's

    alone = []
    for s, model in enumerate(models):
        masked_cross_entropy(model(x[s]), y[s], rows[s].to(dtype)).backward()
        alone.append({name: p.grad for name, p in model.named_parameters()})

    params, _ = stack_module_state(models)
    grads = models[0].stacked_grads(params, x, y, rows)

    for name, stacked in grads.items():
        expected = torch.stack([g[name] for g in alone])
        torch.testing.assert_close(stacked, expected, **(FLOAT64 if dtype == torch.float64 else FLOAT32), msg=name)


def test_ensemble_backward_adds_into_existing_gradients_as_autograd_does():
    """`Ensemble.backward` twice without zeroing: the written-out gradients add up, as autograd's
    do (a loss that is not `cross_entropy` itself takes autograd's path), over several blocks."""
    y = torch.randint(CLASSES, (MEMBERS, BATCH), generator=torch.Generator().manual_seed(8))
    x = inputs(TOKENS)
    through = {}
    for path, loss_fn in [("written out", cross_entropy), ("autograd", lambda out, y: cross_entropy(out, y))]:
        ensemble = Ensemble(members(TOKENS, 1, "sp", 1.0), keys=[0, 1, 1])  # two blocks
        ensemble.backward(loss_fn, x, y)
        ensemble.backward(loss_fn, x, y)
        through[path] = {(k, name): p.grad for k, block in enumerate(ensemble.blocks) for name, p in block.items()}
    assert len(through["autograd"]) == 2 * len(ensemble.blocks[0])
    for key, grad in through["autograd"].items():
        torch.testing.assert_close(through["written out"][key], grad, **FLOAT64, msg=str(key))
