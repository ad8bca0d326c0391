"""Plan expansion: counts, and run keys that are stable and order-independent."""

from __future__ import annotations

import json

import yaml

from scalesweep.plan import group_by_ensemble, plan
from scalesweep.spec import parse_spec
from tests.conftest import TINY_SPEC, write_spec

GOOD = TINY_SPEC.format(name="tiny", steps=50)


def test_grid_counts():
    data = yaml.safe_load(GOOD)
    data["grid"] = {"training.weight_decay": [0.1, 1.0], "model.params.depth": [1, 2]}
    runs = plan(parse_spec(yaml.safe_dump(data)))
    assert len(runs) == 3 * 3 * 2 * 2 * 2
    assert len({r.run_key for r in runs}) == len(runs)
    assert {r.training.weight_decay for r in runs} == {0.1, 1.0}
    assert {r.model_params["depth"] for r in runs} == {1, 2}
    assert all(set(r.grid) == {"weight_decay", "depth"} for r in runs)


def test_keys_are_stable_and_ignore_yaml_key_order():
    data = yaml.safe_load(GOOD)
    reordered = {key: data[key] for key in reversed(list(data))}
    reordered["training"] = {k: data["training"][k] for k in reversed(list(data["training"]))}
    first = [r.run_key for r in plan(parse_spec(GOOD))]
    again = [r.run_key for r in plan(parse_spec(GOOD))]
    shuffled = [r.run_key for r in plan(parse_spec(yaml.safe_dump(reordered, sort_keys=False)))]
    assert first == again
    assert sorted(first) == sorted(shuffled)


def test_keys_change_with_content_not_with_name():
    base = {r.label: r.run_key for r in plan(parse_spec(GOOD))}
    renamed = {r.label: r.run_key for r in plan(parse_spec(GOOD.replace("name: tiny", "name: other")))}
    changed = {r.label: r.run_key for r in plan(parse_spec(GOOD.replace("lr: 0.01", "lr: 0.02")))}
    assert base == renamed
    assert not set(base.values()) & set(changed.values())


def test_extending_an_axis_keeps_the_old_keys():
    old = {r.run_key for r in plan(parse_spec(GOOD))}
    new = {r.run_key for r in plan(parse_spec(GOOD.replace("[8, 16, 32]", "[8, 16, 32, 64]")))}
    assert old < new and len(new - old) == 3 * 2


def test_seed_ensembles_group_runs_that_differ_only_in_seed():
    groups = group_by_ensemble(plan(parse_spec(GOOD)))
    assert len(groups) == 9
    assert all(len({r.seed for r in g}) == 2 and len({r.ensemble_key for r in g}) == 1 for g in groups)


def test_plan_command_json(workdir):
    """In-process (a real process costs seconds of imports; test_bad_input runs a handful of those)."""
    from typer.testing import CliRunner

    from scalesweep.cli import app

    result = CliRunner().invoke(app, ["plan", str(write_spec(workdir, GOOD)), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 18
    assert {"run_key", "model_size", "data_size", "seed", "config"} <= set(rows[0])


def test_keys_ignore_defaults_given_explicitly_number_types_and_observable_order():
    data = yaml.safe_load(GOOD)
    data["observables"] = ["loss", "accuracy", "fit_steps", "weight_norm", "anisotropy"]  # all apply to an mlp
    keys = {r.run_key for r in plan(parse_spec(yaml.safe_dump(data)))}
    same = json.loads(json.dumps(data))
    same["task"]["params"] = {"p": float(data["task"]["params"]["p"]), "op": "+"}  # "+" is the default
    same["observables"] = list(reversed(data["observables"]))
    assert {r.run_key for r in plan(parse_spec(yaml.safe_dump(same)))} == keys
    other = json.loads(json.dumps(data))
    other["task"]["params"]["op"] = "-"
    assert not keys & {r.run_key for r in plan(parse_spec(yaml.safe_dump(other)))}


# ------------------------------------------------------------------ axes that can only be inconclusive


def test_plan_warns_of_an_axis_with_two_points_or_a_short_span(workdir):
    from typer.testing import CliRunner

    from scalesweep.cli import app
    from tests.conftest import fast_spec

    runner = CliRunner()
    result = runner.invoke(app, ["plan", str(write_spec(workdir, fast_spec("two", sizes=(15, 30, 45))))])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, result.stderr
    assert "axis model_size [4, 8] has 2 points (needs 3) and a 2x span (needs 4x)" in warnings[0]
    assert "e.g. [4, 8, 16]" in warnings[0] and "can only be inconclusive" in warnings[0]
    assert "axis data_size [15, 30, 45] has a 3x span (needs 4x)" in warnings[1]
    assert "8 runs" not in result.stderr and "12 runs" in result.stdout  # the plan is still shown
    assert not (workdir / "mlflow.db").exists()

    good = runner.invoke(app, ["plan", str(write_spec(workdir, GOOD, "good.yaml"))])  # 3 points, 4x each
    assert good.exit_code == 0 and "warning" not in good.stderr
    one = fast_spec("one", widths=(8,), sizes=(10, 20, 40))  # an axis held at one value is no axis
    held = runner.invoke(app, ["plan", str(write_spec(workdir, one, "one.yaml")), "--json"])
    assert held.exit_code == 0 and "warning" not in held.stderr
    assert json.loads(held.stdout)  # --json output stays pure JSON


def test_run_warns_before_running_and_goes_on(workdir, monkeypatch, empty_store):
    """`run` says it before any task starts, then runs the sweep all the same (Ray left out here:
    the driver loop is replaced by a recorder)."""
    from rich.console import Console

    from scalesweep import cluster, execute
    from tests.conftest import fast_spec, fresh_store

    console, driven = Console(record=True, width=300), []
    monkeypatch.setattr(cluster, "connect", lambda address=None: None)
    monkeypatch.setattr(cluster, "check_fits", lambda requests: None)
    record = lambda self, todo, *rest: driven.append((len(todo), console.export_text()))  # noqa: E731
    monkeypatch.setattr(execute.Driver, "drive", record)
    spec = parse_spec(fast_spec("short"))
    execute.run_sweep(spec, tracking_uri=fresh_store(workdir, empty_store), console=console)
    ((n_todo, said_before_running),) = driven  # the sweep went on
    assert n_todo == 8
    assert "warning: axis model_size [4, 8] has 2 points (needs 3) and a 2x span (needs 4x)" in said_before_running
    assert "warning: axis data_size [20, 30] has 2 points" in said_before_running
    assert said_before_running.index("warning: axis") < said_before_running.index("8 runs to do")


CHECK_AND_PLAN = """
import atexit, sys
atexit.register(lambda: print("heavy:", sorted(m for m in ("torch", "pandas", "mlflow", "ray") if m in sys.modules)))
from scalesweep.cli import app
app([sys.argv[1], *sys.argv[2:]])
"""


def test_checking_and_planning_a_spec_import_no_torch_pandas_mlflow_or_ray(workdir):
    """`validate` and `plan` read the registries' torch-free halves (zoo/base.py): ~1.5 s of
    torch and ~0.5 s of pandas less in every such CLI process, and ~280 MiB less in a driver."""
    import subprocess
    import sys

    spec = write_spec(workdir, TINY_SPEC.format(name="light", steps=20))
    for command in (["validate", str(spec)], ["plan", str(spec), "--json"]):
        done = subprocess.run(
            [sys.executable, "-c", CHECK_AND_PLAN, *command], cwd=workdir, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "heavy: []", (command, done.stdout[-300:])
