"""The store: MLflow, where every run is recorded, and how runs are read back.

The only module that imports MLflow. What it gives the rest: a checked client
(`client_for`; which store a URI means is `uris.py`'s policy), the sweep's
writer (`Tracker`, with patience for a lost server), the child runs as ledger
records (`child_runs`, for `ledger.py`), the runs as a tidy table (`runs_table`:
the analysis gets DataFrames, never MLflow objects or tags), the step series
(`read_metric_histories`) and the `mlflow ui` command line.

Design: **one writer**. Ray workers never talk to MLflow; they stream their
rows back to the driver, and the driver alone writes (batched, with
`log_batch`). So sixteen concurrent runs against the default sqlite store see
no "database is locked", a cluster's workers need no route to the tracking
server, and a run's curves still appear in the UI while it trains.

Layout in MLflow: one experiment per sweep (`scalesweep/<name>`), one parent
run for the sweep (tag `scalesweep.role=parent`), one child run per run key
(`mlflow.parentRunId`, tag `scalesweep.role=child`), with flat params,
`scalesweep.*` tags for the axes, seed, run key and sweep, step series of the
step observables and the run's summaries as single metrics.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from scalesweep import lease
from scalesweep.errors import UserError, first_line, safe_name
from scalesweep.lease import Lease
from scalesweep.ledger import ChildRun
from scalesweep.uris import (
    check_store,
    is_server,
    require_store,
    require_writable,
    resolve_uri,
    server_answers,
    sqlite_path,
)

if TYPE_CHECKING:
    import pandas as pd

    from scalesweep.plan import RunConfig

TAG = "scalesweep"
# MLflow 3's UI opens an experiment by its kind; untagged ones may open on the GenAI view (traces).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI
MAX_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch
RETRY_SECONDS = 5.0
CHECKPOINT_DIR, CHECKPOINT_FILE = "checkpoint", "checkpoint.pt"  # a child run's one checkpoint artifact
CHECKPOINT_TAG = f"{TAG}.checkpoint_step"  # the step of the checkpoint a child run holds
T = TypeVar("T")


class TrackingLost(UserError):
    """The tracking store stayed unreachable longer than the sweep's patience."""


def tracking_patience() -> float:
    """Seconds a sweep waits for an unreachable tracking store (SCALESWEEP_TRACKING_PATIENCE)."""
    raw = os.environ.get("SCALESWEEP_TRACKING_PATIENCE", "300")
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise UserError(f"SCALESWEEP_TRACKING_PATIENCE={raw!r} is not a number of seconds (e.g. 300).") from None


