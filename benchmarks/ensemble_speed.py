"""Seed ensembles vs one seed after the other: 8 seeds of a width-32 MLP on modular addition.

Both ways run in this process, alternating which goes first over repetitions
(so neither always gets the warm caches), with glibc's malloc keeping freed memory as a
scalesweep worker's does (`worker.keep_freed_memory`: both ways train as in a worker); prints
the median wall time of each and the speed-up.
Usage: python benchmarks/ensemble_speed.py [--reps 5] [--steps 500] [--seeds 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scalesweep.plan import RunConfig
from scalesweep.spec import TrainingSpec
from scalesweep.train import train_ensemble, train_one
from scalesweep.worker import keep_freed_memory


def configs(seeds: int, steps: int, p: int = 59, data_size: int = 1000, batch_size: int = 256) -> list[RunConfig]:
    training = TrainingSpec(
        steps=steps, batch_size=batch_size, optimizer="adamw", lr=1e-2, weight_decay=1.0, eval_every=100
    )
    return [
        RunConfig(
            sweep="bench",
            task="modular_arithmetic",
            task_params={"p": p, "op": "+"},
            family="mlp",
            model_params={"depth": 1, "embed_dim": 16},
            parametrization="sp",
            model_size=32,
            data_size=data_size,
            seed=seed,
            training=training,
            observables=["loss", "accuracy", "fit_steps", "weight_norm", "grad_norm", "loss_spikes"],
        )
        for seed in range(seeds)
    ]


def sequential(runs: list[RunConfig]) -> float:
    started = time.perf_counter()
    for run in runs:
        events = list(train_one(run, torch.device("cpu")))
        assert events[-1]["kind"] == "summary", events[-1]
    return time.perf_counter() - started


def ensemble(runs: list[RunConfig]) -> float:
    started = time.perf_counter()
    events = list(train_ensemble(runs, torch.device("cpu")))
    assert sum(e["kind"] == "summary" for e in events) == len(runs), [e for e in events if e["kind"] == "failed"]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--p", type=int, default=59, help="modulus")
    parser.add_argument("--data-size", type=int, default=1000, help="training pairs")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    keep_freed_memory()
    runs = configs(args.seeds, args.steps, args.p, args.data_size, args.batch_size)
    ensemble(runs[:2])  # warm up both paths once
    sequential(runs[:1])
    times: dict[str, list[float]] = {"sequential": [], "ensemble": []}
    for rep in range(args.reps):
        order = [("sequential", sequential), ("ensemble", ensemble)]
        for name, fn in order if rep % 2 == 0 else order[::-1]:
            times[name].append(fn(runs))
    seq, ens = statistics.median(times["sequential"]), statistics.median(times["ensemble"])
    print(
        f"{args.seeds} seeds x {args.steps} steps, width-32 MLP, addition mod {args.p}, {args.data_size} pairs, "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    print(f"sequential: median {seq:.2f} s  ({', '.join(f'{t:.2f}' for t in times['sequential'])})")
    print(f"ensemble:   median {ens:.2f} s  ({', '.join(f'{t:.2f}' for t in times['ensemble'])})")
    print(f"speed-up:   {seq / ens:.2f}x")


if __name__ == "__main__":
    main()
