"""Tracking URIs: which store a command means, whether it is there, and what it may do to it.

The one place a tracking URI is parsed. Standard library only (no MLflow), so
that the spec's checks (`tracking.uri` stays inside the working directory),
`plan`'s preview and `submit` read a URI without importing MLflow; `store.py`
opens the store a URI names.

The policy: `--tracking-uri`, else `MLFLOW_TRACKING_URI`, else
`sqlite:///mlflow.db` in the working directory (made absolute). A writer
(`run`) creates a sqlite store that is not there; a reader (`report`,
`status`, `export`, `isoflop`, `refine`) never does: no store is an error
naming where it looked (`require_store`); `plan`'s time estimate reads a
store only if one is there (`existing_store`). A Ray Job needs a store its
cluster reaches (`job_uri`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from scalesweep.errors import UserError

DEFAULT_URI = "sqlite:///mlflow.db"
SQLITE = "sqlite:///"
SERVERS = ("http://", "https://")
OTHER_STORES = ("postgresql://", "postgresql+", "mysql://", "mysql+", "mssql", "databricks")


def is_server(uri: str) -> bool:
    return uri.startswith(SERVERS)


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite URI, None for any other store."""
    return Path(uri.removeprefix(SQLITE)) if uri.startswith(SQLITE) else None


def resolve_uri(uri: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the sqlite file in the working dir."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith(SQLITE) and not uri.startswith("sqlite:////"):
        # Absolute: MLflow caches one store per URI string, so a relative path would
        # keep pointing at the first working directory of a long-lived process.
        uri = SQLITE + str(Path(uri.removeprefix(SQLITE)).resolve())
    return uri


def local_path(uri: str) -> str | None:
    """The file path a tracking URI writes to (sqlite:///, file:, a bare path), or None for a server."""
    if uri.startswith(SQLITE):
        return uri.removeprefix(SQLITE)
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    if uri.startswith("file:"):
        return uri.removeprefix("file:")
    return None if re.match(r"[A-Za-z][\w+.-]*://", uri) else uri


def check_store(uri: str) -> None:
    """Fail early, in one paragraph, when the store cannot be used."""
    if is_server(uri):
        _check_server(uri)
    elif (path := sqlite_path(uri)) is not None:
        _check_sqlite(path)
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


def require_writable(uri: str) -> None:
    """A writer's check of a local store, before anything runs: the sqlite file's folder and the
    working directory (MLflow's `mlartifacts/`) take new files, and the file opens for writing.
    sqlite writes a journal beside the database at every transaction, so a read-only folder
    fails the first write; said here as one paragraph instead of MLflow's traceback later."""
    path = sqlite_path(uri)
    if path is None:
        return
    for folder in dict.fromkeys([path.parent, Path.cwd()]):
        where = "the tracking store's folder" if folder == path.parent else "the working directory (mlartifacts/)"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
            if folder == path.parent and path.exists():
                with path.open("r+b"):
                    pass
        except OSError as err:
            raise UserError(
                f"cannot write the MLflow store {path}: {where} {folder} is not writable "
                f"({err.strerror or err}; a read-only or full disk?). A sweep records every run there "
                f"(the sqlite file, its journal, and mlartifacts/ in the working directory). Run from a "
                f"writable folder, or pass --tracking-uri sqlite:////a/writable/folder/mlflow.db."
            ) from None


def require_store(uri: str | None = None) -> str:
    """The resolved URI, when a store is there to read; else a UserError saying that there is
    none and where it looked. For commands that only read: they never create a store."""
    given = uri
    uri = resolve_uri(uri)
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        if given:
            source = "the given tracking URI (--tracking-uri or the spec's tracking.uri)"
        elif os.environ.get("MLFLOW_TRACKING_URI"):
            source = "MLFLOW_TRACKING_URI"
        else:
            source = f"the default {DEFAULT_URI}, in the working directory {Path.cwd()}"
        raise UserError(
            f"there is no MLflow store at {path} (from {source}): nothing has been "
            f"recorded there, and this command only reads, so it did not create one. Run `scalesweep run SPEC` "
            f"from this folder first, or pass --tracking-uri (or set MLFLOW_TRACKING_URI) to the store the "
            f"sweep was recorded to."
        )
    return uri


def existing_store(uri: str | None) -> str | None:
    """The resolved URI when it holds a store already, else None (never creates one)."""
    uri = resolve_uri(uri)
    if (path := sqlite_path(uri)) is not None:
        return uri if path.is_file() else None
    if is_server(uri):
        return uri if server_answers(uri, timeout=2.0) else None
    return uri


def job_uri(tracking_uri: str | None) -> str:
    """A store a Ray Job can reach; the default sqlite file would vanish with the job's working directory."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and is_server(uri):
        check_store(uri)
        return uri
    if uri and uri.startswith("sqlite:////"):
        return uri
    raise UserError(
        f"a Ray Job runs in a temporary working directory, so its runs need a tracking store the cluster "
        f"can reach (given: {uri or 'none'}). Pass --tracking-uri http://HOST:5000 (an `mlflow server`), "
        f"or sqlite:////absolute/path/mlflow.db on a filesystem the head node shares."
    )