def client_for(uri: str | None = None, *, create: bool = True) -> MlflowClient:
    """An MLflow client on the store, checked first (`check_store`). `create=False` is for
    commands that only read: a sqlite file that does not exist is an error, not a new store."""
    uri = require_store(uri) if not create else resolve_uri(uri)
    if create:
        require_writable(uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no alembic chatter on a new store
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # MLflow logs every failed SQL statement with its traceback before it raises; the Tracker
    # says what failed and waits (a full or failing disk), so the traceback is noise.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # MLflow's own HTTP retries back off for minutes per call, silently; the Tracker
    # retries with a message instead (see TrackingLost), so keep MLflow's short.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # With a tracking server, MLflow writes "View run ... / View experiment ..." to stdout at every
    # set_terminated: two lines per run through the progress display. The UI has the runs.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    check_store(uri)
    # Not mlflow.set_tracking_uri: it exports MLFLOW_TRACKING_URI, which would pin every
    # later default store of this process (and its children) to this one.
    try:
        with _first_open(uri):
            if (path := sqlite_path(uri)) is not None and not path.exists():
                return _new_sqlite_store(uri, path)  # under the lock
            return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except (MlflowException, ImportError) as err:  # e.g. a database driver that is not installed
        raise UserError(f"cannot open the tracking store {uri} ({first_line(err)}).") from None


def _new_sqlite_store(uri: str, path: Path) -> MlflowClient:
    """A client on a new sqlite store. MLflow makes a new store's schema by running its ~60
    migrations (over a second on an idle machine); the empty schema is the same for every store
    of one MLflow version, so the first one made is kept in the user's cache folder
    (`schema_cache`) and later stores start as a copy of it. A copy MLflow refuses (a corrupt
    or mismatched cache: MLflow checks the schema's revision when it opens a store) is removed
    with the cache, and the store is made by MLflow's migrations after all."""
    if _copy_cached_schema(path):
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # MLflow checks the schema's revision
            client.search_experiments(max_results=1)
            return client
        except Exception:
            _forget_engines(uri)  # MLflow keeps one engine per URI: the next client must not reuse it
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                schema_cache().unlink()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_experiments(max_results=1)  # creates the schema
    _keep_schema(path)
    return client


def schema_cache() -> Path:
    """Where the empty sqlite schema of this MLflow version is kept (under XDG_CACHE_HOME, else ~/.cache)."""
    from mlflow.version import VERSION

    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "scalesweep" / f"mlflow-{VERSION}-empty.db"


def _forget_engines(uri: str) -> None:
    """Drop MLflow's cached SQLAlchemy engines of `uri` (tracking and registry stores). MLflow's
    private maps: if they move, the fallback fails in one paragraph and the next run works."""
    with contextlib.suppress(Exception):
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        for owner in (SqlAlchemyStore, RegistryStore):
            engine = owner._engine_map.pop(uri, None)
            if engine is not None:
                engine.dispose()


def _copy_cached_schema(path: Path) -> bool:
    """Make `path` a copy of the cached empty schema (atomically: a reader never sees half a
    file), its Default experiment's artifact folder set as MLflow would set it here; False when
    there is no cache or it cannot be copied (then MLflow makes the store)."""
    import sqlite3

    from mlflow.utils.uri import append_to_uri_path, resolve_uri_if_local

    cache = schema_cache()
    if not cache.is_file():
        return False
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        shutil.copyfile(cache, partial)
        now = int(time.time() * 1000)
        location = append_to_uri_path(resolve_uri_if_local("./mlruns"), "0")  # MLflow's default artifact root
        with contextlib.closing(sqlite3.connect(partial)) as con, con:
            (revisions,) = con.execute("SELECT COUNT(*) FROM alembic_version").fetchone()
            (runs,) = con.execute("SELECT COUNT(*) FROM runs").fetchone()
            if revisions != 1 or runs != 0:
                raise sqlite3.DatabaseError("not an empty MLflow schema")
            con.execute(
                "UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                "WHERE experiment_id = 0",
                (location, now, now),
            )
        os.replace(partial, path)
        return True
    except (OSError, sqlite3.Error, TypeError):
        partial.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            cache.unlink()
        return False


def _keep_schema(path: Path) -> None:
    """Keep a store MLflow has just made (an empty schema) as the cache for the next new store."""
    cache = schema_cache()
    partial = cache.with_name(f".{cache.name}.{os.getpid()}.partial")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, partial)
        os.replace(partial, cache)  # atomic: a driver copying it meanwhile reads the old one or this one
    except OSError:  # a read-only home, a full disk: new stores are made by MLflow, as before
        with contextlib.suppress(OSError):
            partial.unlink()


