"""scalesweep against a plain PyTorch loop and against Ray Tune, on the same grid, side by side.

The grid (modular addition mod 31, an MLP of 3 widths x 4 training-set sizes
x 4 seeds, 300 AdamW steps, evaluation every 25 steps) is run three ways:

- plain:      one run after the other in one Python process, logged the way a
              researcher would (`mlflow.start_run`, `log_metrics` per evaluation),
              with one torch thread (its fastest setting for models this small);
- ray-tune:   `Tuner` over `tune.grid_search`, a function trainable doing the same
              training with `tune.report` per evaluation, `MLflowLoggerCallback`;
- scalesweep: `python -m scalesweep run spec.yaml`, the real CLI.

All three build data and model with the zoo's own builders (same seeds, so
the same data and the same initial weights) and log the same four step series
(train/test loss and accuracy) to a fresh sqlite MLflow store in a fresh
temporary working directory. Each method is its own process, timed from start
(imports, Ray start-up and the store's creation included: what a user waits
for) to exit; peak memory is the largest sum of RSS over its process tree.
Their order rotates over repetitions, so load drifting on a shared machine
hits every method alike. Printed: medians of wall time, runs per minute,
per-run overhead (wall minus the pure training time of the plain loop, per
run) and peak memory, and scalesweep's wall-time ratios.

    python benchmarks/compare.py [--reps 3] [--quick] [--gpu] [--steps 2000] [--methods plain,scalesweep]

`--quick` is a smoke test (1 width x 1 size x 2 seeds, 30 steps, 1 repetition). `--steps`
trains every run that many steps (2000: the steady state, where start-up matters less);
`--methods` runs only some methods (ray-tune alone takes about 8 minutes on 2 cores).
`--gpu` runs the GPU section instead: many small runs packed on one GPU with
fractional `resources.gpus_per_run` against one run at a time (skipped, with a
message, where no CUDA GPU is visible).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

METHODS = ["plain", "ray-tune", "scalesweep"]
METRICS = ["train_loss", "test_loss", "train_acc", "test_acc"]
P = 31  # modulus: 961 pairs


@dataclass
class Grid:
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    data_sizes: list[int] = field(default_factory=lambda: [100, 200, 400, 800])
    seeds: int = 4
    steps: int = 300
    eval_every: int = 25
    batch_size: int = 512
    lr: float = 0.01
    weight_decay: float = 1.0

    @property
    def n_runs(self) -> int:
        return len(self.widths) * len(self.data_sizes) * self.seeds

    def points(self) -> list[tuple[int, int, int]]:
        return [(w, n, s) for w in self.widths for n in self.data_sizes for s in range(self.seeds)]


QUICK = Grid(widths=[32], data_sizes=[200], seeds=2, steps=30)


# ---------------------------------------------------------------- one run, the plain way (methods a and b)


def train_plain(grid: Grid, width: int, data_size: int, seed: int, log: Callable[[int, dict], None]) -> float:
    """Train one run with the zoo's data and model; `log(step, metrics)` at each evaluation.

    Returns the seconds spent training and evaluating, the logging calls left out."""
    import torch

    from scalesweep.zoo import FAMILIES, TASKS
    from scalesweep.zoo.data import loss_fn_for

    started, logging = time.perf_counter(), 0.0
    task, family = TASKS["modular_arithmetic"], FAMILIES["mlp"]
    data = task.make(task.params_model(p=P, op="+"), data_size, seed)
    torch.manual_seed(seed)  # as scalesweep.train.build: same seed, same initial weights
    model = family.build(family.params_model(depth=1, embed_dim=16), width, data.shape, "sp")
    loss_fn = loss_fn_for(data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=grid.lr, weight_decay=grid.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    for step in range(grid.steps + 1):
        if step % grid.eval_every == 0 or step == grid.steps:
            metrics = _evaluate(model, data, loss_fn)
            before = time.perf_counter()
            log(step, metrics)
            logging += time.perf_counter() - before
        if step == grid.steps:
            break
        x, y = data.x_train, data.y_train
        if grid.batch_size < len(x):
            idx = torch.randint(len(x), (grid.batch_size,), generator=generator)
            x, y = x[idx], y[idx]
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    return time.perf_counter() - started - logging


def _evaluate(model, data, loss_fn) -> dict[str, float]:
    import torch

    with torch.no_grad():
        train_out, test_out = model(data.x_train), model(data.x_test)
        return {
            "train_loss": float(loss_fn(train_out, data.y_train)),
            "test_loss": float(loss_fn(test_out, data.y_test)),
            "train_acc": float((train_out.argmax(-1) == data.y_train).float().mean()),
            "test_acc": float((test_out.argmax(-1) == data.y_test).float().mean()),
        }


def _params(grid: Grid, width: int, data_size: int, seed: int) -> dict:
    return {"model_size": width, "data_size": data_size, "seed": seed, "p": P, "lr": grid.lr, "steps": grid.steps}


def method_plain(grid: Grid) -> float:
    """(a) One run after the other, one MLflow run each. Returns the pure training seconds."""
    import mlflow
    import torch

    # One intra-op thread, as Ray gives each of its workers: for models this small a
    # second thread only adds synchronisation, and on a busy machine it made the default
    # (2 threads) about 9x slower. So the baseline here is the plain loop at its best.
    torch.set_num_threads(1)
    mlflow.set_tracking_uri("sqlite:///" + str(Path("mlflow.db").resolve()))
    mlflow.set_experiment("bench-plain")
    pure = 0.0
    for width, data_size, seed in grid.points():
        with mlflow.start_run(run_name=f"w={width} n={data_size} seed={seed}"):
            mlflow.log_params(_params(grid, width, data_size, seed))
            seconds = train_plain(grid, width, data_size, seed, lambda step, m: mlflow.log_metrics(m, step=step))
            mlflow.log_metric("train_seconds", seconds)
            pure += seconds
    return pure


def _tune_trainable(config: dict) -> None:
    from ray import tune

    grid = Grid(**config["grid"])
    seconds = train_plain(grid, config["model_size"], config["data_size"], config["seed"], lambda s, m: tune.report(m))
    tune.report({"train_seconds": seconds})


def method_tune(grid: Grid) -> float:
    """(b) Ray Tune: grid_search over the three axes, MLflowLoggerCallback to a sqlite store."""
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")  # as light as scalesweep's
    space = {
        "grid": asdict(grid),
        "model_size": tune.grid_search(grid.widths),
        "data_size": tune.grid_search(grid.data_sizes),
        "seed": tune.grid_search(list(range(grid.seeds))),
    }
    uri = "sqlite:///" + str(Path("mlflow.db").resolve())
    callback = MLflowLoggerCallback(tracking_uri=uri, experiment_name="bench-tune", save_artifact=False)
    run_config = tune.RunConfig(
        name="bench", storage_path=str(Path("ray_results").resolve()), callbacks=[callback], verbose=0
    )
    results = tune.Tuner(_tune_trainable, param_space=space, run_config=run_config).fit()
    errors = [str(r.error) for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} Tune trials failed: {errors[0]}")
    return sum(r.metrics.get("train_seconds", 0.0) for r in results)


def scalesweep_spec(grid: Grid, gpus_per_run: float = 0.0, max_concurrent: int | None = None) -> dict:
    """The same grid as a scalesweep spec: same task, model, training and step series."""
    resources: dict = {"cpus_per_run": 1, "gpus_per_run": gpus_per_run}
    if max_concurrent:
        resources["max_concurrent"] = max_concurrent
    return {
        "name": "bench",
        "task": {"name": "modular_arithmetic", "params": {"p": P, "op": "+"}},
        "model": {"family": "mlp", "params": {"depth": 1, "embed_dim": 16}},
        "axes": {"model_size": grid.widths, "data_size": grid.data_sizes, "seeds": grid.seeds},
        "training": {
            "steps": grid.steps,
            "batch_size": grid.batch_size,
            "optimizer": "adamw",
            "lr": grid.lr,
            "weight_decay": grid.weight_decay,
            "eval_every": grid.eval_every,
        },
        "observables": ["loss", "accuracy"],
        "tracking": {"curves_figure": False},  # the other two draw no figures either
        "resources": resources,
    }


# ---------------------------------------------------------------- timing a method in its own process


@dataclass
class Measurement:
    wall: float
    train: float  # the method's own count of training seconds
    peak_mib: float
    runs_logged: int
    load: float  # 1-minute load average at the end
    breakdown: str = ""  # the processes at the peak of memory


def measure(method: str, grid: Grid, gpus_per_run: float = 0.0, max_concurrent: int | None = None) -> Measurement:
    """Run one method in a fresh temporary working directory (fresh mlflow.db) and time it."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{method}-") as workdir:
        if method == "scalesweep":
            spec = Path(workdir) / "spec.yaml"
            spec.write_text(yaml.safe_dump(scalesweep_spec(grid, gpus_per_run, max_concurrent), sort_keys=False))
            command = [sys.executable, "-m", "scalesweep", "run", str(spec)]
        else:
            command = [sys.executable, __file__, "--method", method, "--grid", json.dumps(asdict(grid))]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("RAY_ADDRESS", None)
        with open(Path(workdir) / "log.txt", "w+") as log:
            started = time.perf_counter()
            process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
            sampler = MemorySampler(process.pid)
            sampler.start()
            code = process.wait()
            wall = time.perf_counter() - started
            sampler.stop()
            log.seek(0)
            output = log.read()
        if code != 0:
            raise RuntimeError(f"{method} exited with {code}:\n{output[-3000:]}")
        db = Path(workdir) / "mlflow.db"
        train = _scalesweep_train_seconds(db) if method == "scalesweep" else _result(output)
        peak = sampler.peak / 2**20
        return Measurement(wall, train, peak, _runs_logged(db), os.getloadavg()[0], sampler.breakdown())


