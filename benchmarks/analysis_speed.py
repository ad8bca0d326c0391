"""How fast the analysis layer is on a large study: 10,000 runs.

Two timings, each the median over repetitions, as wall and as CPU seconds
(single-threaded work: on an idle machine the two agree; on a shared one the
CPU seconds are the figure that does not depend on the neighbours):

- classify: `classify_runs` on a synthetic runs table of 10,000 runs (25 widths
  x 25 data sizes x 16 seeds) for 5 catalog phenomena, along both axes
  (goal: at most 10 s);
- load: `store.runs_table` (what `scalesweep report` reads) on an MLflow sqlite
  store holding 10,000 finished child runs of one sweep (goal: at most 30 s);
- csv: the whole `scalesweep classify TABLE.csv` command, as a user runs it, on a
  published-table-style CSV of 500 rows in 9 slices (one value per model; goal:
  at most 2 s wall), against the classification alone inside it.

The store's schema and one template run are written by MLflow itself; the
other 9,999 runs are copies of the template's rows with their own ids, tags
and metric values, inserted with plain SQL, because creating 10,000 runs
through MLflow's API takes minutes, and that is not what is measured.

    python benchmarks/analysis_speed.py [--reps 3] [--runs 10000]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from scalesweep.analysis.classify import classify_runs
from scalesweep.analysis.phenomena import load_phenomenon

PHENOMENA = ["generalization_gap", "test_loss", "grokking", "loss_spikes", "dead_units"]
SWEEP, EXPERIMENT = "bench", "scalesweep/bench"
SERIES = ["train_loss", "test_loss", "train_acc", "test_acc"]


def synthetic_runs(n_runs: int, seed: int = 0) -> pd.DataFrame:
    """A runs table like a sweep's, with trends along both axes and seed noise."""
    side = max(2, round((n_runs / 16) ** 0.5))
    widths = np.unique(np.geomspace(16, 4096, side).round().astype(int))
    sizes = np.unique(np.geomspace(100, 100_000, side).round().astype(int))
    seeds = int(np.ceil(n_runs / (len(widths) * len(sizes))))
    grid = pd.MultiIndex.from_product([widths, sizes, range(seeds)], names=["model_size", "data_size", "seed"])
    runs = grid.to_frame(index=False).iloc[:n_runs]
    rng = np.random.default_rng(seed)
    u, v = np.log10(runs["model_size"]), np.log10(runs["data_size"])
    noise = lambda scale: rng.normal(0, scale, len(runs))  # noqa: E731
    train_acc = np.clip(0.6 + 0.1 * u + noise(0.03), 0, 1)
    runs["final_train_acc"] = train_acc
    runs["final_test_acc"] = np.clip(train_acc - 0.4 + 0.1 * v + noise(0.03), 0, 1)
    runs["final_test_loss"] = np.exp(1.5 - 0.3 * u - 0.2 * v + noise(0.05))
    fit_train = 100 * 10 ** (1 - 0.2 * u + noise(0.1))
    fit_test = fit_train * 10 ** np.clip(1.5 - 0.3 * v + noise(0.1), 0, None)
    fit_test[rng.random(len(runs)) < 0.1] = np.nan  # some runs never generalise
    runs["steps_to_fit_train"], runs["steps_to_fit_test"] = fit_train, fit_test
    runs["grokking_delay"] = np.log10(fit_test / fit_train)
    runs["loss_spikes"] = rng.poisson(np.clip(0.2 * u, 0.05, None))
    runs["dead_fraction"] = np.clip(0.2 - 0.05 * u + noise(0.02), 0, 1)
    return runs


def time_classify(runs: pd.DataFrame) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, number of verdicts)."""
    phenomena = [load_phenomenon(name) for name in PHENOMENA]
    started, cpu = time.perf_counter(), time.process_time()
    verdicts = classify_runs(runs, phenomena, ["model_size", "data_size"], [])
    return time.perf_counter() - started, time.process_time() - cpu, len(verdicts)


# ---------------------------------------------------------------- a store of 10,000 runs


def make_store(runs: pd.DataFrame, workdir: Path) -> str:
    """An MLflow sqlite store holding `runs` as finished child runs of one sweep."""
    # MLflow is imported here, not at the top: the classifier's worker processes start by
    # importing this module (multiprocessing's spawn), and a real CLI's are as light.
    from mlflow.entities import Metric, Param, RunTag

    from scalesweep import store

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = store.client_for(uri)
    experiment_id = store.ensure_experiment(client, EXPERIMENT)
    parent = client.create_run(experiment_id, tags={f"{store.TAG}.role": "parent", f"{store.TAG}.sweep": SWEEP})
    template = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent.info.run_id})
    client.log_batch(
        template.info.run_id,
        params=[Param("lr", "0.01")],
        tags=[RunTag(f"{store.TAG}.role", "child")],
        metrics=[Metric("final_test_acc", 0.0, 0, 0)],
    )
    client.set_terminated(template.info.run_id, "FINISHED")
    with sqlite3.connect(workdir / "mlflow.db") as db:
        _clone(db, template.info.run_id, parent.info.run_id, runs)
    return uri


def _clone(db: sqlite3.Connection, template: str, parent: str, runs: pd.DataFrame) -> None:
    """Copy the template run once per row of `runs`, with that row's tags and metrics."""
    from scalesweep import store

    ids = [uuid.uuid4().hex for _ in range(len(runs))]
    names = [name for (name,) in db.execute("SELECT name FROM pragma_table_info('runs')")]
    select = ", ".join("?" if n in ("run_uuid", "name") else n for n in names)
    db.executemany(
        f"INSERT INTO runs ({', '.join(names)}) SELECT {select} FROM runs WHERE run_uuid = ?",
        [(run_id, f"run {i}", template) for i, run_id in enumerate(ids)],
    )
    metric_names = [c for c in runs.columns if c not in ("model_size", "data_size", "seed")]
    tags, params, latest, history = [], [], [], []
    for run_id, row in zip(ids, runs.itertuples(index=False), strict=True):
        values = row._asdict()
        key = f"w{values['model_size']}-n{values['data_size']}-s{values['seed']}"
        tags += [
            ("mlflow.parentRunId", parent, run_id),
            (f"{store.TAG}.role", "child", run_id),
            (f"{store.TAG}.sweep", SWEEP, run_id),
            (f"{store.TAG}.run_key", key, run_id),
            *[(f"{store.TAG}.{axis}", str(values[axis]), run_id) for axis in ("model_size", "data_size", "seed")],
        ]
        params += [(name, str(values[name]), run_id) for name in ("model_size", "data_size", "seed")]
        for name in metric_names:
            value = float(values[name])
            is_nan = int(np.isnan(value))
            latest.append((name, 0.0 if is_nan else value, 0, 300, is_nan, run_id))
        history += [(s, 1.0 / (1 + step), 0, run_id, step, 0) for s in SERIES for step in range(0, 301, 25)]
    db.executemany('INSERT INTO tags ("key", value, run_uuid) VALUES (?, ?, ?)', tags)
    db.executemany('INSERT INTO params ("key", value, run_uuid) VALUES (?, ?, ?)', params)
    db.executemany(
        'INSERT INTO latest_metrics ("key", value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?)',
        latest,
    )
    db.executemany(
        'INSERT INTO metrics ("key", value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, ?)', history
    )