@contextlib.contextmanager
def _first_open(uri: str) -> Iterator[None]:
    """An exclusive lock on a sqlite store's folder while a client opens it: two drivers started
    together on a new store would both run MLflow's schema migrations, and one fails midway
    ("Online migration expected to match one row")."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # closing releases the lock


DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT}
DISK_MESSAGES = (  # sqlite's words, as MLflow passes them on inside its own exception
    "disk i/o error",
    "database or disk is full",
    "attempt to write a readonly database",
    "unable to open database file",
    "no space left on device",
    "read-only file system",
)


def is_disk_fault(err: BaseException) -> bool:
    """Whether a write failed because of the disk under the store, not because of the call."""
    if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
        return True
    text = str(err).lower()
    return any(message in text for message in DISK_MESSAGES)


class Tracker:
    """The sweep's writer: parent run, child runs, batched metrics."""

    def __init__(self, client: MlflowClient, sweep: str, experiment: str, notify: Callable[[str], None] | None = None):
        self.client = client
        self.sweep = sweep
        self.notify = notify or (lambda message: print(message, file=sys.stderr))
        self.patience = tracking_patience()
        self.seconds = 0.0  # time spent in MLflow calls: the tracking overhead
        self.figure_seconds = 0.0  # of which drawing and storing curves.png
        self.experiment_id = self._call(ensure_experiment, client, experiment)
        self.parent_id = self._call(self._ensure_parent)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call MLflow, waiting out an unreachable store for `patience` seconds."""
        started, deadline = time.perf_counter(), None
        while True:
            try:
                result = fn(*args, **kwargs)
                self.seconds += time.perf_counter() - started
                return result
            except Exception as err:
                if not self._transient(err):
                    raise
                now = time.monotonic()
                deadline = deadline or now + self.patience
                disk = is_disk_fault(err)
                state = "cannot be written" if disk else "is unreachable"
                if now >= deadline:
                    fix = "free or remount the disk" if disk else "bring the store back"
                    raise TrackingLost(
                        f"the MLflow tracking store {self.client.tracking_uri} {state} "
                        f"({first_line(err)}{'; is its disk full or read-only?' if disk else ''}) and stayed so for "
                        f"{self.patience:g} s, so the sweep stopped. Finished runs are recorded; {fix} and run "
                        f"the same command again: finished runs are skipped and the interrupted ones run again "
                        f"(SCALESWEEP_TRACKING_PATIENCE sets the wait)."
                    ) from None
                self.notify(
                    f"MLflow at {self.client.tracking_uri} {state} ({first_line(err)}); "
                    f"retrying for {deadline - now:.0f} s more"
                )
                time.sleep(min(RETRY_SECONDS, max(0.1, deadline - now)))

    def _transient(self, err: Exception) -> bool:
        """A lost server, a locked sqlite file or a disk that takes no writes (full, read-only,
        failing) is worth waiting for; anything else is a bug to show."""
        uri = self.client.tracking_uri
        if "database is locked" in str(err) or is_disk_fault(err):
            return True
        return is_server(uri) and not server_answers(uri, timeout=2.0)

    def _ensure_parent(self) -> str:
        """The sweep's one parent run: the oldest, when drivers that started together each made one
        (the others delete theirs), so that every driver reads and leases the same record."""
        if parents := self._parents():
            return parents[0].info.run_id
        made = self.client.create_run(
            self.experiment_id,
            run_name=f"sweep {self.sweep}",
            tags={f"{TAG}.role": "parent", f"{TAG}.sweep": self.sweep},
        )
        oldest = self._parents()[0].info.run_id
        if oldest != made.info.run_id:
            self.client.delete_run(made.info.run_id)
        return oldest

    def _parents(self) -> list[Any]:
        return parent_runs(self.client, self.sweep, self.experiment_id)

    # --- the lease: one driver per sweep (see `scalesweep.lease`)

    def take_lease(self) -> Lease:
        """Take the sweep's lease and keep it alive with a heartbeat thread, or raise
        `SweepBusy` naming the driver that holds it. Taken before anything is selected to run.
        On a sqlite store an OS lock beside the file decides at once (`lease.StoreLock`);
        elsewhere, write, settle and read back."""
        path = sqlite_path(self.client.tracking_uri)
        self._store_lock = lease.StoreLock(path, self.sweep) if path is not None else None
        locked = self._store_lock.acquire() if self._store_lock is not None else None
        try:
            mine = self._claim(locked)
        except BaseException:
            self._drop_store_lock()
            raise
        self._lease, self._beating = mine, threading.Event()
        threading.Thread(target=self._beat, args=(self._beating,), name="scalesweep-lease", daemon=True).start()
        return mine

    def _claim(self, locked: bool | None) -> Lease:
        """Write this driver's lease, or raise `SweepBusy`. `locked`: the store's OS lock is
        this driver's (True), another driver's (False), or says nothing (None)."""
        held = Lease.from_tags(self._parent_tags())
        if locked is False:  # the lease's tags may still be a killed driver's: the lock is the news
            raise lease.busy(self.sweep, held if held is not None and held.alive() else None, self._store_lock.path)
        if held is not None and held.alive():
            raise lease.busy(self.sweep, held)
        mine = Lease.mine()
        self._call(self.client.log_batch, self.parent_id, tags=_run_tags(mine.tags()))
        if locked:
            return mine  # no other driver can be writing: the OS lock is this one's
        lease.settle()
        held = Lease.from_tags(self._parent_tags())
        if held is None or held.token != mine.token:
            raise lease.busy(self.sweep, held or mine)
        return mine

    def _drop_store_lock(self) -> None:
        if getattr(self, "_store_lock", None) is not None:
            self._store_lock.release()

    def release_lease(self) -> None:
        """Hand the lease back (if it is still this driver's). Never raises: it runs while an
        error may be on its way out, and a lease that cannot be handed back expires anyway."""
        mine, self._lease = getattr(self, "_lease", None), None
        if mine is None:
            return
        self._beating.set()
        with contextlib.suppress(Exception):
            held = Lease.from_tags(self._parent_tags())
            if held is not None and held.token == mine.token:
                self.client.log_batch(self.parent_id, tags=_run_tags(lease.RELEASED))
        self._drop_store_lock()  # after the tags: the next driver reads them handed back

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(lease.HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):  # a lost store is the driver's to report, not the heartbeat's
                self.client.set_tag(self.parent_id, f"{lease.PREFIX}.heartbeat", f"{time.time():.3f}")

    def _parent_tags(self) -> dict[str, str]:
        return self._call(self.client.get_run, self.parent_id).data.tags

    def log_spec(
        self, spec_yaml: str, n_runs: int, params: dict[str, Any] | None = None, description: str = ""
    ) -> None:
        """The resolved spec, the sweep's axes and counts (params) and its description (the run's
        note in the UI). MLflow params cannot change: a value that changed since the parent run
        was made (e.g. `n_runs` after `scalesweep refine`) is kept current as a tag instead."""
        self._call(self.client.log_text, self.parent_id, spec_yaml, "spec.yaml")
        tags = [RunTag(f"{TAG}.n_runs", str(n_runs))]
        if description:
            tags.append(RunTag(NOTE_TAG, description))
        known = self._call(self.client.get_run, self.parent_id).data.params
        new = []
        for key, value in (params or {}).items():
            value = _short_value(value)
            if key not in known:
                new.append(Param(key, value))
            elif known[key] != value:
                tags.append(RunTag(f"{TAG}.now.{key}", value))
        self._call(self.client.log_batch, self.parent_id, params=new, tags=tags)

    def log_outcome(self, counts: dict[str, int], timestamp_ms: int) -> None:
        """The sweep's outcome as parent-run metrics (runs planned, finished, failed, missing)."""
        metrics = [Metric(f"runs_{state}", float(n), timestamp_ms, 0) for state, n in counts.items()]
        self._call(self.client.log_batch, self.parent_id, metrics=metrics)

    def not_started(self, reason: str) -> None:
        """A driver that stops before running anything (the cluster refused it) leaves no RUNNING
        parent behind: MLflow creates the parent RUNNING, so end it FAILED with why. (A parent
        that had ended before keeps its status.) Never raises over the error being reported."""
        with contextlib.suppress(Exception):
            if self.client.get_run(self.parent_id).info.status == "RUNNING":
                self.client.set_tag(self.parent_id, f"{TAG}.error", reason[:4000])
                self.client.set_terminated(self.parent_id, "FAILED")

    def sweep_started(self) -> None:
        """Show the parent run as RUNNING while a driver works on the sweep."""
        self._call(self.client.update_run, self.parent_id, status="RUNNING")

    def sweep_ended(self, status: str, train_seconds: float) -> None:
        """End the parent run; record how much the tracking cost."""
        tags = [RunTag(f"{TAG}.tracking_seconds", f"{self.seconds:.2f}")]
        tags.append(RunTag(f"{TAG}.figure_seconds", f"{self.figure_seconds:.2f}"))
        tags.append(RunTag(f"{TAG}.train_seconds", f"{train_seconds:.2f}"))
        self._call(self.client.log_batch, self.parent_id, tags=tags)
        self._call(self.client.set_terminated, self.parent_id, status)

    def child_runs(self) -> list[ChildRun]:
        """Every child run of this sweep, paginated (a sweep may hold many thousands)."""
        return self._call(child_runs, self.client, self.sweep, self.experiment_id)

    def start_child(self, config: RunConfig) -> str:
        tags = {
            "mlflow.parentRunId": self.parent_id,
            f"{TAG}.role": "child",
            f"{TAG}.sweep": self.sweep,
            f"{TAG}.run_key": config.run_key,
            f"{TAG}.ensemble_key": config.ensemble_key,
        }
        tags.update({f"{TAG}.{k}": str(v) for k, v in config.axes_row().items()})
        run = self._call(self.client.create_run, self.experiment_id, run_name=config.label, tags=tags)
        params = [Param(k, _short_value(v)) for k, v in flat_params(config).items()]
        self._call(self.client.log_batch, run.info.run_id, params=params)
        return run.info.run_id

    def log_rows(self, run_id: str, rows: list[dict[str, float]], timestamp_ms: int) -> None:
        self._log_metrics(run_id, _row_metrics(rows, timestamp_ms))

    def _log_metrics(self, run_id: str, metrics: list[Metric]) -> None:
        for start in range(0, len(metrics), MAX_BATCH):
            self._call(self.client.log_batch, run_id, metrics=metrics[start : start + MAX_BATCH])

    def finish(
        self,
        run_id: str,
        summary: dict[str, float],
        final_step: int,
        timestamp_ms: int,
        rows: list[dict[str, float]] = (),
        figure: Any = None,
    ) -> None:
        """Record the last rows with the summaries (one write), the curves figure, then mark the
        run FINISHED: last, so that a driver killed in between leaves it RUNNING to be run again."""
        summary_metrics = [Metric(k, float(v), timestamp_ms, final_step) for k, v in summary.items()]
        self._log_metrics(run_id, _row_metrics(rows, timestamp_ms) + summary_metrics)
        if figure is not None:
            before = self.seconds
            self._call(self.client.log_figure, run_id, figure, "curves.png")
            self.figure_seconds += self.seconds - before
        self._call(self.client.set_terminated, run_id, "FINISHED")

    def log_report(self, out_dir: Path, names: tuple[str, ...] = ("report.html", "verdicts.csv", "runs.csv")) -> None:
        """Log what a report wrote (not whatever else its folder holds) to the parent run, under report/."""
        for name in names:
            if (out_dir / name).is_file():
                self._call(self.client.log_artifact, self.parent_id, str(out_dir / name), artifact_path="report")
        if (out_dir / "figures").is_dir():
            self._call(self.client.log_artifacts, self.parent_id, str(out_dir / "figures"), "report/figures")

    def fail(self, run_id: str, error: str, traceback_text: str) -> None:
        self._call(self.client.log_batch, run_id, tags=[RunTag(f"{TAG}.error", error[:4000])])
        self._call(self.client.log_text, run_id, traceback_text, "traceback.txt")
        self._call(self.client.set_terminated, run_id, "FAILED")

    def abandon(self, run_id: str, reason: str) -> None:
        """End a run that will not finish (driver gone, retried elsewhere)."""
        self._call(self.client.set_tag, run_id, f"{TAG}.abandoned", reason[:500])
        self._call(self.client.set_terminated, run_id, "KILLED")

    # --- checkpoints: one per run, the artifact checkpoint/checkpoint.pt, its step a tag

    def log_checkpoint(self, run_id: str, data: bytes, step: int) -> None:
        """Store a run's checkpoint (replacing the one before), then tag its step: last, so that a
        tag never names a checkpoint that is not there. The caller wrote the rows up to `step`."""
        with tempfile.TemporaryDirectory(prefix="scalesweep-ckpt-") as folder:
            path = Path(folder) / CHECKPOINT_FILE
            path.write_bytes(data)
            self._call(self.client.log_artifact, run_id, str(path), artifact_path=CHECKPOINT_DIR)
        self._call(self.client.set_tag, run_id, CHECKPOINT_TAG, str(step))

    def tag_resumed(self, run_id: str, step: int) -> None:
        """Say on an attempt that it went on from a checkpoint at `step` (its rows before are copies)."""
        self._call(self.client.set_tag, run_id, f"{TAG}.resumed_from", str(step))

    def read_checkpoint(self, run_id: str) -> bytes | None:
        """A run's checkpoint, or None when it has none that can be read (then its run starts over)."""
        with tempfile.TemporaryDirectory(prefix="scalesweep-ckpt-") as folder:
            try:
                path = self._call(self.client.download_artifacts, run_id, f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE}", folder)
                return Path(path).read_bytes() if path else None
            except TrackingLost:
                raise
            except Exception:  # not there (deleted, or a driver died mid-upload): start over
                return None

    def delete_checkpoint(self, run_id: str) -> None:
        """Delete a run's checkpoint and its tag (its key finished), or the untagged file a killed
        driver may have left (none: nothing to do). An artifact store that cannot delete leaves
        the file, said once; the tag goes, so the checkpoint is never used again."""
        tagged = True
        try:
            run = self._call(self.client.get_run, run_id)
            tagged = CHECKPOINT_TAG in run.data.tags
            self._call(_delete_artifacts, self.client, run.info.artifact_uri, CHECKPOINT_DIR)
        except TrackingLost:
            raise
        except Exception as err:
            self.notify(f"could not delete the checkpoint of run {run_id} ({first_line(err)}); it stays")
        if tagged:
            self._call(self.client.delete_tag, run_id, CHECKPOINT_TAG)


