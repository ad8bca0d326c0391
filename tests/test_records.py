"""Phenomenon records: export, schema, re-analysis without MLflow/Ray/torch, compare, bad records."""

from __future__ import annotations

import io
import json
import re
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scalesweep import records
from scalesweep.analysis.classify import VERDICT_COLUMNS, classify_runs
from scalesweep.analysis.phenomena import Phenomenon
from scalesweep.analysis.report import stable_columns
from scalesweep.analysis.transformations import TRANSFORMATION_COLUMNS, find_pairs
from scalesweep.errors import UserError
from tests.conftest import REPO, TINY_SPEC, cli_here, fresh_store, run_on, write_spec

AXES = ["model_size", "data_size"]
GROWS = Phenomenon(name="grows", strength="a", presence=0.5, min_effect=0.2)
FLAT = Phenomenon(name="flat", strength="b", presence=0.5, min_effect=0.5)
N_BOOT = 50


def synthetic_runs(seed: int = 0, slope: float = 1.0, sizes=(30, 60, 120, 240)) -> pd.DataFrame:
    """Runs of a 4 x 4 grid, 3 seeds: `a` grows with log width (by `slope`), `b` is flat."""
    rng = np.random.default_rng(seed)
    rows = []
    for w in (8, 16, 32, 64):
        for n in sizes:
            for s in range(3):
                a = slope * np.log(w) + rng.normal(0, 0.1)
                rows.append(
                    dict(run_key=f"k{w}-{n}-{s}", run_name=f"seed={s} w={w} n={n}", status="FINISHED")
                    | dict(model_size=w, data_size=n, seed=s, a=a, b=1.0 + rng.normal(0, 0.1))
                )
    return pd.DataFrame(rows)


def synthetic_series(runs: pd.DataFrame) -> pd.DataFrame:
    rows = [
        (k, m, step, step / 100) for k in runs["run_key"] for m in ("test_acc", "train_loss") for step in (0, 10, 20)
    ]
    return pd.DataFrame(rows, columns=records.SERIES_COLUMNS)


def make_record(folder: Path, name: str = "r.zip", runs: pd.DataFrame | None = None, **kw) -> Path:
    runs = synthetic_runs() if runs is None else runs
    kw.setdefault("series", synthetic_series(runs))
    return records.build_record(
        folder / name, runs, [GROWS, FLAT], AXES, [], name="synth", spec_text="name: synth\n", n_boot=N_BOOT, **kw
    )


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> Path:
    return make_record(tmp_path_factory.mktemp("record"))


# ---------------------------------------------------------------- the schema


def test_a_record_holds_what_the_schema_says(record):
    with zipfile.ZipFile(record) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read(records.MANIFEST))
    expected = {records.MANIFEST, records.RUNS, records.SERIES, records.SPEC, records.RUN_KEYS}
    expected |= {records.VERDICTS, records.TRANSFORMATIONS, "phenomena/grows.yaml", "phenomena/flat.yaml"}
    assert names == expected
    assert list(manifest) == list(records.MANIFEST_KEYS)
    assert manifest["format"] == "scalesweep-record" and manifest["schema_version"] == records.SCHEMA_VERSION
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["created"])
    assert manifest["license"] == "CC-BY-4.0" and "synth" in manifest["cite"]
    assert manifest["axes"] == AXES and manifest["grid"] == [] and manifest["seed"] == "seed"
    assert manifest["phenomena"] == ["grows", "flat"] and manifest["runs"] == {"finished": 48, "failed": 0}
    assert manifest["series"]["included"] is True
    assert {"python", "scalesweep", "pandas", "pyarrow", "numpy"} <= set(manifest["packages"])
    assert set(manifest["members"]) == expected - {records.MANIFEST}
    assert manifest["members"][records.RUNS]["rows"] == 48
    assert manifest["members"][records.SERIES]["columns"] == records.SERIES_COLUMNS


