"""Start-up: from `python -m scalesweep run spec.yaml` to the first training step, as a user waits.

Each repetition is a fresh process in a fresh temporary working directory (so a new sqlite
MLflow store) with no RAY_ADDRESS (a local Ray instance, started by the command, unless a
local one is already recorded as running). The command is the real CLI; it is told only to
append timestamps to a file (SCALESWEEP_STARTUP_TRACE, `scalesweep/startup.py`): one line
per phase end in the driver and in each Ray worker, and a worker's first optimiser step
(a global torch post-step hook, removed after its first call). Phases are printed as the
seconds since the command was started (the clock starts just before the process is
spawned) at which each phase ended, and their lengths; phases overlap where the driver
runs them side by side. Medians of --reps repetitions, with the load average of each.

    python benchmarks/startup.py [--reps 5] [--steps 30] [--runs compare|one]

`--runs compare` (default): compare.py's grid (48 runs, 12 seed ensembles, 2 Ray workers);
`--runs one`: a single seed ensemble (one worker). The sweep trains only --steps steps, so a
repetition ends soon after its first step; the wall time to exit is printed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import QUICK, Grid, scalesweep_spec  # noqa: E402

# (label, the mark that starts it or None for the command's start, the mark that ends it)
PHASES = [
    ("python + CLI imports", None, "cli_imported"),
    ("spec read and checked", "cli_imported", "spec_loaded"),
    ("driver imports (execute: mlflow, ray, torch)", "spec_loaded", "driver_imported"),
    ("plan", "driver_imported", "planned"),
    ("store opened (new sqlite)", "store_start", "store_opened"),
    ("lease taken (OS lock; a server: +1.5 s settle)", "store_opened", "lease_taken"),
    ("ray.init (local instance)", "ray_start", "ray_ready"),
    ("first worker: process start -> its imports begin", "worker_process", "worker_begin"),
    ("first worker: imports (torch, scalesweep.train)", "worker_begin", "worker_imported"),
    ("first task submitted", None, "submitted"),
    ("first task: start -> first optimiser step", "task_started", "first_step"),
]
TOTAL = "first_step"


def read_marks(path: Path) -> dict[str, float]:
    """The first time of each mark (over all processes)."""
    marks: dict[str, float] = {}
    if not path.exists():
        return marks
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            name, at = parts[0], float(parts[1])
            marks[name] = min(at, marks.get(name, at))
    if "worker_begin" not in marks and "task_started" in marks:  # no warm-up: the task imports
        marks["worker_begin"] = marks["task_started"]
    if "store_start" not in marks and "planned" in marks:  # the store opened right after the plan
        marks["store_start"] = marks["planned"]
    return marks


def one(spec: dict, env_extra: dict[str, str]) -> tuple[dict[str, float], float, float]:
    """One fresh command: (marks relative to its start, wall seconds to exit, load at the end)."""
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as workdir:
        spec_path, trace = Path(workdir) / "spec.yaml", Path(workdir) / "trace.txt"
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **env_extra}
        env["SCALESWEEP_STARTUP_TRACE"] = str(trace)
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("RAY_ADDRESS", None)
        command = [sys.executable, "-m", "scalesweep", "run", str(spec_path)]
        with open(Path(workdir) / "log.txt", "w+") as log:
            started = time.time()
            code = subprocess.call(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
            wall = time.time() - started
            log.seek(0)
            output = log.read()
        if code != 0:
            raise RuntimeError(f"scalesweep run exited with {code}:\n{output[-3000:]}")
        marks = {name: at - started for name, at in read_marks(trace).items()}
        return marks, wall, os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--runs", choices=["compare", "one"], default="compare")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the command (repeatable)")
    args = parser.parse_args()
    grid = Grid(steps=args.steps) if args.runs == "compare" else Grid(**{**QUICK.__dict__, "steps": args.steps})
    spec = scalesweep_spec(grid)
    env_extra = dict(item.split("=", 1) for item in args.env)
    print(f"{grid.n_runs} runs, {args.steps} steps; {args.reps} repetitions; load before {os.getloadavg()[0]:.2f}")
    results = []
    for rep in range(args.reps):
        marks, wall, load = one(spec, env_extra)
        results.append((marks, wall, load))
        total = marks.get(TOTAL, float("nan"))
        print(f"rep {rep + 1}: first step at {total:5.2f} s, exit at {wall:5.1f} s, load {load:.2f}", flush=True)
    print(f"\nmedians over {args.reps} repetitions (s since the command started; load after {os.getloadavg()[0]:.2f})")
    print(f"{'phase':<52}{'ends at':>9}{'length':>9}")
    for label, begin, end in PHASES:
        ends = [m[end] for m, _, _ in results if end in m]
        if not ends:
            continue
        lengths = [
            m[end] - (m[begin] if begin else 0.0) for m, _, _ in results if end in m and (not begin or begin in m)
        ]
        length = f"{statistics.median(lengths):9.2f}" if lengths else f"{'':>9}"
        print(f"{label:<52}{statistics.median(ends):9.2f}{length}")
    totals = [m[TOTAL] for m, _, _ in results if TOTAL in m]
    print(f"{'TOTAL: command start -> first training step':<52}{statistics.median(totals):9.2f}")
    print(f"{'(command start -> exit)':<52}{statistics.median(w for _, w, _ in results):9.2f}")
    print(f"loads: {', '.join(f'{load:.2f}' for _, _, load in results)}")


if __name__ == "__main__":
    main()