def _delete_artifacts(client: MlflowClient, artifact_uri: str, path: str) -> None:
    """Delete a run's artifacts under `path`, if any (MLflow's client has no call for it; its
    artifact repositories do: local folders, mlflow-artifacts servers, S3, ...)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(artifact_uri, tracking_uri=client.tracking_uri).delete_artifacts(path)


def _run_tags(tags: dict[str, str]) -> list[RunTag]:
    return [RunTag(key, value) for key, value in tags.items()]


def _row_metrics(rows: list[dict[str, float]], timestamp_ms: int) -> list[Metric]:
    return [
        Metric(name, float(value), timestamp_ms, int(row["step"]))
        for row in rows
        for name, value in row.items()
        if name != "step"
    ]


SERIES_CHUNK = 5000  # run ids per SQL query: a sweep of up to this many runs is read in one query


def read_metric_histories(client: MlflowClient, run_ids: list[str], keys: list[str] | None = None) -> list[tuple]:
    """Every logged point (run_id, metric, step, value) of `run_ids`, for `keys` or all metrics.

    A SQL store (sqlite, postgres) is read with one SELECT over MLflow's metrics table per
    `SERIES_CHUNK` runs, not one request per run and metric; a tracking server has no bulk
    read in MLflow's client API, so there it is one request per run and metric."""
    if reads_in_bulk(client):
        return _sql_histories(client._tracking_client.store, run_ids, keys)
    rows: list[tuple] = []
    for run_id in run_ids:
        for key in keys if keys is not None else list(client.get_run(run_id).data.metrics):
            rows += [(run_id, key, int(m.step), float(m.value)) for m in client.get_metric_history(run_id, key)]
    return rows