def test_the_record_reads_back_and_its_verdicts_are_the_reports_own(record):
    rec = records.read_record(record)
    runs = synthetic_runs()
    pd.testing.assert_frame_equal(rec.runs, runs, check_dtype=False)
    assert len(rec.series) == 48 * 2 * 3 and set(rec.series["metric"]) == {"test_acc", "train_loss"}
    assert [ph.model_dump() for ph in rec.phenomena] == [GROWS.model_dump(), FLAT.model_dump()]
    fresh = stable_columns(classify_runs(runs, [GROWS, FLAT], axes=AXES, grid=[], seed="seed", n_boot=N_BOOT))
    assert list(rec.verdicts.columns[: len(VERDICT_COLUMNS)]) == VERDICT_COLUMNS
    assert rec.verdicts["verdict"].tolist() == fresh["verdict"].tolist()
    np.testing.assert_allclose(rec.verdicts["p_value"], fresh["p_value"], rtol=1e-9)
    assert list(rec.transformations.columns) == TRANSFORMATION_COLUMNS
    assert len(rec.transformations) == len(find_pairs(fresh, [GROWS, FLAT]))
    assert rec.run_keys["state"].eq("finished").all() and len(rec.run_keys) == 48
    assert set(rec.verdicts.query("phenomenon == 'grows' and axis == 'model_size'")["verdict"]) == {"expansion"}


def test_docs_records_md_documents_every_member_and_manifest_key():
    doc = (REPO / "docs" / "records.md").read_text(encoding="utf-8")
    for name in [*records.MANIFEST_KEYS, records.MANIFEST, records.RUNS, records.SERIES, records.SPEC]:
        assert f"`{name}`" in doc, name
    for name in [records.RUN_KEYS, records.VERDICTS, records.TRANSFORMATIONS, "phenomena/<name>.yaml"]:
        assert f"`{name}`" in doc, name
    for column in [*records.SERIES_COLUMNS, *records.RUN_KEY_COLUMNS]:
        assert f"`{column}`" in doc, column
    assert f"schema version {records.SCHEMA_VERSION}" in doc


def test_mixed_type_columns_are_stored_as_strings(tmp_path):
    runs = synthetic_runs().assign(note=lambda f: [1 if i % 2 else "x" for i in range(len(f))])
    rec = records.read_record(make_record(tmp_path, runs=runs, series=None))
    assert rec.series is None and set(rec.runs["note"]) == {"1", "x"}


def test_failed_runs_are_kept_and_listed(tmp_path):
    failed = dict(run_key="kf", run_name="seed=0 w=8 n=30 (failed)", status="FAILED", run_id="abc")
    runs = pd.concat([synthetic_runs(), pd.DataFrame([failed | dict(model_size=8, data_size=30, seed=9)])])
    path = make_record(tmp_path, runs=runs.reset_index(drop=True))
    rec = records.read_record(path)
    assert rec.manifest["runs"] == {"finished": 48, "failed": 1} and len(rec.runs) == 49
    assert rec.run_keys.set_index("run_key").loc["kf", "state"] == "failed"
    page, _ = records.report_record(path, tmp_path / "rep")
    assert "seed=0 w=8 n=30 (failed)" in page.read_text(encoding="utf-8")


def test_a_record_must_be_named_zip(tmp_path):
    with pytest.raises(UserError, match=r"a phenomenon record is a \.zip archive"):
        make_record(tmp_path, name="r.tar.gz")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- report, classify, compare without MLflow