def time_load(uri: str, expected: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of reading the sweep's runs table."""
    from scalesweep.store import runs_table

    started, cpu = time.perf_counter(), time.process_time()
    table = runs_table(SWEEP, EXPERIMENT, uri)
    seconds = time.perf_counter() - started
    if len(table) != expected:  # the template run has no sweep tag: it is not loaded
        raise RuntimeError(f"loaded {len(table)} runs, expected {expected}")
    return seconds, time.process_time() - cpu


# ---------------------------------------------------------------- the CSV command


def csv_table(rows: int = 500, slices: int = 9, seed: int = 0) -> pd.DataFrame:
    """A published-table-style CSV: `slices` tasks, one value per model at irregular scales."""
    rng = np.random.default_rng(seed)
    per = rows // slices
    parts = []
    for task in range(slices):
        u = np.sort(rng.uniform(-1, 3, per))
        score = np.clip(0.25 + 0.7 / (1 + np.exp(-(u - 1 - 0.2 * task) / 0.3)) + rng.normal(0, 0.03, per), 0, 1)
        parts.append(pd.DataFrame({"task": f"task{task}", "flops": 10**u, "score": score}))
    return pd.concat(parts, ignore_index=True)


def time_csv_command(workdir: Path) -> tuple[float, float]:
    """(wall seconds of the whole command, seconds of the classification alone)."""
    table = csv_table()
    path = workdir / "table.csv"
    table.to_csv(path, index=False)
    command = [sys.executable, "-m", "scalesweep", "classify", str(path), "--axis", "flops", "--value", "score"]
    command += ["--group", "task", "--presence", "0.3", "--out", str(workdir / "out")]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - started
    from scalesweep.analysis.phenomena import Phenomenon

    ph = Phenomenon(name="score", strength="score", presence=0.3, min_effect=0.05)
    started = time.perf_counter()
    classify_runs(table, [ph], ["flops"], ["task"], seed=None)
    return wall, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()
    runs = synthetic_runs(args.runs)
    print(f"{len(runs)} runs x {len(PHENOMENA)} phenomena; load average {os.getloadavg()[0]:.2f}", flush=True)
    classify_times = []
    for _ in range(args.reps):
        seconds, cpu, n_verdicts = time_classify(runs)
        classify_times.append((seconds, cpu))
        print(f"classify: {seconds:.1f} s wall, {cpu:.1f} s CPU ({n_verdicts} verdicts)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as workdir:
        started = time.perf_counter()
        uri = make_store(runs, Path(workdir))
        print(f"store of {len(runs)} runs written in {time.perf_counter() - started:.1f} s", flush=True)
        load_times = []
        for _ in range(args.reps):
            load_times.append(time_load(uri, len(runs)))
            print(f"load: {load_times[-1][0]:.1f} s wall, {load_times[-1][1]:.1f} s CPU", flush=True)
        csv_times = []
        for _ in range(args.reps):
            csv_times.append(time_csv_command(Path(workdir)))
            print(f"csv command: {csv_times[-1][0]:.2f} s wall, of which classification {csv_times[-1][1]:.2f} s")
    print(f"\nmedians over {args.reps}; load average after: {os.getloadavg()[0]:.2f}")
    print(f"{'':44}{'wall s':>8}{'CPU s':>8}  goal")
    for what, times, goal in (
        (f"classify {len(runs)} runs x {len(PHENOMENA)} phenomena", classify_times, 10),
        (f"load {len(runs)} runs from MLflow sqlite", load_times, 30),
    ):
        wall, cpu = statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)
        print(f"{what:<44}{wall:>8.1f}{cpu:>8.1f}  <= {goal} s")
    wall, inner = statistics.median(t[0] for t in csv_times), statistics.median(t[1] for t in csv_times)
    print(
        f"{'scalesweep classify: 500-row CSV, 9 slices':<44}{wall:>8.2f}{'':>8}  <= 2 s "
        f"(classification alone {inner:.2f} s: {wall / inner:.1f}x of it is start-up and report)"
    )


if __name__ == "__main__":
    main()
