"""Vectorised groups by seed only vs by seed, data size, lr and weight decay, on compare.py's grid.

The grid of benchmarks/compare.py (addition mod 31, an MLP of depth 1 and embedding 16 at widths
32/64/128 x training sets of 100/200/400/800 pairs x 4 seeds, 300 AdamW steps, batch 512, lr 0.01,
weight decay 1.0, evaluation every 25 steps) is trained in this process two ways: (a) one seed
ensemble per (width, data size), `plan.group_by_ensemble` (12 groups of 4); (b) one group per
width, `plan.group_by_stack` (3 groups of 16: full batches of 100-400 padded to the 512 rows of
the 800-pair set's minibatches, each member's loss over its own rows). Both alternate which goes
first over repetitions; prints the median (and least) wall and CPU time of each and the speed-up.
Usage: python benchmarks/group_speed.py [--reps 3] [--steps 300] [--threads N] [--grid compare|hyper]
[--waste W] [--activations A]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import yaml

from scalesweep.plan import RunConfig, group_by_ensemble, group_by_stack, plan
from scalesweep.spec import parse_spec
from scalesweep.train import train_ensemble

CPU = torch.device("cpu")


def grid(steps: int = 300, kind: str = "compare") -> list[RunConfig]:
    """compare.py's grid, planned from a spec as `scalesweep run` plans it; `kind` "hyper": its
    widths on 800 pairs (512-row minibatches, so no padding) x lr 0.003/0.01/0.03 x weight decay
    0.1/1.0, the runs that group without padding."""
    spec = {
        "name": "group-bench",
        "task": {"name": "modular_arithmetic", "params": {"p": 31, "op": "+"}},
        "model": {"family": "mlp", "params": {"depth": 1, "embed_dim": 16}},
        "axes": {"model_size": [32, 64, 128], "data_size": [100, 200, 400, 800], "seeds": 4},
        "training": {
            "steps": steps,
            "batch_size": 512,
            "optimizer": "adamw",
            "lr": 0.01,
            "weight_decay": 1.0,
            "eval_every": 25,
        },
        "observables": ["loss", "accuracy"],
    }
    if kind == "hyper":
        spec["axes"]["data_size"] = [800]
        spec["grid"] = {"training.lr": [0.003, 0.01, 0.03], "training.weight_decay": [0.1, 1.0]}
    return plan(parse_spec(yaml.safe_dump(spec)))


def train_groups(groups: list[list[RunConfig]]) -> None:
    for group in groups:
        events = list(train_ensemble(group, CPU))
        assert sum(e["kind"] == "summary" for e in events) == len(group), [e for e in events if e["kind"] == "failed"]


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--waste", type=float, default=None, help="group_by_stack's padding bound")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--grid", choices=["compare", "hyper"], default="compare")
    parser.add_argument("--activations", type=int, default=None, help="group_by_stack's activation bound")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = grid(args.steps, args.grid)
    bounds = {"waste": args.waste, "activations": args.activations}
    stacked = group_by_stack(runs, **{name: value for name, value in bounds.items() if value is not None})
    ways = {"by seed": group_by_ensemble(runs), "by stack": stacked}
    train_groups([g[:2] for g in ways["by stack"][:1]])  # warm up once
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for rep in range(args.reps):
        order = list(ways.items())
        for name, groups in order if rep % 2 == 0 else order[::-1]:
            times[name].append(timed(lambda groups=groups: train_groups(groups)))
    print(f"{len(runs)} runs x {args.steps} steps ({args.grid} grid), {torch.get_num_threads()} threads")
    for name, groups in ways.items():
        walls, cpus = [w for w, _ in times[name]], [c for _, c in times[name]]
        print(
            f"{name:9s} {len(groups):2d} groups: wall median {statistics.median(walls):.2f} s (least "
            f"{min(walls):.2f}; {', '.join(f'{w:.2f}' for w in walls)}), cpu median {statistics.median(cpus):.2f} s"
        )
    seed, stack = times["by seed"], times["by stack"]
    wall = statistics.median(w for w, _ in seed) / statistics.median(w for w, _ in stack)
    cpu = statistics.median(c for _, c in seed) / statistics.median(c for _, c in stack)
    least = min(w for w, _ in seed) / min(w for w, _ in stack)
    print(f"speed-up of grouping by stack: {wall:.2f}x wall (medians), {least:.2f}x (least), {cpu:.2f}x cpu")


if __name__ == "__main__":
    main()
