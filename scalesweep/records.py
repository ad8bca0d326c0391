"""Phenomenon records: a study's runs, step series, phenomena and verdicts as one archive.

A record is what a lab publishes so that anyone can re-analyse its phenomena
or compare them with their own, without MLflow, Ray or torch ("open-source the
phenomena, if not the models"). The schema is in `docs/records.md`.

A record is a **zip** file (not a tarball): members are read by name without
unpacking the rest, each has a CRC, it opens natively on every desktop, and a
zip has no hard links or devices; symlinks are refused. Nothing in a record is
ever extracted to disk: every member is read into memory, after every member
name has been checked, so a hostile archive cannot write anywhere.

This module imports pandas, pyarrow and the analysis layer only; `step_series`
reads a store's series through `store.py`, imported inside the function.
`commands.export` reads a sweep back from the store and builds its record here.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import math
import os
import platform
import re
import stat
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import ValidationError

from scalesweep import safe_yaml
from scalesweep.analysis.classify import VERDICT_COLUMNS, classify_runs
from scalesweep.analysis.phenomena import Phenomenon
from scalesweep.analysis.report import ReportHeader, stable_columns, write_report
from scalesweep.analysis.transformations import FACTOR, TRANSFORMATION_COLUMNS, find_pairs
from scalesweep.errors import UserError, did_you_mean, safe_name

FORMAT = "scalesweep-record"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
RUNS = "runs.parquet"
SERIES = "series.parquet"
SPEC = "spec.yaml"
RUN_KEYS = "run_keys.csv"
VERDICTS = "verdicts.csv"
TRANSFORMATIONS = "transformations.csv"
PHENOMENA_DIR = "phenomena"
SERIES_COLUMNS = ["run_key", "metric", "step", "value"]
RUN_KEY_COLUMNS = ["run_key", "label", "state"]
TABLES = (RUNS, SERIES, RUN_KEYS, VERDICTS, TRANSFORMATIONS)  # members whose columns the manifest lists
REQUIRED_COLUMNS = {
    SERIES: SERIES_COLUMNS,
    RUN_KEYS: RUN_KEY_COLUMNS,
    VERDICTS: VERDICT_COLUMNS,
    TRANSFORMATIONS: TRANSFORMATION_COLUMNS,
}
MANIFEST_KEYS = (
    "format",
    "schema_version",
    "created",
    "name",
    "description",
    "cite",
    "license",
    "axes",
    "grid",
    "seed",
    "phenomena",
    "runs",
    "series",
    "packages",
    "members",
)
DEFAULT_LICENSE = "CC-BY-4.0"
MAX_MEMBER_BYTES = 4 * 2**30  # a member larger than this (uncompressed) is refused: no zip bombs
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")  # not .gz: `classify t.csv.gz` is a table
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Record:
    """A record read back and validated: the tables as DataFrames, the phenomena parsed."""

    path: Path
    manifest: dict[str, Any]
    runs: pd.DataFrame
    series: pd.DataFrame | None
    phenomena: list[Phenomenon]
    verdicts: pd.DataFrame
    transformations: pd.DataFrame
    run_keys: pd.DataFrame
    spec_text: str

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def axes(self) -> list[str]:
        return list(self.manifest["axes"])

    @property
    def grid(self) -> list[str]:
        return list(self.manifest["grid"])

    @property
    def seed(self) -> str | None:
        return self.manifest.get("seed")


# ---------------------------------------------------------------- writing


def build_record(
    out: Path,
    runs: pd.DataFrame,
    phenomena: Sequence[Phenomenon],
    axes: Sequence[str],
    grid: Sequence[str] = (),
    *,
    name: str,
    seed: str | None = "seed",
    spec_text: str = "",
    run_keys: pd.DataFrame | None = None,
    series: pd.DataFrame | None = None,
    series_note: str = "",
    description: str = "",
    cite: str | None = None,
    license: str | None = None,
    packages: Mapping[str, str] | None = None,
    n_boot: int = 200,
) -> Path:
    """Classify `runs` with the report's own functions and write the record to `out`.

    Pure: no MLflow, Ray or torch, so a record can be built from any runs table
    (a test's synthetic one, a CSV of published results). The verdicts and pairs
    are recomputed here rather than copied, so that they always match the runs."""
    out = record_path(out)
    unsafe = [ph.name for ph in phenomena if not SAFE_NAME.fullmatch(ph.name)]
    if unsafe:
        raise UserError(f"phenomenon name(s) {', '.join(map(repr, unsafe))} cannot name a file of a record.")
    verdicts = stable_columns(
        classify_runs(runs, list(phenomena), axes=list(axes), grid=list(grid), seed=seed, n_boot=n_boot)
    )
    tables = dict(runs=runs, keys=run_keys if run_keys is not None else _keys_of(runs), series=series)
    members = _member_bytes(tables, verdicts, find_pairs(verdicts, phenomena), phenomena, spec_text)
    facts = dict(name=name, description=description, cite=cite, license=license, axes=list(axes), grid=list(grid))
    facts |= dict(seed=seed, phenomena=[ph.name for ph in phenomena], runs=_counts(runs))
    facts |= dict(series={"included": series is not None, "note": series_note}, packages=packages or package_versions())
    manifest = _manifest(facts, members)
    _write_zip(out, members, manifest)
    return out


def _member_bytes(tables: Mapping[str, Any], verdicts, pairs, phenomena, spec_text: str) -> dict[str, bytes]:
    """Every member but the manifest, serialised: tables as Parquet (typed) or CSV (the report's own files)."""
    members: dict[str, bytes] = {
        RUNS: _parquet(tables["runs"]),
        SPEC: spec_text.encode("utf-8"),
        RUN_KEYS: _csv(tables["keys"][RUN_KEY_COLUMNS]),
        VERDICTS: _csv(verdicts),
        TRANSFORMATIONS: _csv(pairs),
    }
    if tables["series"] is not None:
        members[SERIES] = _parquet(tables["series"][SERIES_COLUMNS])
    for ph in phenomena:
        members[f"{PHENOMENA_DIR}/{ph.name}.yaml"] = _phenomenon_yaml(ph)
    return members


def record_path(out: Path) -> Path:
    """A record is a .zip file: refuse another name early, before any work."""
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise UserError(f"{out}: a phenomenon record is a .zip archive; give --out a name ending in .zip.")
    return out


def _keys_of(runs: pd.DataFrame) -> pd.DataFrame:
    """Run keys from the table itself, when no plan is at hand (a synthetic or published table)."""
    keys = runs["run_key"].astype(str) if "run_key" in runs else pd.Series([str(i) for i in range(len(runs))])
    labels = runs["run_name"].astype(str) if "run_name" in runs else pd.Series([""] * len(runs))
    states = runs["status"].astype(str).str.lower() if "status" in runs else pd.Series(["finished"] * len(runs))
    return pd.DataFrame({"run_key": keys.to_numpy(), "label": labels.to_numpy(), "state": states.to_numpy()})


def _counts(runs: pd.DataFrame) -> dict[str, int]:
    if "status" not in runs:
        return {"finished": len(runs), "failed": 0}
    status = runs["status"].astype(str).str.upper()
    return {"finished": int((status == "FINISHED").sum()), "failed": int((status == "FAILED").sum())}


def _arrow_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Parquet needs one type per column: a column mixing numbers and strings (a grid value
    given both ways) is stored as strings; names become strings."""
    out = frame.copy()
    out.columns = [str(c) for c in out.columns]
    for column in out.columns:
        if out[column].dtype == object:
            kinds = {type(v) for v in out[column] if not _missing(v)}
            if len(kinds) > 1:
                out[column] = out[column].map(lambda v: v if _missing(v) else str(v))
    return out.reset_index(drop=True)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    _arrow_safe(frame).to_parquet(buffer, index=False, engine="pyarrow")
    return buffer.getvalue()


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode("utf-8")


def _phenomenon_yaml(ph: Phenomenon) -> bytes:
    """The phenomenon as it was used (the spec's params applied), so the record needs no catalog."""
    body = yaml.safe_dump(ph.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return f"# phenomenon {ph.name}, as used by this record (overrides applied)\n{body}".encode()


def package_versions(names: Iterable[str] = ()) -> dict[str, str]:
    """Versions from the installed metadata: reading them imports nothing (no torch for a report)."""
    found = {"python": platform.python_version()}
    for name in ("scalesweep", "numpy", "pandas", "pyarrow", "scipy", *names):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _manifest(facts: dict, members: Mapping[str, bytes]) -> dict:
    """The manifest: what the record is, who may cite it, and each member's checksum (and columns)."""
    created = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    cite = facts["cite"] or f'"{facts["name"]}", a scalesweep phenomenon record ({created[:10]}).'
    entries = {}
    for name, data in members.items():
        entry: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        if name in TABLES:
            frame = _read_table(name, data)
            entry |= {"columns": [str(c) for c in frame.columns], "rows": len(frame)}
        entries[name] = entry
    return dict(
        format=FORMAT,
        schema_version=SCHEMA_VERSION,
        created=created,
        **{k: facts[k] for k in ("name", "description")},
        cite=cite,
        license=facts["license"] or DEFAULT_LICENSE,
        **{k: facts[k] for k in ("axes", "grid", "seed", "phenomena", "runs", "series", "packages")},
        members=entries,
    )


def _write_zip(out: Path, members: Mapping[str, bytes], manifest: dict) -> None:
    """Write to a temporary name beside `out`, then rename: a failed export leaves nothing half-written."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        temp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        stamp = tuple(int(x) for x in re.findall(r"\d+", manifest["created"])[:6])
        with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in [(MANIFEST, json.dumps(manifest, indent=1).encode()), *members.items()]:
                info = zipfile.ZipInfo(name, date_time=stamp)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                archive.writestr(info, data)
        os.replace(temp, out)
    except OSError as err:
        raise UserError(f"cannot write the record {out} ({err.strerror or err}); pass another --out.") from None
    finally:
        if "temp" in locals() and temp.exists():
            temp.unlink()


# ---------------------------------------------------------------- reading and validating


def is_record(path: Path) -> bool:
    """Whether `path` is meant as a record (an archive by name or first bytes), not a spec or a CSV.
    A file that is meant as one but is broken is then read, and refused with a clear error."""
    path = Path(path)
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return head in ZIP_MAGIC


def read_record(path: Path) -> Record:
    """Open, check and parse a record; any fault is one paragraph naming the record and what is wrong.

    Order matters: member names are checked before anything is read, the manifest
    before the members it describes, checksums before any member is parsed."""
    path = Path(path)
    data, manifest = _members(path)
    runs = _table(path, RUNS, data[RUNS], manifest)
    series = _table(path, SERIES, data[SERIES], manifest) if manifest["series"].get("included") else None
    verdicts = _table(path, VERDICTS, data[VERDICTS], manifest)
    pairs = _table(path, TRANSFORMATIONS, data[TRANSFORMATIONS], manifest)
    keys = _table(path, RUN_KEYS, data[RUN_KEYS], manifest)
    phenomena = [_phenomenon(path, name, data) for name in manifest["phenomena"]]
    spec_text = data[SPEC].decode("utf-8", errors="replace")
    return Record(path, manifest, runs, series, phenomena, verdicts, pairs, keys, spec_text)


def _bad(path: Path, problem: str, fix: str = "") -> UserError:
    fix = fix or "export it again with `scalesweep export SPEC`, or ask its authors for an intact copy"
    return UserError(f"{path} is not a usable phenomenon record: {problem}. Nothing was written; {fix}.")


def _members(path: Path) -> tuple[dict[str, bytes], dict]:
    """Every member's bytes, after the names, the manifest and the checksums are checked."""
    archive = _open(path)
    with archive:
        infos = _safe_infos(path, archive)
        if MANIFEST not in infos:
            raise _bad(path, f"it has no {MANIFEST} (the archive holds {_listing(infos)})")
        manifest = _check_manifest(path, _json(path, archive.read(infos[MANIFEST])))
        data = {}
        for name, entry in manifest["members"].items():
            if name not in infos:
                raise _bad(path, f'the member "{name}" that its manifest lists is missing')
            data[name] = archive.read(infos[name])
            if hashlib.sha256(data[name]).hexdigest() != entry.get("sha256"):
                raise _bad(
                    path, f'the member "{name}" does not match its checksum in the manifest (changed or damaged)'
                )
    return data, manifest


def _open(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise UserError(f"{path}: no such record; give the .zip file that `scalesweep export` wrote.")
    with path.open("rb") as handle:
        head = handle.read(4)
    if head.startswith(GZIP_MAGIC) or path.name.lower().endswith((".tar", ".tar.gz", ".tgz")):
        raise _bad(
            path,
            "it is a tar or gzip file, and records are .zip archives",
            "give the .zip that `scalesweep export` wrote",
        )
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise _bad(
            path, f"it is not a zip archive ({err})", "give the .zip file that `scalesweep export` wrote"
        ) from None


def _safe_infos(path: Path, archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Refuse any member that could write outside a folder it were extracted to (absolute,
    `..`, a drive or a backslash path, a symlink), any duplicate name, and any huge member."""
    infos: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        name = info.filename
        parts = PurePosixPath(name).parts
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or "\\" in name:
            raise _bad(
                path, f'the member "{name}" has an absolute path; a record\'s members are relative, so it is refused'
            )
        if ".." in parts:
            raise _bad(path, f'the member "{name}" points outside the archive (".."), so it is refused')
        if stat.S_ISLNK(info.external_attr >> 16):
            raise _bad(path, f'the member "{name}" is a symbolic link, which a record never holds, so it is refused')
        if name in infos:
            raise _bad(path, f'the member "{name}" appears twice')
        if info.file_size > MAX_MEMBER_BYTES:
            raise _bad(path, f'the member "{name}" unpacks to {info.file_size:,} bytes (over {MAX_MEMBER_BYTES:,})')
        infos[name] = info
    return infos


def _listing(infos: Mapping[str, Any]) -> str:
    names = sorted(infos)
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "") if names else "nothing"


def _json(path: Path, data: bytes) -> dict:
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _bad(path, f"its {MANIFEST} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise _bad(path, f"its {MANIFEST} is not a JSON object")
    return manifest


def _check_manifest(path: Path, manifest: dict) -> dict:
    """Format, schema version, the keys of this version and their types, every required member listed."""
    if manifest.get("format") != FORMAT:
        raise _bad(path, f'its manifest says format {manifest.get("format")!r}, not "{FORMAT}"')
    _check_version(path, manifest)
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise _bad(path, f"its manifest lacks {', '.join(missing)}")
    _check_types(path, manifest)
    required = [RUNS, SPEC, RUN_KEYS, VERDICTS, TRANSFORMATIONS]
    required += [f"{PHENOMENA_DIR}/{n}.yaml" for n in manifest["phenomena"]]
    required += [SERIES] if manifest["series"].get("included") else []
    absent = [name for name in required if name not in manifest["members"]]
    if absent:
        raise _bad(path, f"its manifest does not list the required member(s) {', '.join(absent)}")
    return manifest


def _check_version(path: Path, manifest: dict) -> None:
    """A version this reader does not know is refused; a newer one says to upgrade, naming its maker."""
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _bad(path, f"its schema version {version!r} is unknown (this scalesweep reads version {SCHEMA_VERSION})")
    if version > SCHEMA_VERSION:
        packages = manifest.get("packages") if isinstance(manifest.get("packages"), dict) else {}
        raise _bad(
            path,
            f"its schema version {version} is newer than this scalesweep reads ({SCHEMA_VERSION}); it was made by "
            f"scalesweep {packages.get('scalesweep', '(a newer version)')}",
            "upgrade scalesweep (`pip install -U scalesweep`) to read it",
        )


MANIFEST_TYPES = {"members": dict, "series": dict, "runs": dict, "packages": dict, "axes": list, "grid": list}
MANIFEST_TYPES |= {"phenomena": list, "name": str, "cite": str, "license": str, "created": str}


def _check_types(path: Path, manifest: dict) -> None:
    """Each key of the type the schema says; phenomenon names safe as file names (no `/`, no `..`)."""
    wrong = [key for key, kind in MANIFEST_TYPES.items() if not isinstance(manifest[key], kind)]
    wrong += [key for key in ("axes", "grid", "phenomena") if key not in wrong and not _strings(manifest[key])]
    if wrong:
        raise _bad(path, f"its manifest's {', '.join(wrong)} are not of the schema's types (see docs/records.md)")
    unsafe = [n for n in manifest["phenomena"] if not SAFE_NAME.fullmatch(n)]
    if unsafe:
        raise _bad(path, f"its phenomenon name(s) {', '.join(map(repr, unsafe))} are not plain file names")


SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _strings(values: list) -> bool:
    return all(isinstance(v, str) for v in values)


def _read_table(name: str, data: bytes) -> pd.DataFrame:
    if name.endswith(".parquet"):
        return pd.read_parquet(io.BytesIO(data), engine="pyarrow")
    return pd.read_csv(io.BytesIO(data), keep_default_na=True)


def _table(path: Path, name: str, data: bytes, manifest: dict) -> pd.DataFrame:
    """A table member, parsed, with exactly the columns the manifest lists (and those the schema needs)."""
    try:
        frame = _read_table(name, data)
    except Exception as err:  # pyarrow and the CSV parser raise many kinds; any is a damaged member
        raise _bad(path, f'the member "{name}" is not a readable table ({type(err).__name__}: {err})') from None
    listed = manifest["members"][name].get("columns")
    actual = [str(c) for c in frame.columns]
    if listed != actual:
        extra = [c for c in actual if c not in (listed or [])]
        lost = [c for c in (listed or []) if c not in actual]
        raise _bad(
            path,
            f'the columns of "{name}" do not match its manifest (in the table only: {", ".join(extra) or "none"}; '
            f"in the manifest only: {', '.join(lost) or 'none'}; or in another order)",
        )
    needed = [c for c in REQUIRED_COLUMNS.get(name, []) if c not in actual]
    if needed:
        raise _bad(
            path, f'the table "{name}" lacks the column(s) {", ".join(needed)} that schema {SCHEMA_VERSION} requires'
        )
    if name == RUNS:
        absent = [c for c in [*manifest["axes"], *manifest["grid"]] if c not in actual]
        if absent:
            raise _bad(
                path, f"its runs table lacks the axis or grid column(s) {', '.join(absent)} that the manifest names"
            )
    return frame


def _phenomenon(path: Path, name: str, data: Mapping[str, bytes]) -> Phenomenon:
    member = f"{PHENOMENA_DIR}/{name}.yaml"
    source = f"{path}:{member}"
    try:
        fields = safe_yaml.load(data[member].decode("utf-8"), f"phenomenon file {source}")
        if not isinstance(fields, dict):
            raise UserError("it does not hold a mapping of fields")
        return Phenomenon(**{"name": name, **fields})
    except (UserError, ValidationError, UnicodeDecodeError, TypeError) as err:
        raise _bad(path, f'its phenomenon "{member}" is not valid ({_first(err)})') from None


def _first(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


# ---------------------------------------------------------------- report and classify a record


def reclassify(
    record: Record, phenomena: Sequence[Phenomenon] | None = None, axes: Sequence[str] | None = None
) -> pd.DataFrame:
    """The record's runs classified again, by this scalesweep, with the report's function."""
    return stable_columns(
        classify_runs(
            record.runs,
            list(phenomena if phenomena is not None else record.phenomena),
            axes=list(axes or record.axes),
            grid=record.grid,
            seed=record.seed if record.seed in record.runs else None,
        )
    )


def report_record(path: Path, out_dir: Path | None = None) -> tuple[Path, pd.DataFrame]:
    """`scalesweep report RECORD`: the report of a record, classified again; no MLflow, Ray or torch."""
    record = read_record(path)
    verdicts = reclassify(record)
    return _write(record, record.phenomena, verdicts, out_dir or Path("reports") / _slug(record.name)), verdicts


def classify_record(
    path: Path,
    out_dir: Path,
    names: Sequence[str] = (),
    axis: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Path, pd.DataFrame]:
    """`scalesweep classify RECORD`: re-classify the record's runs with its phenomena, some of them
    (`names`), along one `axis`, with fields overridden (presence, min_effect, direction, signed)."""
    record = read_record(path)
    phenomena = _select(record, names)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if overrides and len(phenomena) > 1:
        raise UserError(
            f"{path}: {', '.join('--' + k.replace('_', '-') for k in overrides)} would apply to all "
            f"{len(phenomena)} phenomena of the record ({', '.join(p.name for p in phenomena)}); "
            "name one with --phenomenon."
        )
    phenomena = [_override(path, ph, overrides) for ph in phenomena]
    if axis is not None and axis not in record.axes:
        raise UserError(
            f'{path}: the record has no axis "{axis}"{did_you_mean(axis, record.axes)}; '
            f"its axes are {', '.join(record.axes)}."
        )
    verdicts = reclassify(record, phenomena, [axis] if axis else None)
    return _write(record, phenomena, verdicts, out_dir, [axis] if axis else None), verdicts


def _select(record: Record, names: Sequence[str]) -> list[Phenomenon]:
    known = {ph.name: ph for ph in record.phenomena}
    for name in names:
        if name not in known:
            raise UserError(
                f'{record.path}: the record has no phenomenon "{name}"{did_you_mean(name, known)}; '
                f"its phenomena are {', '.join(known) or 'none'}."
            )
    return [known[n] for n in names] if names else list(record.phenomena)


def _override(path: Path, ph: Phenomenon, overrides: Mapping[str, Any]) -> Phenomenon:
    try:
        return Phenomenon(**{**ph.model_dump(), **overrides})
    except ValidationError as err:
        raise UserError(
            f"{path}: cannot override phenomenon {ph.name} with {dict(overrides)} ({_first(err)})."
        ) from None


def _write(record: Record, phenomena, verdicts: pd.DataFrame, out_dir: Path, axes=None) -> Path:
    counts = record.manifest["runs"]
    header = ReportHeader(
        title=f"scalesweep report: {record.name} (record {record.path.name})",
        axes=list(axes or record.axes),
        grid=record.grid,
        runs_finished=int(counts.get("finished", len(record.runs))),
        runs_failed=int(counts.get("failed", 0)),
        notes=_notes(record, verdicts),
        failed_runs=_failed(record.runs),
    )
    return write_report(out_dir, header, record.runs, list(phenomena), verdicts)


def _failed(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(run name, run id) of the failed runs, which the report lists (their ids are MLflow's, for provenance)."""
    if "status" not in runs:
        return []
    failed = runs[runs["status"].astype(str).str.upper() == "FAILED"]
    names = failed["run_name"] if "run_name" in failed else failed.get("run_key", pd.Series("", index=failed.index))
    ids = failed["run_id"] if "run_id" in failed else pd.Series("", index=failed.index)
    return list(zip(names.astype(str), ids.astype(str), strict=True))


def _notes(record: Record, verdicts: pd.DataFrame) -> list[str]:
    """Where the runs came from, who to cite, and whether this classification agrees with the record's."""
    m = record.manifest
    made = m["packages"].get("scalesweep", "?") if isinstance(m["packages"], dict) else "?"
    notes = [m["description"]] if m.get("description") else []
    notes.append(
        f"From the phenomenon record {record.path.name} (schema {m['schema_version']}, created {m['created']} "
        f"with scalesweep {made}). Cite: {m['cite']} License: {m['license']}."
    )
    if not m["series"].get("included"):
        notes.append(f"The record holds no step series ({m['series'].get('note') or 'not exported'}).")
    same = _agreement(record.verdicts, verdicts)
    if same is not None:
        notes.append(
            f"This classification gives the record's own verdict on {same[0]} of {same[1]} (phenomenon, axis, slice)."
        )
    return notes


def _agreement(stored: pd.DataFrame, now: pd.DataFrame) -> tuple[int, int] | None:
    keys = ["phenomenon", "axis", "slice"]
    both = now[[*keys, "verdict"]].merge(stored[[*keys, "verdict"]], on=keys, suffixes=("", "_stored"))
    return (int((both["verdict"] == both["verdict_stored"]).sum()), len(both)) if len(both) else None


def _slug(name: str) -> str:
    """The folder `report RECORD` writes to: as `report SPEC`'s, never empty or dots only."""
    return safe_name(name).strip(".") or "record"


# ---------------------------------------------------------------- compare two records

COMPARE_KEYS = ["phenomenon", "axis", "slice"]
COMPARE_EVIDENCE = [
    "verdict",
    "confidence",
    "effect",
    "ci_low",
    "ci_high",
    "transition",
    "n_points",
    "n_seeds",
    "detail",
]
COMPARE_COLUMNS = [
    *COMPARE_KEYS,
    "agreement",
    *(f"{c}_{side}" for c in COMPARE_EVIDENCE for side in ("a", "b")),
    "effects_overlap",
    "transition_ratio",
    "transitions_agree",
]


def compare_records(path_a: Path, path_b: Path) -> tuple[pd.DataFrame, list[str]]:
    """Where two records agree and disagree, per (phenomenon, axis, slice), with both sides' evidence.

    `agreement` is "agree" (same verdict), "disagree" (two different decided verdicts),
    "undecided" (one side is inconclusive), "only_a" / "only_b" (a slice one study lacks).
    Effects agree when their intervals overlap; transitions are compared as a ratio
    (within `FACTOR` counts as the same scale, as for pairs of phenomena)."""
    a, b = read_record(path_a), read_record(path_b)
    left, right = (r.verdicts[[*COMPARE_KEYS, *COMPARE_EVIDENCE]].astype({"slice": str}) for r in (a, b))
    both = left.merge(right, on=COMPARE_KEYS, how="outer", suffixes=("_a", "_b"), indicator=True)
    both["agreement"] = [_agree(r) for r in both.to_dict("records")]
    both["effects_overlap"] = [_overlap(r) for r in both.to_dict("records")]
    ratio = both["transition_b"].astype(float) / both["transition_a"].astype(float)
    both["transition_ratio"] = ratio.where(np.isfinite(ratio))
    near = np.abs(np.log(both["transition_ratio"].astype(float))) <= math.log(FACTOR)
    both["transitions_agree"] = near.astype(float).where(both["transition_ratio"].notna())
    both = both.sort_values(COMPARE_KEYS, kind="stable").reset_index(drop=True)
    return both[COMPARE_COLUMNS], _definition_notes(a, b)


def _agree(row: Mapping[str, Any]) -> str:
    if row["_merge"] != "both":
        return "only_a" if row["_merge"] == "left_only" else "only_b"
    if row["verdict_a"] == row["verdict_b"]:
        return "agree"
    return "undecided" if "inconclusive" in (row["verdict_a"], row["verdict_b"]) else "disagree"


def _overlap(row: Mapping[str, Any]) -> float:
    """1.0 when the two effect intervals overlap, 0.0 when they do not, NaN without both."""
    bounds = [_float(row.get(f"{c}_{s}")) for s in ("a", "b") for c in ("ci_low", "ci_high")]
    if not all(math.isfinite(x) for x in bounds):
        return math.nan
    return float(bounds[0] <= bounds[3] and bounds[2] <= bounds[1])


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _definition_notes(a: Record, b: Record) -> list[str]:
    """Phenomena of the same name defined differently: their verdicts answer different questions."""
    notes = []
    mine = {ph.name: ph.model_dump() for ph in a.phenomena}
    for ph in b.phenomena:
        if ph.name in mine and mine[ph.name] != ph.model_dump():
            fields = [k for k, v in ph.model_dump().items() if mine[ph.name].get(k) != v]
            notes.append(f"{ph.name} is defined differently in the two records ({', '.join(fields)} differ).")
    for side, record, other in (("A", a, b), ("B", b, a)):
        only = sorted({p.name for p in record.phenomena} - {p.name for p in other.phenomena})
        if only:
            notes.append(f"only record {side} ({record.path.name}) has {', '.join(only)}.")
    return notes


AGREEMENT_WORDS = {"agree": "agree", "disagree": "disagree", "undecided": "undecided", "only_a": "only in A"}
AGREEMENT_WORDS["only_b"] = "only in B"


def comparison_summary(frame: pd.DataFrame) -> str:
    """One line: "12 agree, 2 disagree, 3 undecided, 1 only in A" (rows are (phenomenon, axis, slice))."""
    counts = frame["agreement"].value_counts()
    return ", ".join(f"{int(counts[k])} {word}" for k, word in AGREEMENT_WORDS.items() if k in counts)


def write_comparison(frame: pd.DataFrame, notes: Sequence[str], out: Path, titles: tuple[str, str]) -> Path:
    """The comparison as CSV or as a self-contained HTML table (by the suffix of `out`)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".html", ".htm"):
        raise UserError(f"{out}: give --out a .csv or a .html file.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".csv":
            frame.to_csv(out, index=False)
        else:
            out.write_text(_comparison_html(frame, notes, titles), encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror or err}); pass another --out.") from None
    return out


AGREEMENT_COLOURS = {
    "agree": "#d7f0d2",
    "disagree": "#f6d5d5",
    "undecided": "#f9e2c4",
    "only_a": "#ececec",
    "only_b": "#ececec",
}


def _comparison_html(frame: pd.DataFrame, notes: Sequence[str], titles: tuple[str, str]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in frame.columns)
    rows = []
    for row in frame.to_dict("records"):
        colour = AGREEMENT_COLOURS.get(row["agreement"], "#fff")
        cells = "".join(f"<td>{e(_cell(v))}</td>" for v in row.values())
        rows.append(f"<tr style='background:{colour}'>{cells}</tr>")
    said = "".join(f"<li>{e(n)}</li>" for n in [comparison_summary(frame), *notes])
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>scalesweep compare</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:3px 5px;vertical-align:top}</style></head><body>"
        f"<h1>scalesweep compare</h1><p>A: {e(titles[0])}<br>B: {e(titles[1])}</p><ul>{said}</ul>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table></body></html>"
    )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


# ---------------------------------------------------------------- export a sweep (MLflow, lazily)


def planned_keys(configs, finished: pd.DataFrame, failed: pd.DataFrame) -> pd.DataFrame:
    """Every planned run key with its label and state: finished, failed, or missing (never run)."""
    done, bad = set(finished["run_key"].astype(str)), set(failed["run_key"].astype(str)) if len(failed) else set()
    rows = [
        (c.run_key, c.label, "finished" if c.run_key in done else "failed" if c.run_key in bad else "missing")
        for c in configs
    ]
    return pd.DataFrame(rows, columns=RUN_KEY_COLUMNS)


def step_series(client, runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Every metric logged at more than one step (the step series; summaries are logged once and
    are already in the runs table), long format. A SQL store is read in one query per
    `store.SERIES_CHUNK` runs; a tracking server, which has no bulk read, one request per run and metric."""
    from scalesweep import store

    ids = dict(zip(runs["run_id"].astype(str), runs["run_key"].astype(str), strict=True))
    bulk = store.reads_in_bulk(client)
    how = (
        "read from the SQL store in one query"
        if bulk
        else "read from the tracking server, one request per run and metric"
    )
    frame = pd.DataFrame(store.read_metric_histories(client, list(ids)), columns=["run_id", "metric", "step", "value"])
    frame["run_key"] = frame["run_id"].map(ids)
    per_run = frame.groupby(["run_id", "metric"]).size()
    series_keys = per_run[per_run > 1].index.get_level_values("metric").unique()
    frame = frame[frame["metric"].isin(series_keys)].sort_values(["run_key", "metric", "step"], kind="stable")
    return frame[SERIES_COLUMNS].reset_index(drop=True), f"every metric logged at more than one step, {how}"


# ---------------------------------------------------------------- helpers of the CLI

AGREEMENT_STYLES = {"agree": "green", "disagree": "bold red", "undecided": "yellow", "only_a": "dim", "only_b": "dim"}


def evidence_text(row: Mapping[str, Any], side: str) -> str:
    """One side's evidence in one cell: "expansion (0.93), effect 1.2 [0.9, 1.5], transition 64"."""
    verdict = row.get(f"verdict_{side}")
    if not isinstance(verdict, str):
        return "-"
    parts = [f"{verdict} ({_cell(_float(row.get(f'confidence_{side}')))})"]
    effect = _float(row.get(f"effect_{side}"))
    if math.isfinite(effect):
        low, high = (_cell(_float(row.get(f"{c}_{side}"))) for c in ("ci_low", "ci_high"))
        parts.append(f"effect {_cell(effect)} [{low}, {high}]")
    transition = _float(row.get(f"transition_{side}"))
    if math.isfinite(transition):
        parts.append(f"transition {_cell(transition)}")
    return ", ".join(parts)


def classify_record_command(path, out_dir, names, axis, value, group, seed, direction, presence, min_effect, signed):
    """`classify RECORD`'s options checked: a record's columns are named by its phenomena, not by
    --value / --group / --seed (those describe a CSV table)."""
    given = [flag for flag, v in (("--value", value), ("--group", group), ("--seed", seed)) if v]
    if given:
        raise UserError(
            f"{path} is a phenomenon record: {', '.join(given)} describe a CSV table. Choose the record's "
            f"phenomena with --phenomenon (and an axis with --axis); --presence, --min-effect, --direction and "
            f"--signed override the phenomenon's own values."
        )
    overrides = dict(direction=direction, presence=presence, min_effect=min_effect, signed=True if signed else None)
    return classify_record(Path(path), Path(out_dir), names, axis, overrides)
