"""What MLflow tracking costs a sweep: the quickstart with real tracking against none.

Both variants run the same sweep through the same driver, Ray and trainer; the
"untracked" one passes `run_sweep` a writer that writes nothing. They alternate
over repetitions (so drift in machine load hits both), each in a fresh
working directory with a fresh sqlite store. Prints medians and the ratio,
and the driver's own count of seconds spent in MLflow calls.

    python benchmarks/tracking_overhead.py [--reps 3] [--spec sweeps/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import ray
from rich.console import Console

from scalesweep import execute, store
from scalesweep.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ["tracked", "tracked, no curves.png", "untracked"]


class UntrackedTracker(store.Tracker):
    """Records nothing: every MLflow call is skipped; run ids are made up."""

    def __init__(self, client, sweep, experiment, notify=None):
        self.client, self.sweep, self.parent_id = client, sweep, "parent"
        self.seconds = self.figure_seconds = 0.0
        self.ids = itertools.count()

    def _call(self, fn, *args, **kwargs):
        return None

    def child_runs(self):
        return []

    def take_lease(self):  # no store, no second driver to keep out
        return None

    def release_lease(self):
        pass

    def start_child(self, config):
        return f"run-{next(self.ids)}"


def one_sweep(spec_path: Path, variant: str) -> tuple[float, float, float]:
    """(wall seconds, training seconds, tracking seconds) of one sweep on a fresh store.

    The store is created (MLflow's schema migrations, a one-off of a few
    seconds) before the clock starts: that is not a cost of tracking runs."""
    spec = load_spec(spec_path)
    tracking = spec.tracking.model_copy(update={"curves_figure": variant == "tracked"})
    spec = spec.model_copy(update={"tracking": tracking})
    writer = UntrackedTracker if variant == "untracked" else store.Tracker
    with tempfile.TemporaryDirectory() as workdir:
        cwd = os.getcwd()
        os.chdir(workdir)
        store.ensure_experiment(store.client_for(), "warm-up")  # a fresh store, created before timing
        try:
            started = time.perf_counter()
            outcome = execute.run_sweep(spec, console=Console(quiet=True), writer=writer)
            wall = time.perf_counter() - started
        finally:
            os.chdir(cwd)
    return wall, outcome.train_seconds, outcome.tracking_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--spec", type=Path, default=REPO / "sweeps" / "quickstart.yaml")
    args = parser.parse_args()
    execute.cluster.connect()  # one Ray instance for every repetition: its start-up is not tracking
    results: dict[str, list[tuple[float, float, float]]] = {v: [] for v in VARIANTS}
    for rep in range(args.reps):
        for variant in VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]:
            results[variant].append(one_sweep(args.spec.resolve(), variant))
            wall, train, _ = results[variant][-1]
            print(f"rep {rep} {variant}: wall {wall:.1f} s, train {train:.1f} s")
    ray.shutdown()
    base = statistics.median(r[0] for r in results["untracked"])
    print(f"\nspec: {args.spec.name}, {args.reps} repetitions, load average {os.getloadavg()[0]:.2f}")
    print(f"{'variant':24}{'median wall':>12}{'vs untracked':>14}{'MLflow calls':>14}{'share of train':>16}")
    for variant in VARIANTS:
        wall = statistics.median(r[0] for r in results[variant])
        writes = statistics.median(r[2] for r in results[variant])
        train = statistics.median(r[1] for r in results[variant])
        print(f"{variant:24}{wall:>10.1f} s{wall / base:>13.3f}x{writes:>12.1f} s{100 * writes / train:>15.1f}%")


if __name__ == "__main__":
    main()
