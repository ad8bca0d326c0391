"""MLflow: where every run is recorded, and how runs are read back.

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
import logging
import os
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from scalesweep.errors import UserError, first_line
from scalesweep.plan import RunConfig

DEFAULT_URI = "sqlite:///mlflow.db"
TAG = "scalesweep"
# MLflow 3's UI opens an experiment by its kind; untagged ones may open on the GenAI view (traces).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI
MAX_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch
RETRY_SECONDS = 5.0
OTHER_STORES = ("postgresql://", "postgresql+", "mysql://", "mysql+", "mssql", "databricks")
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


def resolve_uri(uri: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the sqlite file in the working dir."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Absolute: MLflow caches one store per URI string, so a relative path would
        # keep pointing at the first working directory of a long-lived process.
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def check_store(uri: str) -> None:
    """Fail early, in one paragraph, when the store cannot be used."""
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    elif uri.startswith("sqlite:///"):
        _check_sqlite(Path(uri.removeprefix("sqlite:///")))
    elif not uri.startswith(OTHER_STORES):
        raise UserError(
            f'"{uri}" is not a tracking store scalesweep can use; give sqlite:///path/to/mlflow.db, '
            f"http(s)://host:port of an `mlflow server`, or a database URI ({', '.join(OTHER_STORES)})."
        )


def server_answers(uri: str, timeout: float = 5.0) -> bool:
    return _health_error(uri, timeout) is None


def _health_error(uri: str, timeout: float) -> str | None:
    """Why the server's /health does not answer, or None when it does."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
        return None
    except (urllib.error.URLError, OSError, ValueError) as err:
        return str(getattr(err, "reason", err))


def _check_server(uri: str) -> None:
    if (reason := _health_error(uri, timeout=5.0)) is not None:
        raise UserError(
            f"the MLflow tracking server at {uri} does not answer ({reason}). Start one with "
            f"`mlflow server --host 127.0.0.1 --port 5000`, or leave out --tracking-uri to record "
            f"to the local store {DEFAULT_URI}."
        )


def _check_sqlite(path: Path) -> None:
    if not path.exists():
        return
    try:
        # rw, not ro: a driver killed mid-write leaves a hot journal, which only a writer may roll back.
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True)) as db:
            db.execute("PRAGMA schema_version").fetchone()
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        raise UserError(
            f"{path} is not a readable MLflow sqlite store ({err}). It may be corrupt or half-written: "
            f"move it aside (your runs' artifacts in ./mlartifacts stay), or pass another --tracking-uri."
        ) from None
    if tables and "experiments" not in tables:  # another program's database: MLflow would add its tables
        raise UserError(
            f"{path} is a sqlite database but not an MLflow store (its tables: {', '.join(sorted(tables)[:5])}). "
            f"Pass --tracking-uri sqlite:///another.db, or run from another folder."
        )


def require_store(uri: str | None = None) -> str:
    """The resolved URI, when a store is there to read; else a UserError saying that there is
    none and where it looked. For commands that only read: they never create a store."""
    given = uri
    uri = resolve_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        if given:
            source = "the given tracking URI (--tracking-uri or the spec's tracking.uri)"
        elif os.environ.get("MLFLOW_TRACKING_URI"):
            source = "MLFLOW_TRACKING_URI"
        else:
            source = f"the default {DEFAULT_URI}, in the working directory {Path.cwd()}"
        raise UserError(
            f"there is no MLflow store at {uri.removeprefix('sqlite:///')} (from {source}): nothing has been "
            f"recorded there, and this command only reads, so it did not create one. Run `scalesweep run SPEC` "
            f"from this folder first, or pass --tracking-uri (or set MLFLOW_TRACKING_URI) to the store the "
            f"sweep was recorded to."
        )
    return uri


