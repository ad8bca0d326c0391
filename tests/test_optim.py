"""scalesweep's optimisers are torch.optim's updates, bit for bit, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from scalesweep.optim import Optimizer

TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def _params(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(4, 8, 16), (4, 16), (4, 7, 8), (7,)]
    return [torch.randn(*shape, generator=generator).requires_grad_() for shape in shapes]


def _groups(params: list[torch.Tensor]) -> list[dict]:
    """Two groups of their own lr and weight decay, as muP's factors and stacked members make."""
    return [
        {"params": params[:2], "lr": 0.03, "weight_decay": 0.5},
        {"params": params[2:], "lr": 0.01, "weight_decay": 0.0},
    ]


def _loss(params: list[torch.Tensor], step: int) -> torch.Tensor:
    """A loss whose gradients change with the parameters and the step (not a constant gradient)."""
    return sum(((p - 0.1 * step) ** 2 * (i + 1)).sum() + p.sin().sum() for i, p in enumerate(params))


def _train(optimizer, params: list[torch.Tensor], steps: range) -> None:
    for step in steps:
        optimizer.zero_grad(set_to_none=True)
        _loss(params, step).backward()
        optimizer.step()


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("fused", [True, False])
def test_each_update_equals_torch_optims(kind, fused):
    ours, theirs = _params(0), _params(0)
    optimizer = Optimizer(_groups(ours), kind)
    optimizer.fused = fused
    reference = TORCH[kind](_groups(theirs), lr=0.1, **({"fused": True} if fused else {}))
    for step in range(25):
        _train(optimizer, ours, range(step, step + 1))
        _train(reference, theirs, range(step, step + 1))
        for mine, torch_s in zip(ours, theirs, strict=True):
            assert torch.equal(mine, torch_s), f"{kind} (fused={fused}) differs at step {step}"


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_a_state_dict_goes_on_exactly_and_torchs_own_loads(kind):
    straight = _params(1)
    _train(Optimizer(_groups(straight), kind), straight, range(20))

    for maker in (lambda groups: Optimizer(groups, kind), lambda groups: TORCH[kind](groups, lr=0.1, fused=True)):
        first = _params(1)
        before = maker(_groups(first))
        _train(before, first, range(10))
        resumed = [p.detach().clone().requires_grad_() for p in first]
        after = Optimizer(_groups(resumed), kind)
        after.load_state_dict(before.state_dict())
        _train(after, resumed, range(10, 20))
        assert all(torch.equal(a, b) for a, b in zip(resumed, straight, strict=True))


def test_a_state_dict_of_other_groups_is_refused():
    params = _params(2)
    saved = Optimizer(_groups(params), "adam")
    _train(saved, params, range(2))
    other = Optimizer([{"params": params, "lr": 0.01, "weight_decay": 0.0}], "adam")
    with pytest.raises(ValueError, match="groups"):
        other.load_state_dict(saved.state_dict())


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="sgd, adam, adamw"):
        Optimizer(_groups(_params(3)), "lion")


def test_training_imports_no_torch_dynamo():
    """The point of the module: a worker's first step without torch._dynamo (~0.8 s, ~70 MiB)."""
    code = (
        "import sys, torch\n"
        "from scalesweep.optim import Optimizer\n"
        "w = torch.zeros(3, requires_grad=True)\n"
        "o = Optimizer([{'params': [w], 'lr': 0.1, 'weight_decay': 0.1}], 'adamw')\n"
        "w.sum().backward(); o.step(); o.zero_grad()\n"
        "assert float(w[0]) != 0.0\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
