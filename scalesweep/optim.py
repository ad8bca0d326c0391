"""The optimisers a run trains with: torch's own SGD, Adam and AdamW kernels, the state kept here.

Why not `torch.optim.AdamW` itself: its constructor, `zero_grad` and `step` are wrapped to keep
torch.compile out (`torch._disable_dynamo`, `_use_grad_for_differentiable`), and those wrappers
import `torch._dynamo` on first use: 0.8 s of a worker's start on an idle machine (1.9 s on a
busy one) and ~70 MiB, before the first training step, in a process that never compiles; and
~10 us of Python per step (28 -> 18 us for a 4-tensor model). The functional
`torch.optim.adam.adam` and `torch.optim.sgd.sgd` are what those classes call, with the same
arguments (`fused=True` where the device has a kernel), so every update is theirs bit for bit
(`tests/test_optim.py` trains both side by side), and the state dict has torch's layout, so a
checkpoint taken with `torch.optim` loads here.

Only what scalesweep's specs can ask for: SGD without momentum, Adam and AdamW (Kingma & Ba
2015; Loshchilov & Hutter 2019) with torch's defaults betas = (0.9, 0.999), eps = 1e-8.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim.adam import adam
from torch.optim.sgd import sgd

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults
FUSED_DEVICES = {"cpu", "cuda"}
FUSED_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64}

# Called after every step of any optimiser here (as torch's `register_optimizer_step_post_hook`):
# the start-up benchmark marks a worker's first step so, without train.py knowing of it.
STEP_HOOKS: list[Callable[[Optimizer], None]] = []


class Optimizer:
    """`kind` ("sgd", "adam" or "adamw") over parameter groups, each {"params", "lr", "weight_decay"}."""

    def __init__(self, groups: list[dict[str, Any]], kind: str):
        if kind not in ("sgd", "adam", "adamw"):
            raise ValueError(f"unknown optimizer {kind!r}; valid: sgd, adam, adamw")
        self.kind = kind
        self.param_groups = [
            {"params": list(g["params"]), "lr": g["lr"], "weight_decay": g["weight_decay"]} for g in groups
        ]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        params = [p for group in self.param_groups for p in group["params"]]
        # one fused kernel per group where the device has one (several times faster for small models)
        self.fused = all(p.device.type in FUSED_DEVICES and p.dtype in FUSED_DTYPES for p in params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(params, [p.grad for p in params], group["lr"], group["weight_decay"])
        for hook in list(STEP_HOOKS):
            hook(self)

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor], lr: float, weight_decay: float) -> None:
        fused = True if self.fused else None  # None: torch picks foreach or the single-tensor loop
        if self.kind == "sgd":
            common = {"momentum": 0.0, "dampening": 0.0, "nesterov": False, "maximize": False}
            sgd(params, grads, [None] * len(params), fused=fused, weight_decay=weight_decay, lr=lr, **common)
            return
        states = [self._adam_state(p) for p in params]
        adam(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            [s["step"] for s in states],
            fused=fused,
            amsgrad=False,
            beta1=BETAS[0],
            beta2=BETAS[1],
            lr=lr,
            weight_decay=weight_decay,
            eps=EPS,
            maximize=False,
            decoupled_weight_decay=self.kind == "adamw",
        )

    def _adam_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """A parameter's moments, made at its first update as torch.optim.Adam makes them (the
        step count on the parameter's device when fused, else a float32 on the CPU)."""
        state = self.state.get(p)
        if state is None:
            step = torch.zeros((), dtype=torch.float32, device=p.device if self.fused else "cpu")
            state = {"step": step, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            self.state[p] = state
        return state

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: each parameter's state by its index over the groups, and the groups
        with their parameters as indices."""
        index: dict[torch.Tensor, int] = {}
        groups = []
        for group in self.param_groups:
            ids = [index.setdefault(p, len(index)) for p in group["params"]]
            groups.append({"lr": group["lr"], "weight_decay": group["weight_decay"], "params": ids})
        state = {index[p]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Put back a `state_dict()` (or `torch.optim`'s, of the same groups); a ValueError when
        its groups are not these."""
        groups = saved["param_groups"]
        sizes = [len(g["params"]) for g in groups]
        if sizes != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(f"the saved optimizer state has groups of {sizes} parameters, not of these")
        for group, kept in zip(self.param_groups, groups, strict=True):
            group["lr"], group["weight_decay"] = kept["lr"], kept["weight_decay"]
            for p, i in zip(group["params"], kept["params"], strict=True):
                if i in saved["state"] and saved["state"][i]:
                    self.state[p] = {name: self._placed(name, value, p) for name, value in saved["state"][i].items()}

    def _placed(self, name: str, value: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if name == "step":
            return value.to(device=p.device if self.fused else "cpu", dtype=torch.float32)
        return value.to(device=p.device, dtype=p.dtype)
