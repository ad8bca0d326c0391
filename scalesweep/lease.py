"""One driver per sweep: a lease on the sweep's parent run.

Two drivers on one sweep would both see the same keys as missing and train
every one of them twice. So a driver takes the sweep's lease before it
selects what to run, keeps it alive with a heartbeat while it runs, and hands
it back when it ends. The lease is four tags on the parent run (the one record
every driver of the sweep reads): who holds it (host and PID), a token unique
to that driver, since when, and the last heartbeat.

A lease is held while its heartbeat is younger than `TTL_SECONDS` and, when
the holder ran on this host, while its PID is alive: a driver killed with
SIGKILL leaves a lease that a rerun on the same machine takes over at once,
and one on another machine after `TTL_SECONDS`. Taking it is write, wait
`SETTLE_SECONDS`, read back: of two drivers that start together, the later
write wins and the other sees a token that is not its own. The store reads
and writes the tags (`store.Tracker.take_lease`).

On a sqlite store the drivers share a file, and the file system can say at once who was
first: an exclusive `flock` on a lock file beside the store (`StoreLock`), held while the
driver runs and dropped by the kernel however it ends. A driver that holds it needs no settle
(1.5 s of every start), and one that does not get it is told at once. Where no lock file can be
made (a read-only folder), the settle decides, as on a tracking server.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from scalesweep.errors import UserError

PREFIX = "scalesweep.lease"
TTL_SECONDS = 45.0  # a heartbeat older than this: the holder is gone
HEARTBEAT_SECONDS = 10.0
SETTLE_SECONDS = 1.5  # between writing a lease and reading it back


def settle() -> None:
    """The wait between writing a lease and reading it back: a driver that started with this one
    writes now, or has written (not needed where an OS lock decided, `StoreLock`)."""
    time.sleep(SETTLE_SECONDS)


@dataclass(frozen=True)
class Lease:
    host: str
    pid: int
    token: str
    since: float  # unix seconds
    heartbeat: float

    @classmethod
    def mine(cls, now: float | None = None) -> Lease:
        now = time.time() if now is None else now
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex, now, now)

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Lease | None:
        """The lease the tags hold; None when there is none, it was handed back, or it is unreadable."""
        try:
            lease = cls(
                tags[f"{PREFIX}.host"],
                int(tags[f"{PREFIX}.pid"]),
                tags[f"{PREFIX}.token"],
                float(tags[f"{PREFIX}.since"]),
                float(tags[f"{PREFIX}.heartbeat"]),
            )
        except (KeyError, ValueError):
            return None
        return lease if lease.token else None

    def tags(self) -> dict[str, str]:
        return {
            f"{PREFIX}.host": self.host,
            f"{PREFIX}.pid": str(self.pid),
            f"{PREFIX}.token": self.token,
            f"{PREFIX}.since": f"{self.since:.3f}",
            f"{PREFIX}.heartbeat": f"{self.heartbeat:.3f}",
        }

    def beat(self, now: float | None = None) -> Lease:
        return Lease(self.host, self.pid, self.token, self.since, time.time() if now is None else now)

    def alive(self, now: float | None = None) -> bool:
        """Whether the holder still holds it: a fresh heartbeat and, on this host, a live PID."""
        now = time.time() if now is None else now
        if now - self.heartbeat > TTL_SECONDS:
            return False
        return self.host != socket.gethostname() or pid_alive(self.pid)

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        since = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"host {self.host}, PID {self.pid}, since {since} (last heartbeat {now - self.heartbeat:.0f} s ago)"


RELEASED = {f"{PREFIX}.token": ""}  # the tags that hand a lease back


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this host (signal 0 checks, it sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class SweepBusy(UserError):
    """Another driver holds the sweep's lease."""


def busy(sweep: str, holder: Lease | None, lock: Path | None = None) -> SweepBusy:
    """The refusal, naming the holder; `holder` None: a driver of this machine holds the store's
    `lock` file but has not written its lease yet."""
    who = holder.describe() if holder is not None else f"a driver on this machine, which holds {lock}"
    return SweepBusy(
        f'sweep "{sweep}" is already being run by another driver: {who}. Two drivers '
        f"would train every missing run twice, so this one did not start. Wait for that driver to "
        f"finish (`scalesweep status SPEC` shows its progress), or stop it; if it was killed, its "
        f"lease expires {TTL_SECONDS:g} s after its last heartbeat (at once on the same host)."
    )


LOCK_FOLDER = ".scalesweep-leases"  # beside the sqlite file: one lock file per (store, sweep)


class StoreLock:
    """An exclusive `flock` for one sweep on a sqlite store, held until `release` (or the process
    ends, however it ends: the kernel drops it). flock, not sqlite's own fcntl locks: those belong
    to the process and would let two drivers of one process (a notebook's, the tests') both pass."""

    def __init__(self, store_file: Path, sweep: str):
        digest = hashlib.sha256(f"{store_file.name}\0{sweep}".encode()).hexdigest()[:16]
        self.path = store_file.parent / LOCK_FOLDER / f"{digest}.lock"
        self.fd: int | None = None

    def acquire(self) -> bool | None:
        """True: held now; False: another driver holds it; None: no lock file can be made here
        (a read-only or full folder), so the lock says nothing and the settle decides."""
        try:
            self.path.parent.mkdir(exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:  # a file system without flock
            os.close(fd)
            return None
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the lock
            self.fd = None
