"""An installed wheel works from a folder outside the checkout, built-in phenomenon catalog included.

Before the catalog moved into the package (`scalesweep/phenomena/*.yaml`, package data), a plain
`pip install .` did not ship it: `validate` said ok and `report` failed with `unknown phenomenon
"grokking"; valid phenomenons are: .`. This test builds the wheel from a copy of the sources,
installs it in a fresh venv (reusing this environment's packages through a `.pth` file naming
this interpreter's site-packages: torch, Ray and MLflow are not downloaded again) and runs `validate`,
a six-run sweep and its report from a project folder with its own `analysis/` phenomenon.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

SPEC = """
name: tiny_installed
task: {name: modular_arithmetic, params: {p: 7, op: "+"}}
model: {family: mlp, params: {depth: 1, embed_dim: 4}}
axes: {model_size: [4, 8, 16], data_size: [20, 40], seeds: 1}
training: {steps: 20, batch_size: 64, lr: 0.01, eval_every: 10}
resources: {cpus_per_run: 0.5}
tracking: {curves_figure: false}
phenomena: [{name: grokking, params: {gap: 5}}, generalization_gap, project_loss]
"""


def sh(*args: str | Path, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with the wheel built from this checkout installed (not editable)."""
    root = tmp_path_factory.mktemp("installed")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "scalesweep", src / "scalesweep", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip"]
    built = sh(*pip, "wheel", src, "--no-deps", "--no-build-isolation", "-w", root / "dist", cwd=root)
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("scalesweep-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "scalesweep/phenomena/grokking.yaml" in names and "scalesweep/phenomena/generalization_gap.yaml" in names
    env = root / "venv"
    made = sh(sys.executable, "-m", "venv", "--without-pip", env, cwd=root)
    assert made.returncode == 0, made.stderr
    python = env / "bin" / "python"
    see_these_packages(python)
    for step in (["torch==2.13.0"], ["--no-deps", "--force-reinstall", wheel]):  # the README's order
        done = sh(*pip, "--python", python, "install", "-q", *step, cwd=root)
        assert done.returncode == 0, done.stderr
    return env


def see_these_packages(python: Path) -> None:
    """Let the venv of `python` import this interpreter's packages, after its own.

    Not `--system-site-packages`: that names the *base* interpreter's site-packages, which is not
    where the packages are when the tests run in a virtual environment (CI's fresh venv: the base
    Python has none of them, and the wheel's `scalesweep` failed on `import typer`). A `.pth` line
    appends a folder to `sys.path` without running that folder's own `.pth` files, so this
    checkout's editable install stays out, and the wheel is what imports."""
    code = "import site, sysconfig; print(sysconfig.get_paths()['purelib'])"
    own = sh(python, "-c", code, cwd=python.parent).stdout.strip()
    assert own, f"no site-packages for {python}"
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(own) / "scalesweep_tests_parent.pth").write_text("".join(f"{p}\n" for p in ours), encoding="utf-8")


def project(tmp_path: Path) -> tuple[Path, dict]:
    """A project folder outside the checkout: sweeps/ and its own analysis/."""
    folder = tmp_path / "project"
    (folder / "sweeps").mkdir(parents=True)
    (folder / "analysis").mkdir()
    (folder / "sweeps" / "tiny.yaml").write_text(SPEC)
    (folder / "analysis" / "project_loss.yaml").write_text("description: mine\nstrength: final_test_loss\n")
    assert REPO not in folder.resolve().parents
    drop = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PYTHONPATH", "SCALESWEEP_CATALOG")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return folder, env


def test_the_installed_package_is_the_wheel_not_the_checkout(venv, tmp_path):
    folder, env = project(tmp_path)
    where = sh(venv / "bin" / "python", "-c", "import scalesweep; print(scalesweep.__file__)", cwd=folder, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr


def test_validate_run_and_report_from_outside_the_checkout(venv, tmp_path):
    folder, env = project(tmp_path)
    scalesweep = venv / "bin" / "scalesweep"
    ok = sh(scalesweep, "validate", "sweeps/tiny.yaml", cwd=folder, env=env)
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stdout + ok.stderr
    (folder / "sweeps" / "typo.yaml").write_text(SPEC.replace("generalization_gap", "generalisation_gap"))
    typo = sh(scalesweep, "validate", "sweeps/typo.yaml", cwd=folder, env=env)
    assert typo.returncode == 2 and 'did you mean "generalization_gap"' in " ".join(typo.stderr.split())
    ran = sh(scalesweep, "run", "sweeps/tiny.yaml", cwd=folder, env=env)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    report = sh(scalesweep, "report", "sweeps/tiny.yaml", cwd=folder, env=env)
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    verdicts = pd.read_csv(folder / "reports" / "tiny_installed" / "verdicts.csv")
    assert {"grokking", "generalization_gap", "project_loss"} <= set(verdicts["phenomenon"])
    assert (folder / "reports" / "tiny_installed" / "report.html").is_file()