def read_step_series(client: MlflowClient, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
    """The step series `keys` of `run_ids` as a wide table (run_id, step, one column per key), the
    form `analysis.series` evaluates step functions on; read by `read_metric_histories` (one query
    per sweep on a SQL store). A summary logged under the same key at the last step is one more
    point of its series."""
    import pandas as pd

    if not keys:
        return pd.DataFrame(columns=["run_id", "step"])
    rows = read_metric_histories(client, run_ids, keys)
    long = pd.DataFrame(rows, columns=["run_id", "metric", "step", "value"])
    long = long.drop_duplicates(["run_id", "metric", "step"], keep="last")
    wide = long.pivot(index=["run_id", "step"], columns="metric", values="value").reset_index()
    wide.columns.name = None
    return wide.reindex(columns=["run_id", "step", *keys])


def reads_in_bulk(client: MlflowClient) -> bool:
    """Whether the client's store is a SQL store, which `read_metric_histories` reads in one query."""
    return hasattr(getattr(getattr(client, "_tracking_client", None), "store", None), "ManagedSessionMaker")


def _sql_histories(store: Any, run_ids: list[str], keys: list[str] | None) -> list[tuple]:
    from mlflow.store.tracking.dbmodels.models import SqlMetric

    rows: list[tuple] = []
    columns = (SqlMetric.run_uuid, SqlMetric.key, SqlMetric.step, SqlMetric.value, SqlMetric.is_nan)
    with store.ManagedSessionMaker() as session:
        for start in range(0, len(run_ids), SERIES_CHUNK):
            query = session.query(*columns).filter(SqlMetric.run_uuid.in_(run_ids[start : start + SERIES_CHUNK]))
            if keys is not None:
                query = query.filter(SqlMetric.key.in_(keys))
            rows += [(r, k, int(step), float("nan") if nan else float(v)) for r, k, step, v, nan in query.all()]
    return rows


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The sweep's experiment (created, or restored if deleted), tagged as a training experiment."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        if EXPERIMENT_KIND[0] not in experiment.tags:  # made before this tag, or by hand: a user's kind stays
            client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
        return experiment.experiment_id
    location = None
    if not client.tracking_uri.startswith(("http://", "https://", "databricks")):
        location = (Path("mlartifacts").resolve() / safe_name(name)).as_uri()
    return client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))