def client_for(uri: str | None = None, *, create: bool = True) -> MlflowClient:
    """An MLflow client on the store, checked first (`check_store`). `create=False` is for
    commands that only read: a sqlite file that does not exist is an error, not a new store."""
    uri = require_store(uri) if not create else resolve_uri(uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no alembic chatter on a new store
    logging.getLogger("alembic").setLevel(logging.WARNING)
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
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except (MlflowException, ImportError) as err:  # e.g. a database driver that is not installed
        raise UserError(f"cannot open the tracking store {uri} ({first_line(err)}).") from None


@dataclass
class ChildRun:
    run_id: str
    run_key: str
    status: str


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
                if now >= deadline:
                    raise TrackingLost(
                        f"the MLflow tracking store {self.client.tracking_uri} stayed unreachable for "
                        f"{self.patience:g} s ({first_line(err)}), so the sweep stopped. Finished runs are "
                        f"recorded; bring the store back and run the same command again: finished runs are "
                        f"skipped and the interrupted ones run again (SCALESWEEP_TRACKING_PATIENCE sets the wait)."
                    ) from None
                self.notify(
                    f"MLflow at {self.client.tracking_uri} is unreachable ({first_line(err)}); "
                    f"retrying for {deadline - now:.0f} s more"
                )
                time.sleep(min(RETRY_SECONDS, max(0.1, deadline - now)))

    def _transient(self, err: Exception) -> bool:
        """A lost server or a locked sqlite file is worth waiting for; anything else is a bug to show."""
        uri = self.client.tracking_uri
        if "database is locked" in str(err):
            return True
        return uri.startswith(("http://", "https://")) and not server_answers(uri, timeout=2.0)

    def _ensure_parent(self) -> str:
        found = self.client.search_runs(
            [self.experiment_id], f"tags.`{TAG}.role` = 'parent' and tags.`{TAG}.sweep` = '{_quote(self.sweep)}'"
        )
        if found:
            return found[0].info.run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"sweep {self.sweep}",
            tags={f"{TAG}.role": "parent", f"{TAG}.sweep": self.sweep},
        )
        return run.info.run_id

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
        runs = self._call(search_all, self.client, self.experiment_id, child_query(self.sweep))
        return [ChildRun(r.info.run_id, r.data.tags.get(f"{TAG}.run_key", ""), r.info.status) for r in runs]

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

    def fail(self, run_id: str, error: str, traceback_text: str) -> None:
        self._call(self.client.log_batch, run_id, tags=[RunTag(f"{TAG}.error", error[:4000])])
        self._call(self.client.log_text, run_id, traceback_text, "traceback.txt")
        self._call(self.client.set_terminated, run_id, "FAILED")

    def abandon(self, run_id: str, reason: str) -> None:
        """End a run that will not finish (driver gone, retried elsewhere)."""
        self._call(self.client.set_tag, run_id, f"{TAG}.abandoned", reason[:500])
        self._call(self.client.set_terminated, run_id, "KILLED")


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
        location = (Path("mlartifacts").resolve() / slug(name)).as_uri()
    return client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))


def existing_children(client: MlflowClient, sweep: str, experiment: str) -> list[ChildRun]:
    """A sweep's child runs, read-only: an experiment that does not exist has none."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = search_all(client, found.experiment_id, child_query(sweep))
    return [ChildRun(r.info.run_id, r.data.tags.get(f"{TAG}.run_key", ""), r.info.status) for r in runs]


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


def sweep_counts(children: list[ChildRun], configs: list[RunConfig]) -> dict[str, int]:
    """The sweep's outcome in the store: planned runs finished, failed (and not finished since),
    and missing (never run, or interrupted)."""
    statuses: dict[str, set[str]] = {}
    for child in children:
        statuses.setdefault(child.run_key, set()).add(child.status)
    keys = {c.run_key for c in configs}
    finished = sum(1 for k in keys if "FINISHED" in statuses.get(k, ()))
    failed = sum(1 for k in keys if "FAILED" in statuses.get(k, ()) and "FINISHED" not in statuses[k])
    return {"planned": len(keys), "finished": finished, "failed": failed, "missing": len(keys) - finished - failed}


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


def slug(name: str) -> str:
    """A name safe as one path component (for artifact and report folders)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
