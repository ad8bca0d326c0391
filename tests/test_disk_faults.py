"""Faults of the disk under the tracking store: read-only, and full in the middle of a sweep.

Before the store's writability check and its patience with disk errors, a read-only working
directory gave `run` and `classify` raw tracebacks (`OSError: [Errno 30] Read-only file
system`, `sqlite3.OperationalError: attempt to write a readonly database`), and a store that
could not be written mid-sweep killed the driver with `sqlite3.OperationalError` tracebacks.

The disk is a tmpfs of the test's own (mounting one needs root, which CI and this project's
machines have; elsewhere these tests skip): remounted read-only, or filled to the last byte.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import (
    RAY_ENV,
    Cluster,
    Ran,
    child_runs,
    clean_env,
    cli_here,
    fast_spec,
    fresh_store,
    kill_session,
    planned_keys,
    run_on,
    spawn,
    wait_until,
    write_spec,
)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs mounted at a folder of the test's own; unmounted at the end."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); it needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def remount(folder: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], check=True, capture_output=True)


def fill(folder: Path) -> Path:
    """Write zeros into `folder` until its disk is full; the file, to free it again."""
    filler = folder / "filler.bin"
    chunk = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError:
            pass
    with filler.open("ab", buffering=0) as out:  # the last partial megabyte too
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def one_paragraph(result: Ran) -> str:
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text
    return " ".join(text.split())


def test_a_read_only_working_directory_is_a_clear_error(small_disk, empty_store, tmp_path):
    spec = write_spec(small_disk, fast_spec("ro"))
    fresh_store(small_disk, empty_store)
    table = tmp_path / "table.csv"
    pd.DataFrame({"flops": np.geomspace(1, 1e4, 8), "score": np.linspace(0, 1, 8)}).to_csv(table, index=False)
    remount(small_disk, "ro")

    run = cli_here("run", str(spec), cwd=small_disk)
    text = one_paragraph(run)
    assert run.returncode == 2, text
    assert "read-only" in text.lower() and str(small_disk) in text
    assert "--tracking-uri" in text  # what to do

    classify = cli_here("classify", str(table), "--axis", "flops", "--value", "score", cwd=small_disk)
    text = one_paragraph(classify)
    assert classify.returncode == 2, text
    assert "read-only" in text.lower() and "--out" in text

    report = cli_here("report", str(spec), cwd=small_disk)  # nothing to report, said in a paragraph
    assert report.returncode == 2, one_paragraph(report)

    status = cli_here("status", str(spec), cwd=small_disk)  # only reads: it works
    one_paragraph(status)
    assert status.returncode == 0, status.stdout + status.stderr


def _finished_keys(uri: str, sweep: str) -> list[str]:
    return sorted(r.data.tags["scalesweep.run_key"] for r in child_runs(uri, sweep) if r.info.status == "FINISHED")


# Four seed ensembles, one at a time on the session's Ray cluster (2 CPUs each: only its head fits
# one): when the first run has finished, three ensembles are still to train, and their writes meet
# the full disk. (Three at a time, started largest first, finished together: the sweep could end
# before the test saw its first finished run.)
SLOW_RUNS = dict(widths=(4, 8), sizes=(20, 30), seeds=2, steps=3000, cpus=2.0)


def _mid_sweep(
    disk: Path, empty_store: Path, cluster: Cluster, sweep: str, patience: int
) -> tuple[Path, str, subprocess.Popen, Path]:
    """(spec, store URI, driver, its log): a sweep on `disk` driven in the background, once its
    first run has finished and others are still to come. The log is outside the disk that fills."""
    spec = write_spec(disk, fast_spec(sweep, **SLOW_RUNS))
    uri = fresh_store(disk, empty_store)
    log = disk.parent / f"driver-{sweep}.log"
    env = clean_env(SCALESWEEP_TRACKING_PATIENCE=str(patience), **RAY_ENV)
    command = [sys.executable, "-m", "scalesweep", "run", str(spec), "--address", cluster.gcs]
    driver = spawn(command, disk, log, env)
    try:
        assert wait_until(lambda: len(_finished_keys(uri, sweep)) >= 1 or driver.poll() is not None, 240)
        assert driver.poll() is None, log.read_text()
    except BaseException:
        kill_session(driver)
        raise
    return spec, uri, driver, log


@pytest.mark.slow
def test_a_disk_that_fills_mid_sweep_is_waited_for_and_the_sweep_completes(small_disk, empty_store, ray_cluster):
    spec, uri, driver, log = _mid_sweep(small_disk, empty_store, ray_cluster, "full", patience=300)
    try:
        filler = fill(small_disk)
        assert wait_until(lambda: "cannot be written" in log.read_text() or driver.poll() is not None, 120)
        assert driver.poll() is None, log.read_text()
        filler.unlink()
        driver.wait(timeout=400)
    finally:
        kill_session(driver)
    text = log.read_text()
    assert driver.returncode == 0, text
    assert "Traceback" not in text, text
    assert _finished_keys(uri, "full") == sorted(planned_keys(spec))  # exactly one per key


@pytest.mark.slow
def test_a_disk_that_stays_full_stops_the_sweep_clearly_and_a_rerun_completes(small_disk, empty_store, ray_cluster):
    spec, uri, driver, log = _mid_sweep(small_disk, empty_store, ray_cluster, "stays_full", patience=6)
    try:
        recorded = _finished_keys(uri, "stays_full")
        filler = fill(small_disk)
        driver.wait(timeout=180)
    finally:
        kill_session(driver)
    text = " ".join(log.read_text().split())
    assert driver.returncode == 2, text
    assert "Traceback" not in text and "cannot be written" in text and "run the same command again" in text
    filler.unlink()
    assert set(recorded) <= set(_finished_keys(uri, "stays_full"))  # nothing recorded was lost
    rerun = run_on(ray_cluster, spec, cwd=small_disk)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _finished_keys(uri, "stays_full") == sorted(planned_keys(spec))
