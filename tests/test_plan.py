"""Plan expansion: counts, and run keys that are stable and order-independent."""

from __future__ import annotations

import json

import yaml

from scalesweep.plan import group_by_ensemble, plan
from scalesweep.spec import parse_spec
from tests.conftest import TINY_SPEC, cli, write_spec

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


def test_plan_command_json(tmp_path):
    result = cli("plan", str(write_spec(tmp_path, GOOD)), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 18
    assert {"run_key", "model_size", "data_size", "seed", "config"} <= set(rows[0])


def test_keys_ignore_defaults_given_explicitly_number_types_and_observable_order():
    data = yaml.safe_load(GOOD)
    keys = {r.run_key for r in plan(parse_spec(yaml.safe_dump(data)))}
    same = json.loads(json.dumps(data))
    same["task"]["params"] = {"p": float(data["task"]["params"]["p"]), "op": "+"}  # "+" is the default
    same["observables"] = list(reversed(parse_spec(GOOD).observables))
    assert {r.run_key for r in plan(parse_spec(yaml.safe_dump(same)))} == keys
    other = json.loads(json.dumps(data))
    other["task"]["params"]["op"] = "-"
    assert not keys & {r.run_key for r in plan(parse_spec(yaml.safe_dump(other)))}
