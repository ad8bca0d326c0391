"""The ledger: what the store holds of each run key, and so what to run.

The promise the project rests on (resume by run key: exactly one finished run
per grid point) is decided here, and only here, from a plain list of child-run
records (`ChildRun`: run id, run key, MLflow status, start time). Pure: no
MLflow, no Ray, no pandas; `store.py` reads the records, the driver, `status`,
`report` and `plan`'s time estimate ask the ledger.

The rules:

- A key's **state** is `finished` when it has a FINISHED child, else `running`
  when it has a RUNNING one, else `failed` when it has a FAILED one, else
  `missing` (never run, or only KILLED: interrupted, to run again).
- A key's **current run** is its latest child (by start time) of that state:
  after `run --force` a key has two finished children, and only the later one
  counts; a FAILED child followed by a FINISHED one is finished.
- **What to run**: every planned key, with `force`; else every key without a
  finished child and, unless `rerun_failed`, without a failed one. A RUNNING
  child found by a new driver was left by a dead one (`stale`): the driver ends
  it KILLED, and its key runs again.
- Children whose key is not in the plan (an edited spec's old runs share the
  sweep's name, not its keys) are never counted, shown or read back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scalesweep.plan import RunConfig

STATES = ("finished", "failed", "running", "missing")  # the order `scalesweep status` counts them in
PRECEDENCE = (("FINISHED", "finished"), ("RUNNING", "running"), ("FAILED", "failed"))


@dataclass
class ChildRun:
    """One child run as the store holds it."""

    run_id: str
    run_key: str
    status: str  # MLflow's: FINISHED, FAILED, RUNNING, KILLED, SCHEDULED
    start_time: int = 0  # ms since the epoch; the later of two children of a key is the current one
    checkpoint_step: int | None = None  # the step of the checkpoint it holds, if any


@dataclass(frozen=True)
class KeyState:
    state: str  # finished | running | failed | missing
    run_id: str = ""  # the current run: the latest child in that state ("" when missing)


MISSING = KeyState("missing")


class Ledger:
    """A sweep's child runs, grouped by run key, each key's children oldest first."""

    def __init__(self, children: Iterable[ChildRun]):
        self.children = list(children)
        self.by_key: dict[str, list[ChildRun]] = {}
        for child in self.children:
            self.by_key.setdefault(child.run_key, []).append(child)
        for runs in self.by_key.values():
            runs.sort(key=lambda c: c.start_time)  # stable: equal start times keep the store's order

    @classmethod
    def from_table(cls, table: Any) -> Ledger:
        """The ledger of a runs table (columns run_id, run_key, status, start_time)."""
        if len(table) == 0:
            return cls([])
        starts = table["start_time"] if "start_time" in table.columns else [0] * len(table)
        rows = zip(table["run_id"], table["run_key"], table["status"], starts, strict=True)
        return cls(ChildRun(str(i), str(k), str(s), int(t) if t == t and t is not None else 0) for i, k, s, t in rows)

    def state(self, key: str) -> KeyState:
        children = self.by_key.get(key, [])
        for status, state in PRECEDENCE:
            latest = [c for c in children if c.status == status]
            if latest:
                return KeyState(state, latest[-1].run_id)
        return MISSING

    def stale(self) -> list[ChildRun]:
        """Children left RUNNING: a new driver finds them only when the one that ran them died."""
        return [c for c in self.children if c.status == "RUNNING"]

    def resumable(self, key: str) -> ChildRun | None:
        """The attempt whose checkpoint an interrupted key goes on from: the latest KILLED child
        holding one, unless a FAILED or FINISHED child came after it (a run that raised, or a
        forced rerun, starts over). Read after `stale` children were ended KILLED."""
        for child in reversed(self.by_key.get(key, [])):
            if child.status != "KILLED":
                return None
            if child.checkpoint_step is not None:
                return child
        return None

    def with_checkpoints(self, key: str) -> list[ChildRun]:
        """The key's children tagged with a checkpoint."""
        return [c for c in self.by_key.get(key, []) if c.checkpoint_step is not None]

    def may_hold_checkpoints(self, key: str) -> list[ChildRun]:
        """The key's children whose checkpoints go when it finishes: those tagged with one, and
        every KILLED one, whose driver may have died between storing a checkpoint and tagging it
        (`store.Tracker.log_checkpoint` tags last)."""
        return [c for c in self.by_key.get(key, []) if c.checkpoint_step is not None or c.status == "KILLED"]

    def to_run(self, configs: Sequence[RunConfig], *, force: bool = False, rerun_failed: bool = False) -> list:
        """The planned runs to run, in plan order (RUNNING children count as interrupted)."""
        todo = []
        for config in configs:
            statuses = {c.status for c in self.by_key.get(config.run_key, [])}
            if force or not ("FINISHED" in statuses or ("FAILED" in statuses and not rerun_failed)):
                todo.append(config)
        return todo

    def status(self, configs: Sequence[RunConfig]) -> tuple[dict[str, int], list[tuple[str, str, str, str]]]:
        """Counts per state and one row (state, run key, label, current run id) per planned run."""
        counts = dict.fromkeys(STATES, 0)
        rows = []
        for config in configs:
            now = self.state(config.run_key)
            counts[now.state] += 1
            rows.append((now.state, config.run_key, config.label, now.run_id))
        return counts, rows

    def current(self, keys: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
        """(finished, failed): run key -> current run id, for the given (planned) keys; a key that
        finished is never among the failed, whatever failed before."""
        finished, failed = {}, {}
        for key in keys:
            children = self.by_key.get(key, [])
            done = [c for c in children if c.status == "FINISHED"]
            bad = [c for c in children if c.status == "FAILED"]
            if done:
                finished[key] = done[-1].run_id
            elif bad:
                failed[key] = bad[-1].run_id
        return finished, failed

    def outcome(self, configs: Sequence[RunConfig]) -> dict[str, int]:
        """The sweep's outcome (the parent run's metrics): planned keys finished, failed (and not
        finished since), and missing (never run, or interrupted)."""
        keys = {c.run_key for c in configs}
        finished, failed = self.current(keys)
        return {
            "planned": len(keys),
            "finished": len(finished),
            "failed": len(failed),
            "missing": len(keys) - len(finished) - len(failed),
        }
