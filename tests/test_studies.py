"""The published-phenomenon studies in `sweeps/` (docs/studies.md), checked for their pipeline.

Each study's CPU spec is shrunk to a tiny size (three widths, two seeds, a few steps)
and pushed through the real CLI, `run` then `report`; the report must hold verdict
rows for every phenomenon the study names, along its model axis and in every grid
slice. What the verdicts say at full size is in docs/studies.md, not asserted here:
a few steps decide nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from scalesweep.analysis.classify import VERDICT_COLUMNS, VERDICTS
from scalesweep.errors import UserError
from scalesweep.plan import plan
from scalesweep.spec import load_spec, parse_spec
from tests.conftest import REPO, Cluster, Ran, cli_here, fresh_store, run_on, write_spec

STUDIES = ["coord_check", "grokking_data", "double_descent", "scaling_law", "superposition", "sparse_parity"]
TINY_STEPS = 12
TINY_GRID_VALUES = 2


def study_path(name: str) -> Path:
    return REPO / "sweeps" / f"{name}.yaml"


def spread(values: list, count: int) -> list:
    """`count` values from a sorted list, ends included (one: the smallest), so that a tiny axis keeps its span."""
    if len(values) <= count:
        return values
    if count == 1:
        return values[:1]
    picks = [round(i * (len(values) - 1) / (count - 1)) for i in range(count)]
    return [values[i] for i in picks]


def tiny(name: str) -> dict:
    """The study's CPU spec at a size of seconds: same task, model, phenomena and grid paths."""
    spec = yaml.safe_load(study_path(name).read_text(encoding="utf-8"))
    spec["name"] = f"tiny_{name}"
    spec["axes"]["model_size"] = spread(spec["axes"]["model_size"], 3)
    spec["axes"]["data_size"] = spread(spec["axes"]["data_size"], 1)
    spec["axes"]["seeds"] = 2
    spec["grid"] = {path: spread(values, TINY_GRID_VALUES) for path, values in spec.get("grid", {}).items()}
    steps = min(spec["training"]["steps"], TINY_STEPS)
    spec["training"].update(steps=steps, eval_every=max(1, steps // 4))
    spec["tracking"] = {"curves_figure": False}
    return spec


def phenomenon_names(spec: dict) -> set[str]:
    return {p if isinstance(p, str) else p["name"] for p in spec["phenomena"]}


def test_parametrization_is_a_grid_dimension():
    """The coord check compares sp and mup in one sweep: each run gets its slice's parametrization."""
    spec = yaml.safe_load(study_path("coord_check").read_text(encoding="utf-8"))
    runs = plan(parse_spec(yaml.safe_dump(spec)))
    assert {(r.parametrization, r.grid["parametrization"]) for r in runs} == {("sp", "sp"), ("mup", "mup")}
    spec["grid"] = {"model.parametrization": ["sp", "mu-p"]}
    with pytest.raises(UserError, match="model.parametrization"):
        parse_spec(yaml.safe_dump(spec))


@pytest.mark.parametrize("name", STUDIES)
def test_cpu_and_gpu_specs_validate_and_study_the_same_thing(name):
    cpu, gpu = load_spec(study_path(name)), load_spec(REPO / "sweeps" / f"{name}_gpu.yaml")
    assert (cpu.task.name, cpu.model.family) == (gpu.task.name, gpu.model.family)
    assert [p.name for p in cpu.phenomenon_refs] == [p.name for p in gpu.phenomenon_refs]
    assert list(cpu.grid) == list(gpu.grid)
    assert max(gpu.axes.model_size) > max(cpu.axes.model_size) or max(gpu.axes.data_size) > max(cpu.axes.data_size)
    for spec in (cpu, gpu):  # the classifier needs three scale points over a 4x span along the model axis
        widths = spec.axes.model_size
        assert len(widths) >= 3 and widths[-1] / widths[0] >= 4, spec.name
        assert len(spec.axes.seed_list) >= 2, "seeds give the classifier its noise"


def run_and_report(name: str, folder: Path, store: Path, cluster: Cluster) -> tuple[dict, list[Ran]]:
    """The tiny study through the real CLI in its own folder: `run` (on the session's Ray
    cluster), then `report` if the run went well, both in this test process (`cli_here`).

    The folder starts with a copy of an empty MLflow store (`store`): creating its tables takes a
    CLI call several seconds, once per study otherwise; and a local Ray instance per study would
    cost as much again."""
    folder.mkdir()
    fresh_store(folder, store)
    spec = tiny(name)
    path = write_spec(folder, yaml.safe_dump(spec, sort_keys=False), f"{name}.yaml")
    done = [run_on(cluster, path, cwd=folder)]
    if done[0].returncode == 0:
        done.append(cli_here("report", str(path), cwd=folder))
    return spec, done


@pytest.fixture(scope="module")
def tiny_studies(tmp_path_factory, empty_store, ray_cluster) -> dict[str, tuple[dict, list[Ran], Path]]:
    """All six tiny studies, one after the other in this process: most of each one's time was
    process start-up, which one process pays once."""
    root = tmp_path_factory.mktemp("studies")
    return {name: (*run_and_report(name, root / name, empty_store, ray_cluster), root / name) for name in STUDIES}


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDIES)
def test_tiny_study_runs_and_reports_verdicts(name, tiny_studies):
    spec, done, folder = tiny_studies[name]
    for step in done:
        assert step.returncode == 0, step.stdout + step.stderr
    assert len(done) == 2, "run and report"

    out = folder / "reports" / spec["name"]
    verdicts = pd.read_csv(out / "verdicts.csv")
    assert list(verdicts.columns[: len(VERDICT_COLUMNS)]) == VERDICT_COLUMNS
    assert set(verdicts["verdict"]) <= set(VERDICTS)
    assert set(verdicts["phenomenon"]) == phenomenon_names(spec)
    along_width = verdicts[verdicts["axis"] == "model_size"]
    assert set(along_width["phenomenon"]) == phenomenon_names(spec)
    n_slices = len(spec["axes"]["data_size"]) * math.prod(len(values) for values in spec["grid"].values())
    for _, rows in along_width.groupby("phenomenon"):  # one slice per data size and grid value
        assert rows["slice"].nunique() == len(rows) == n_slices, rows["slice"].tolist()
    assert (out / "report.html").is_file()
