"""Start-up marks: when each phase of `scalesweep run` ended, for benchmarks/startup.py.

Set SCALESWEEP_STARTUP_TRACE to a file and the driver and its workers append one line per
mark to it ("name unix-seconds pid"); unset (the default), `mark` is one dictionary lookup.
A worker also marks its first optimiser step (a hook of `scalesweep.optim` that removes itself),
so the benchmark sees the first training step without train.py knowing of it. Stdlib only:
the driver imports it before anything heavy.
"""

from __future__ import annotations

import os
import time

TRACE_ENV = "SCALESWEEP_STARTUP_TRACE"


def mark(name: str, at: float | None = None) -> None:
    """Append `name` and the time (now, or `at`) to the trace file, if one is set."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    line = f"{name} {time.time() if at is None else at:.6f} {os.getpid()}\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:  # a benchmark's aid: never a reason to fail a sweep
        pass


def mark_process_start() -> None:
    """Mark when this process started (a worker: Ray may have started it long before its task), when tracing."""
    if os.environ.get(TRACE_ENV):
        mark("worker_process", process_started())


def process_started() -> float | None:
    """When this process started (unix seconds), from /proc; None where there is no /proc."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def mark_first_step() -> None:
    """Mark this worker's first optimiser step (once), when tracing."""
    if not os.environ.get(TRACE_ENV):
        return
    from scalesweep.optim import STEP_HOOKS

    def hook(optimizer) -> None:
        mark("first_step")
        STEP_HOOKS.remove(hook)

    STEP_HOOKS.append(hook)