def child_runs(client: MlflowClient, sweep: str, experiment_id: str | None) -> list[ChildRun]:
    """A sweep's child runs as ledger records, paginated; read-only: no experiment, no children.
    (`experiment_id` of None: the sweep's experiment is looked up by name, see `experiment_named`.)"""
    if experiment_id is None:
        return []
    runs = search_all(client, experiment_id, child_query(sweep))
    return [
        ChildRun(
            r.info.run_id,
            r.data.tags.get(f"{TAG}.run_key", ""),
            r.info.status,
            r.info.start_time or 0,
            _int_or_none(r.data.tags.get(CHECKPOINT_TAG)),
        )
        for r in runs
    ]


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def parent_runs(client: MlflowClient, sweep: str, experiment_id: str | None) -> list[Any]:
    """The sweep's parent runs, oldest first (the one its drivers use: `Tracker._ensure_parent`)."""
    if experiment_id is None:
        return []
    query = f"tags.`{TAG}.role` = 'parent' and tags.`{TAG}.sweep` = '{_quote(sweep)}'"
    found = client.search_runs([experiment_id], query)
    return sorted(found, key=lambda run: (run.info.start_time or 0, run.info.run_id))


def live_lease(client: MlflowClient, sweep: str, experiment_id: str | None) -> Lease | None:
    """The lease of the driver running the sweep now, if one is (for `status`)."""
    parents = parent_runs(client, sweep, experiment_id)
    held = Lease.from_tags(parents[0].data.tags) if parents else None
    return held if held is not None and held.alive() else None


