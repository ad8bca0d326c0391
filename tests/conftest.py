"""Shared fixtures: specs written to temporary folders, and a clean working dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

TINY_SPEC = """
name: {name}
task:
  name: modular_arithmetic
  params: {{p: 11, op: "+"}}
model:
  family: mlp
  params: {{depth: 1, embed_dim: 8}}
axes:
  model_size: [8, 16, 32]
  data_size: [30, 60, 120]
  seeds: 2
training:
  steps: {steps}
  batch_size: 128
  lr: 0.01
  weight_decay: 1.0
  eval_every: 10
phenomena:
  - name: grokking
    params: {{gap: 20}}
  - generalization_gap
"""


def write_spec(folder: Path, text: str, filename: str = "spec.yaml") -> Path:
    path = folder / filename
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def tiny_spec_text() -> str:
    return TINY_SPEC.format(name="tiny", steps=60)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run in an empty folder, with no tracking or Ray address from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m scalesweep ARGS` as a user would, capturing its output."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "scalesweep", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