def _result(output: str) -> float:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1].removeprefix("RESULT "))["train_seconds"]


def _scalesweep_train_seconds(db: Path) -> float:
    """The driver's sum of its runs' training time (an ensemble's seeds share one)."""
    with sqlite3.connect(db) as con:
        row = con.execute("SELECT value FROM tags WHERE key = 'scalesweep.train_seconds'").fetchone()
    return float(row[0]) if row else math.nan


def _runs_logged(db: Path) -> int:
    """Runs with a test_acc series in the store: every method must log every run."""
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(DISTINCT run_uuid) FROM metrics WHERE key = 'test_acc'").fetchone()[0]


class MemorySampler(threading.Thread):
    """Peak of the summed RSS of a process and all its descendants (Ray workers included), from /proc."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self.at_peak: list[tuple[int, str]] = []
        self.done = threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def run(self) -> None:
        while not self.done.wait(self.interval):
            processes = self.tree()
            total = sum(rss for rss, _ in processes)
            if total > self.peak:
                self.peak, self.at_peak = total, processes

    def tree_rss(self) -> int:
        return sum(rss for rss, _ in self.tree())

    def breakdown(self) -> str:
        """The processes at the peak, largest first: 'MiB name' lines."""
        rows = sorted(self.at_peak, reverse=True)
        return "\n".join(f"{rss / 2**20:7.0f} MiB  {name}" for rss, name in rows)

    def stop(self) -> None:
        self.done.set()
        self.join()

    def tree(self) -> list[tuple[int, str]]:
        """(RSS bytes, name) of the process and each of its descendants."""
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                ppid = _ppid(int(entry))
                if ppid is not None:
                    children.setdefault(ppid, []).append(int(entry))
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append((_rss_pages(pid) * self.page, _name(pid)))
            todo.extend(children.get(pid, []))
        return found


def _name(pid: int) -> str:
    """A short name for a process: Ray's own title (ray::IDLE, ray::train_task), else its command."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = [w.decode(errors="replace") for w in f.read().split(b"\0") if w]
    except OSError:
        return "?"
    if not words:
        return "?"
    if words[0].startswith("ray::") or len(words) == 1:
        return words[0].rsplit("/", 1)[-1][:60]
    script = next((w for w in words[1:] if not w.startswith("-")), "")
    return f"{words[0].rsplit('/', 1)[-1]} {script.rsplit('/', 1)[-1]}"[:60]


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _rss_pages(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


# ---------------------------------------------------------------- the comparison


def compare(grid: Grid, reps: int, methods: list[str] = METHODS, memory: bool = False) -> dict[str, list[Measurement]]:
    """Every method `reps` times, the order rotating by one each repetition."""
    results: dict[str, list[Measurement]] = {m: [] for m in methods}
    for rep in range(reps):
        shift = rep % len(methods)
        for method in methods[shift:] + methods[:shift]:
            m = measure(method, grid)
            results[method].append(m)
            print(
                f"rep {rep + 1}/{reps} {method:>10}: wall {m.wall:6.1f} s, training {m.train:6.1f} s, "
                f"peak {m.peak_mib:6.0f} MiB, {m.runs_logged} runs logged, load {m.load:.2f}",
                flush=True,
            )
            if memory:
                print(m.breakdown, flush=True)
    return results


def table(grid: Grid, results: dict[str, list[Measurement]]) -> str:
    """Medians per method, and scalesweep's wall time as a share of the others'."""
    med = {
        m: {k: statistics.median(getattr(r, k) for r in rs) for k in ("wall", "train", "peak_mib")}
        for m, rs in results.items()
    }
    pure = med["plain"]["train"] if "plain" in med else math.nan  # the work every method has, without overhead
    n = grid.n_runs
    lines = [
        f"{'method':<12}{'wall s':>9}{'runs/min':>10}{'overhead s/run':>16}{'own train s':>13}{'peak MiB':>10}",
    ]
    for method in results:
        wall = med[method]["wall"]
        lines.append(
            f"{method:<12}{wall:>9.1f}{60 * n / wall:>10.1f}{(wall - pure) / n:>16.2f}"
            f"{med[method]['train']:>13.1f}{med[method]['peak_mib']:>10.0f}"
        )
    if "scalesweep" not in med:
        return "\n".join(lines)
    ours = med["scalesweep"]["wall"]
    for other, goal in (("plain", 0.25 if grid.steps >= 2000 else 0.6), ("ray-tune", 0.5)):
        if other not in med:
            continue
        ratio = ours / med[other]["wall"]
        verdict = "met" if ratio <= goal else "MISSED"
        lines.append(f"scalesweep / {other}: {ratio:.2f}x wall (goal <= {goal}x: {verdict})")
    lines.append(f"pure training time (plain loop, logging excluded): {pure:.1f} s for {n} runs")
    return "\n".join(lines)


# ---------------------------------------------------------------- GPU: packed small runs vs one at a time


# 12 seed ensembles of 8 seeds (96 runs); packed at 1/16 GPU each, all 12 are on the GPU at once: 96 runs in flight.
GPU_GRID = Grid(widths=[64, 128, 256, 512], data_sizes=[200, 400, 800], seeds=8, steps=1000)
GPU_ONE_RUN = Grid(widths=GPU_GRID.widths, data_sizes=GPU_GRID.data_sizes, seeds=1, steps=GPU_GRID.steps)
PACKED_SHARE = 1 / 16


def gpu_section(reps: int) -> None:
    """scalesweep on one GPU: many runs packed on it (fractional gpus_per_run, seed ensembles) against
    one seed ensemble at a time and one run at a time (a whole GPU each); runs per minute, GPU use."""
    try:
        import torch

        visible = torch.cuda.is_available() and shutil.which("nvidia-smi") is not None
    except ImportError:
        visible = False
    if not visible:
        print("GPU section skipped: no CUDA GPU is visible here (torch.cuda.is_available() is False or no nvidia-smi).")
        return
    in_flight = min(len(GPU_GRID.widths) * len(GPU_GRID.data_sizes), int(1 / PACKED_SHARE), os.cpu_count() or 1)
    variants = {
        f"packed ({in_flight * GPU_GRID.seeds} runs in flight)": (GPU_GRID, PACKED_SHARE),
        f"one ensemble of {GPU_GRID.seeds} at a time": (GPU_GRID, 1.0),
        "one run at a time": (GPU_ONE_RUN, 1.0),
    }
    print(f"GPU section: {torch.cuda.get_device_name(0)}, {GPU_GRID.steps} steps a run")
    rates = {}
    for name, (grid, gpus) in variants.items():
        walls, utils = [], []
        for _ in range(reps):
            sampler = GpuSampler()
            sampler.start()
            walls.append(measure("scalesweep", grid, gpus_per_run=gpus).wall)
            utils.append(sampler.stop())
        wall = statistics.median(walls)
        rates[name] = 60 * grid.n_runs / wall
        mean_util = statistics.median(u[0] for u in utils)
        print(
            f"{name:<32} {grid.n_runs:3d} runs  wall {wall:7.1f} s  {rates[name]:7.1f} runs/min  "
            f"GPU util mean {mean_util:5.1f}%  max {max(u[1] for u in utils):5.1f}%"
        )
    packed, alone = next(iter(rates.values())), rates["one run at a time"]
    print(f"throughput, packed / one run at a time: {packed / alone:.1f}x (goal: >= 10x with >= 64 runs in flight)")


class GpuSampler(threading.Thread):
    """GPU 0's utilisation (%) from nvidia-smi, twice a second; stop() returns (mean, max)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "--id=0"]
        while not self.done.wait(0.5):
            out = subprocess.run(query, capture_output=True, text=True).stdout.strip()
            if out.replace(".", "").isdigit():
                self.samples.append(float(out))

    def stop(self) -> tuple[float, float]:
        self.done.set()
        self.join()
        return (statistics.mean(self.samples), max(self.samples)) if self.samples else (math.nan, math.nan)


# ---------------------------------------------------------------- entry point


def machine() -> str:
    model = "unknown CPU"
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    return f"{model}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 runs of 30 steps, 1 repetition")
    parser.add_argument("--gpu", action="store_true", help="the GPU section: packed fractional runs vs one at a time")
    parser.add_argument("--steps", type=int, help="training steps per run (default 300; 2000: the steady state)")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated, of {','.join(METHODS)} (ray-tune takes ~8 min)"
    )
    parser.add_argument("--memory", action="store_true", help="print each method's processes at its peak of memory")
    parser.add_argument("--method", choices=["plain", "ray-tune"], help=argparse.SUPPRESS)  # one method, in-process
    parser.add_argument("--grid", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        grid = Grid(**json.loads(args.grid))
        seconds = (method_plain if args.method == "plain" else method_tune)(grid)
        print("RESULT " + json.dumps({"train_seconds": seconds}), flush=True)
        return
    if args.gpu:
        gpu_section(args.reps)
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: {', '.join(unknown) or 'none given'}; choose from {', '.join(METHODS)}")
    grid, reps = (QUICK, 1) if args.quick else (Grid(), args.reps)
    if args.steps is not None:
        grid = Grid(**{**asdict(grid), "steps": args.steps})
    print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.2f}")
    print(
        f"grid: {len(grid.widths)} widths x {len(grid.data_sizes)} data sizes x {grid.seeds} seeds = {grid.n_runs} "
        f"runs, {grid.steps} steps, eval every {grid.eval_every}; {reps} repetition(s), order rotating",
        flush=True,
    )
    results = compare(grid, reps, methods, memory=args.memory)
    print(f"\nmedians over {reps} repetition(s); load average after: {os.getloadavg()[0]:.2f}")
    print(table(grid, results))


if __name__ == "__main__":
    main()
