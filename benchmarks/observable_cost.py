"""What each observable costs, as a share of a quickstart-sized run's training time.

The run is the quickstart's largest grid point (modular addition mod 31, MLP of
depth 1 with a 16-dim embedding, width 128, 800 training pairs, 2000 AdamW
steps of batch 512, an evaluation every 25 steps: 81 evaluations). Its
training time is measured with only `loss` and `accuracy` (the evaluation's
forward passes belong to the trainer, whatever the observables). Each
observable's parts are then timed on the same model and data, as the trainer
calls them: its step part once per evaluation (x 81), its summary part and its
at-init part once. Median of `--reps` calls per part.

    python benchmarks/observable_cost.py [--family mlp|transformer] [--width 128] [--steps 2000] [--reps 5] [--values]

`--family transformer` times the same task with a 2-layer, 4-head transformer
(d_model = width), where the attention observables apply. `--values` prints
instead what the new observables measure on a memorising (200 pairs) and a
grokking (800 pairs) run of that MLP (the table in docs/observables.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

from scalesweep import observables as obs
from scalesweep.plan import RunConfig
from scalesweep.spec import DEFAULT_OBSERVABLES, TrainingSpec
from scalesweep.train import build, train_to_result
from scalesweep.zoo.data import loss_fn_for

MODEL_PARAMS = {"mlp": {"depth": 1, "embed_dim": 16}, "transformer": {"n_layers": 2, "n_heads": 4}}


def config(family: str, width: int, steps: int, observables: list[str]) -> RunConfig:
    return RunConfig(
        sweep="observable_cost",
        task="modular_arithmetic",
        task_params={"p": 31, "op": "+"},
        family=family,
        model_params=MODEL_PARAMS[family],
        parametrization="sp",
        model_size=width,
        data_size=800,
        seed=0,
        training=TrainingSpec(steps=steps, batch_size=512, optimizer="adamw", lr=0.01, weight_decay=1.0, eval_every=25),
        observables=observables,
    )


def median_seconds(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


VALUES = ["loss", "accuracy", "fit_steps", "anisotropy", "rankme", "effective_rank", "weight_spectrum"]
VALUES += ["weight_displacement", "fourier_sparsity", "neural_collapse", "memorization"]


def show_values(width: int, steps: int) -> None:
    """The new observables on a memorising and a grokking run (seed 0)."""
    columns = ["anisotropy", "rankme", "effective_rank", "weight_alpha", "stable_rank", "weight_displacement"]
    columns += ["nc1", "memorization_bits", "memorization_bits_per_param", "fourier_key_frequencies"]
    for data_size in (200, 800):
        run = config("mlp", width, steps, VALUES).model_copy(update={"data_size": data_size})
        history, summary = train_to_result(run)
        print(
            f"{data_size} pairs: final test acc {summary['final_test_acc']:.2f}, fitted at "
            f"{summary['steps_to_fit_test']}; fourier_sparsity every 10th eval: "
            f"{' '.join(f'{v:.2f}' for v in history['fourier_sparsity'].iloc[::10])}"
        )
        print("   ", ", ".join(f"{c} {summary[c]:.3g}" for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=sorted(MODEL_PARAMS), default="mlp")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--values", action="store_true", help="print what the new observables measure instead")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one Ray task per CPU, as a sweep runs them
    if args.values:
        show_values(args.width, args.steps)
        return

    base = config(args.family, args.width, args.steps, ["loss", "accuracy"])
    train_seconds = []
    for _ in range(2):
        history, summary = train_to_result(base)
        train_seconds.append(summary["train_seconds"])
    train_s = min(train_seconds)
    n_evals = len(history)

    model, data = build(base, torch.device("cpu"))
    loss_fn = loss_fn_for(data)
    with torch.no_grad():
        model.eval()
        train_out, test_out = model(data.x_train), model(data.x_test)
    init_stats: dict = {}
    for observable in obs.OBSERVABLES.values():
        if observable.at_init is not None:
            init_stats.update(observable.at_init(model, data))
    eval_ctx = obs.EvalContext(args.steps, model, data, train_out, test_out, loss_fn, 1.0, init_stats)
    run_ctx = obs.RunContext(model, data, args.steps, 0.9, init_stats)

    rows = []
    for name, observable in obs.OBSERVABLES.items():
        if obs.does_not_apply(name, "modular_arithmetic", args.family):
            continue
        step_s = summary_s = init_s = 0.0
        if observable.step is not None:
            with torch.no_grad():
                step_s = median_seconds(lambda o=observable: o.step(eval_ctx), args.reps) * n_evals
        if observable.summary is not None:
            summary_s = median_seconds(lambda o=observable: o.summary(history, run_ctx), args.reps)
        if observable.at_init is not None:
            with torch.no_grad():
                init_s = median_seconds(lambda o=observable: o.at_init(model, data), args.reps)
        total = step_s + summary_s + init_s
        rows.append(
            {
                "observable": name,
                "level": observable.level,
                "default": name in DEFAULT_OBSERVABLES,
                "step_s": step_s,
                "summary_s": summary_s,
                "init_s": init_s,
                "total_s": total,
                "share_%": 100 * total / train_s,
            }
        )
    table = pd.DataFrame(rows)
    defaults = table[table["default"]]
    print(
        f"{args.family} width {args.width}, {args.steps} steps, {n_evals} evaluations: training "
        f"{train_s:.2f} s (with loss + accuracy; min of 2)"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(
        f"default observables: {defaults['total_s'].sum():.3f} s = {defaults['share_%'].sum():.2f}% of training "
        f"({', '.join(defaults['observable'])})"
    )


if __name__ == "__main__":
    main()