def experiment_named(client: MlflowClient, name: str) -> str | None:
    """The id of an existing experiment, or None (never creates one)."""
    found = client.get_experiment_by_name(name)
    return None if found is None else found.experiment_id


def child_query(sweep: str) -> str:
    """The MLflow filter that selects a sweep's child runs."""
    return f"tags.`{TAG}.role` = 'child' and tags.`{TAG}.sweep` = '{_quote(sweep)}'"


def search_all(client: MlflowClient, experiment_id: str, query: str) -> list[Any]:
    """All runs matching `query`, following MLflow's page tokens."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], query, max_results=5000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def sweep_params(spec: Any, configs: list[RunConfig]) -> dict[str, Any]:
    """The parent run's params: what the sweep varies (its axes and grid, as lists) and how many
    of each, so that the runs table shows a sweep's shape next to its children."""
    params: dict[str, Any] = {"task": spec.task.name, "family": spec.model.family, "design": spec.design.kind}
    params["axes.model_size"] = sorted({c.model_size for c in configs})
    if spec.design.kind == "isoflop":
        params["design.budgets"] = list(spec.design.budgets)
    else:
        params["axes.data_size"] = sorted({c.data_size for c in configs})
    params["axes.seeds"] = spec.axes.seed_list
    params.update({f"grid.{path}": values for path, values in spec.grid.items()})
    params["n_model_sizes"] = len(params["axes.model_size"])
    if "axes.data_size" in params:
        params["n_data_sizes"] = len(params["axes.data_size"])
    params["n_seeds"] = len(spec.axes.seed_list)
    params["n_runs"] = len(configs)
    return params