def test_report_and_classify_a_record_import_neither_torch_mlflow_nor_ray(record, tmp_path):
    code = (
        "import sys; from scalesweep.cli import app\n"
        "for args in (['report', sys.argv[1], '--out', sys.argv[2] + '/rep'],\n"
        "             ['classify', sys.argv[1], '--phenomenon', 'grows', '--out', sys.argv[2] + '/cls']):\n"
        "    sys.argv = ['scalesweep', *args]\n"
        "    try:\n        app()\n    except SystemExit as e:\n        assert not e.code, e.code\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mlflow', 'ray'))\n"
        "assert not bad, bad[:3]\nprint('clean')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(record), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "clean" in done.stdout, done.stderr[-2000:]
    page = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    assert "phenomenon record r.zip" in page and "CC-BY-4.0" in page
    assert "record&#x27;s own verdict on" in page or "record's own verdict on" in page
    assert (tmp_path / "rep" / "transformations.csv").is_file()
    assert set(pd.read_csv(tmp_path / "cls" / "verdicts.csv")["phenomenon"]) == {"grows"}


def test_classify_a_record_with_overrides(record, tmp_path):
    _, verdicts = records.classify_record(record, tmp_path / "o", ["grows"], "model_size", {"presence": 100.0})
    assert set(verdicts["verdict"]) == {"absent"} and set(verdicts["axis"]) == {"model_size"}
    with pytest.raises(UserError, match="name one with --phenomenon"):
        records.classify_record(record, tmp_path / "p", [], None, {"presence": 1.0})
    with pytest.raises(UserError, match=r'no phenomenon "grow".*did you mean.*grows'):
        records.classify_record(record, tmp_path / "p", ["grow"])
    with pytest.raises(UserError, match=r'no axis "width"'):
        records.classify_record(record, tmp_path / "p", [], "width")
    done = cli_here("classify", str(record), "--value", "a", "--out", str(tmp_path / "p"), cwd=tmp_path)
    assert done.returncode == 2 and "is a phenomenon record: --value describe" in done.stderr
    assert not (tmp_path / "p").exists()


def test_compare_two_records(record, tmp_path):
    other = make_record(tmp_path, "b.zip", runs=synthetic_runs(seed=1, slope=0.0, sizes=(30, 60, 120, 480)))
    frame, notes = records.compare_records(record, other)
    assert list(frame.columns) == records.COMPARE_COLUMNS
    grows = frame[(frame["phenomenon"] == "grows") & (frame["axis"] == "model_size")].set_index("slice")
    assert grows.loc["data_size=30", "agreement"] in ("disagree", "undecided")
    assert grows.loc["data_size=30", "verdict_a"] == "expansion"
    assert grows.loc["data_size=240", "agreement"] == "only_a" and grows.loc["data_size=480", "agreement"] == "only_b"
    assert grows.loc["data_size=30", "effects_overlap"] == 0.0
    same, _ = records.compare_records(record, record)
    assert set(same["agreement"]) == {"agree"} and same["effects_overlap"].dropna().eq(1.0).all()
    done = cli_here("compare", str(record), str(other), "--out", "c.html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "only in A" in done.stdout and "grows" in done.stdout
    assert "<table>" in (tmp_path / "c.html").read_text(encoding="utf-8")
    done = cli_here("compare", str(record), str(other), "--out", "c.csv", cwd=tmp_path)
    assert pd.read_csv(tmp_path / "c.csv").shape == frame.shape
    changed = records.build_record(
        tmp_path / "d.zip", synthetic_runs(), [GROWS.model_copy(update={"presence": 2.0}), FLAT], AXES, name="d"
    )
    assert any(
        "grows is defined differently" in n and "presence" in n for n in records.compare_records(record, changed)[1]
    )


# ---------------------------------------------------------------- bad records: a clear error, nothing changed


def rewrite(src: Path, dst: Path, change, fix_checksums: bool = True) -> Path:
    """Copy a record, letting `change(members, manifest)` edit its members (bytes) and manifest (dict)."""
    with zipfile.ZipFile(src) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    manifest = json.loads(members.pop(records.MANIFEST))
    change(members, manifest)
    if fix_checksums:
        import hashlib

        for name, entry in manifest["members"].items():
            if name in members:
                entry["sha256"] = hashlib.sha256(members[name]).hexdigest()
    with zipfile.ZipFile(dst, "w") as archive:
        archive.writestr(records.MANIFEST, json.dumps(manifest))
        for name, data in members.items():
            archive.writestr(name, data)
    return dst


def _drop(name):
    return lambda members, manifest: members.pop(name)


def _set(key, value):
    return lambda members, manifest: manifest.__setitem__(key, value)


def _columns(members, manifest):
    frame = pd.read_parquet(io.BytesIO(members[records.RUNS])).rename(columns={"a": "alpha"})
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    members[records.RUNS] = buffer.getvalue()


def _tamper(members, manifest):
    members[records.VERDICTS] = members[records.VERDICTS].replace(b"expansion", b"shrinkage")


def _broken_phenomenon(members, manifest):
    members["phenomena/grows.yaml"] = b"strength: 1 +\ndirection: sideways\n"


def _no_verdict_column(members, manifest):
    frame = pd.read_csv(io.BytesIO(members[records.VERDICTS])).drop(columns="verdict")
    members[records.VERDICTS] = frame.to_csv(index=False).encode()
    manifest["members"][records.VERDICTS]["columns"] = list(frame.columns)


def _broken_parquet(members, manifest):
    members[records.RUNS] = members[records.RUNS][:100]


BAD = {
    "missing member": (_drop(records.VERDICTS), True, r'member "verdicts.csv" that its manifest lists is missing'),
    "missing manifest entry": (
        lambda m, mf: mf["members"].pop(records.RUNS),
        True,
        "does not list the required member.*runs.parquet",
    ),
    "unknown schema version": (_set("schema_version", 0), True, "schema version 0 is unknown"),
    "schema version not a number": (_set("schema_version", "one"), True, "schema version 'one' is unknown"),
    "newer schema version": (_set("schema_version", 2), True, "schema version 2 is newer than this scalesweep reads"),
    "another format": (_set("format", "zip"), True, "format 'zip', not \"scalesweep-record\""),
    "columns do not match the manifest": (
        _columns,
        True,
        r"columns of \"runs.parquet\" do not match its manifest.*alpha",
    ),
    "a changed member": (_tamper, False, r'"verdicts.csv" does not match its checksum'),
    "a manifest key missing": (lambda m, mf: mf.pop("cite"), True, "its manifest lacks cite"),
    "a manifest key of another type": (_set("phenomena", 5), True, "phenomena are not of the schema's types"),
    "a phenomenon name that is a path": (_set("phenomena", ["../evil"]), True, "'../evil' are not plain file names"),
    "a broken phenomenon file": (_broken_phenomenon, True, r'its phenomenon "phenomena/grows.yaml" is not valid'),
    "a table without a required column": (_no_verdict_column, True, r'"verdicts.csv" lacks the column\(s\) verdict'),
    "a broken table": (_broken_parquet, True, r'"runs.parquet" is not a readable table'),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_record_is_refused_clearly_and_changes_nothing(record, tmp_path, case):
    change, fix, message = BAD[case]
    bad = rewrite(record, tmp_path / "bad.zip", change, fix_checksums=fix)
    before = bad.read_bytes()
    with pytest.raises(UserError, match=message) as caught:
        records.report_record(bad, tmp_path / "out")
    assert "is not a usable phenomenon record" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists() and bad.read_bytes() == before


def _raw_zip(path: Path, name: str, data: bytes = b"x", mode: int = stat.S_IFREG | 0o644) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        archive.writestr(info, data)
        archive.writestr(records.MANIFEST, "{}")
    return path


@pytest.mark.parametrize(
    ("member", "mode", "message"),
    [
        ("../../evil.txt", stat.S_IFREG | 0o644, r'"\.\./\.\./evil.txt" points outside the archive'),
        ("phenomena/../../evil.yaml", stat.S_IFREG | 0o644, "points outside the archive"),
        ("/etc/evil", stat.S_IFREG | 0o644, '"/etc/evil" has an absolute path'),
        ("C:/evil", stat.S_IFREG | 0o644, "has an absolute path"),
        ("..\\evil", stat.S_IFREG | 0o644, "has an absolute path"),
        ("link", stat.S_IFLNK | 0o777, '"link" is a symbolic link'),
    ],
)
def test_members_that_would_write_outside_are_refused(tmp_path, member, mode, message):
    bad = _raw_zip(tmp_path / "evil.zip", member, b"/etc/passwd", mode)
    with pytest.raises(UserError, match=message):
        records.read_record(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.zip"]


def test_files_that_are_not_records(tmp_path):
    text = tmp_path / "notes.zip"
    text.write_text("hello", encoding="utf-8")
    with pytest.raises(UserError, match="it is not a zip archive"):
        records.read_record(text)
    tarball = tmp_path / "r.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(text, arcname="manifest.json")
    with pytest.raises(UserError, match="tar or gzip file, and records are .zip archives"):
        records.read_record(tarball)
    empty = tmp_path / "plain.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("hello.txt", "x")
    with pytest.raises(UserError, match="has no manifest.json"):
        records.read_record(empty)
    with pytest.raises(UserError, match="no such record"):
        records.read_record(tmp_path / "absent.zip")
    assert records.is_record(tarball) and records.is_record(text) and not records.is_record(REPO / "README.md")


def test_the_cli_says_one_paragraph_and_exits_2(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_text("not a zip", encoding="utf-8")
    for args in (["report", str(bad)], ["classify", str(bad)], ["compare", str(bad), str(bad)]):
        done = (
            cli_here(*args, "--out", str(tmp_path / "out"), cwd=tmp_path)
            if args[0] != "compare"
            else cli_here(*args, cwd=tmp_path)
        )
        assert done.returncode == 2, done.stderr
        assert "is not a usable phenomenon record" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the step series reader


class _FakeClient:
    """A tracking server's client: no SQL store, so the series come one request per run and metric."""

    class _Metric:
        def __init__(self, step, value):
            self.step, self.value = step, value

    class _Run:
        def __init__(self, metrics):
            self.data = type("D", (), {"metrics": metrics})()

    def get_run(self, run_id):
        return self._Run({"test_acc": 1.0, "final_test_acc": 1.0})

    def get_metric_history(self, run_id, key):
        steps = (0, 10, 20) if key == "test_acc" else (20,)
        return [self._Metric(s, s / 20) for s in steps]


def test_step_series_keep_metrics_logged_at_several_steps():
    runs = pd.DataFrame({"run_id": ["r1", "r2"], "run_key": ["k1", "k2"]})
    series, note = records.step_series(_FakeClient(), runs)
    assert list(series.columns) == records.SERIES_COLUMNS and set(series["metric"]) == {"test_acc"}
    assert series["run_key"].tolist() == ["k1"] * 3 + ["k2"] * 3 and "one request per run" in note


def test_export_without_a_store_says_so_and_creates_nothing(workdir, tiny_spec_text):
    spec = write_spec(workdir, tiny_spec_text)
    done = cli_here("export", str(spec), cwd=workdir)
    assert done.returncode == 2 and "there is no MLflow store at" in " ".join(done.stderr.split())
    assert sorted(p.name for p in workdir.iterdir()) == ["spec.yaml"]  # no mlflow.db, no records/
    done = cli_here("export", str(spec), "--out", "r.tar.gz", cwd=workdir)
    assert done.returncode == 2 and "a phenomenon record is a .zip archive" in done.stderr


@pytest.mark.slow
def test_step_series_are_one_sql_query_per_sweep(tmp_path, empty_store):
    from mlflow.tracking import MlflowClient
    from sqlalchemy import event

    client = MlflowClient(fresh_store(tmp_path, empty_store))
    experiment = client.create_experiment("records")
    ids = []
    for _ in range(5):
        run_id = client.create_run(experiment).info.run_id
        ids.append(run_id)
        for step in (0, 10, 20):
            client.log_metric(run_id, "test_acc", step / 20, step=step)
        client.log_metric(run_id, "final_test_acc", float("nan"), step=20)
    statements: list[str] = []
    event.listen(client._tracking_client.store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    runs = pd.DataFrame({"run_id": ids, "run_key": [f"k{i}" for i in range(5)]})
    series, note = records.step_series(client, runs)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT") and "metrics" in s]
    assert len(reads) == 1, reads
    assert len(series) == 15 and set(series["metric"]) == {"test_acc"} and "one query" in note


# ---------------------------------------------------------------- a real sweep (Ray, torch, MLflow)


@pytest.mark.slow
def test_export_a_real_sweep_and_report_it_from_the_record(workdir, empty_store, ray_cluster):
    spec = write_spec(workdir, TINY_SPEC.format(name="tiny", steps=60))
    fresh_store(workdir, empty_store)
    ran = run_on(ray_cluster, spec, cwd=workdir)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    done = cli_here("export", str(spec), "--cite", "Lab X (2026)", cwd=workdir)
    assert done.returncode == 0, done.stderr
    path = workdir / "records" / "tiny.zip"
    rec = records.read_record(path)
    assert len(rec.runs) == 18 and rec.manifest["cite"] == "Lab X (2026)"
    assert {"mlflow", "torch", "ray"} <= set(rec.manifest["packages"])
    assert rec.run_keys["state"].eq("finished").all() and set(rec.run_keys["run_key"]) == set(rec.runs["run_key"])
    steps = rec.series[rec.series["metric"] == "test_acc"].groupby("run_key")["step"].apply(list)
    assert len(steps) == 18 and all(s == list(range(0, 61, 10)) for s in steps)
    assert "final_test_acc" not in set(rec.series["metric"])  # a summary: in the runs table
    assert "name: tiny" in rec.spec_text and [p.name for p in rec.phenomena] == ["grokking", "generalization_gap"]
    assert rec.phenomena[0].params["gap"] == 20
    reported = cli_here("report", str(spec), cwd=workdir)
    assert reported.returncode == 0, reported.stderr
    theirs = pd.read_csv(workdir / "reports" / "tiny" / "verdicts.csv")
    assert rec.verdicts["verdict"].tolist() == theirs["verdict"].tolist()
    again = cli_here("report", str(path), "--out", "from_record", cwd=workdir)
    assert again.returncode == 0, again.stderr
    assert pd.read_csv(workdir / "from_record" / "verdicts.csv")["verdict"].tolist() == theirs["verdict"].tolist()