def flat_params(config: RunConfig) -> dict[str, Any]:
    """Short flat params: task.p, model.depth, lr, weight_decay, ..."""
    params = {"task": config.task, "family": config.family, "parametrization": config.parametrization}
    params.update({f"task.{k}": v for k, v in config.task_params.items()})
    params.update({f"model.{k}": v for k, v in config.model_params.items()})
    params.update(config.training.model_dump(exclude_none=True))
    params.update({"model_size": config.model_size, "data_size": config.data_size, "seed": config.seed})
    return params


def _short_value(value: Any) -> str:
    return str(value)[:500]


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


# ---------------------------------------------------------------- the runs table

RUN_TAGS_LEFT_OUT = ("role", "sweep", "ensemble_key", "error", "checkpoint_step", "resumed_from")  # no columns


def runs_table(
    sweep: str, experiment: str, tracking_uri: str | None = None, finished_only: bool = True
) -> pd.DataFrame:
    """Child runs of a sweep as a tidy table, one row per run: axes and grid values (from the
    `scalesweep.*` tags, as numbers where they are), every metric's latest value, status, ids,
    name and start time. One paginated search; reading never creates a store."""
    import pandas as pd

    client = client_for(tracking_uri, create=False)
    experiment_id = experiment_named(client, experiment)
    if experiment_id is None:
        raise UserError(
            f'no MLflow experiment "{experiment}" at {client.tracking_uri}: has the sweep run? '
            f"Run `scalesweep run SPEC` first, or pass the --tracking-uri it was recorded to."
        )
    table = pd.DataFrame([_row(run) for run in search_all(client, experiment_id, child_query(sweep))])
    if table.empty:
        return table
    if finished_only:
        table = table[table["status"] == "FINISHED"]
    # MLflow returns runs newest first, i.e. in the order a sweep's runs happened to start; a
    # bootstrap over the rows would then differ between two sweeps that trained the same runs.
    order = [c for c in ("run_key", "start_time") if c in table.columns]
    return table.sort_values(order, kind="stable").reset_index(drop=True)


def _row(run: Any) -> dict[str, Any]:
    tags = run.data.tags
    prefix = f"{TAG}."
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "status": run.info.status,
        "run_name": tags.get("mlflow.runName", ""),
        "start_time": run.info.start_time,
    }
    for name, value in tags.items():
        key = name.removeprefix(prefix)
        if name.startswith(prefix) and key not in RUN_TAGS_LEFT_OUT:
            row[key] = value if key == "run_key" else _number(value)  # a hex key may look like 12e4...
    row.update(run.data.metrics)
    return row


def _number(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


# ---------------------------------------------------------------- the UI


# MLflow 3's server also starts a job runner for its GenAI jobs (scorers, trace rollups): seven
# `huey_consumer` processes beside the web server; 28 s of CPU until the server answers, 7 s
# without them (2 cores, MLflow 3.x; benchmarks/RESULTS.md). Nothing of scalesweep's is such a job.
SERVER_ENVIRONMENT = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_environment() -> dict[str, str]:
    """The environment of an MLflow server that scalesweep starts (`SERVER_ENVIRONMENT`); a
    user's own setting of those variables wins."""
    return {**SERVER_ENVIRONMENT, **os.environ}


def ui_command(uri: str, host: str, port: int) -> list[str]:
    """The `mlflow ui` command line that `scalesweep ui` runs: always with an explicit --host, and
    one server process. MLflow's default is four uvicorn workers under a supervisor that kills a
    worker which misses its 5 s health check; on a busy 2-core machine the four, importing MLflow
    at once, missed it and were killed in a loop, so the UI never answered. One person's UI needs
    one process (and starts in a quarter of the CPU)."""
    mlflow_bin = shutil.which("mlflow")
    launcher = [mlflow_bin] if mlflow_bin else [sys.executable, "-m", "mlflow"]
    return [*launcher, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", "1"]
