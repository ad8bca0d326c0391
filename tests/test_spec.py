"""Spec validation: good specs load, bad ones get one clear paragraph and exit 2."""

from __future__ import annotations

import pytest
import yaml

from scalesweep.errors import UserError
from scalesweep.spec import load_spec, parse_spec
from tests.conftest import REPO, TINY_SPEC, cli, write_spec

GOOD = TINY_SPEC.format(name="tiny", steps=50)


def mutate(path: list[str], value) -> str:
    """The good spec with one field replaced (or removed when value is ...)."""
    data = yaml.safe_load(GOOD)
    node = data
    for part in path[:-1]:
        node = node[part]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return yaml.safe_dump(data)


def test_shipped_specs_are_valid():
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        if not path.name.endswith(".refine.yaml"):  # a refine sidecar, merged into its spec
            assert load_spec(path).name


def test_good_spec_loads_with_defaults():
    spec = parse_spec(GOOD)
    assert spec.axes.seed_list == [0, 1]
    assert spec.training.optimizer == "adamw"
    assert spec.resources.cpus_per_run == 1.0
    assert spec.experiment_name == "scalesweep/tiny"


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (["training", "stpes"], 10, 'did you mean "steps"'),
        (["task", "name"], "modular_arithmetc", 'did you mean "modular_arithmetic"'),
        (["model", "family"], "mpl", 'did you mean "mlp"'),
        (["training", "lr"], "fast", "training.lr"),
        (["training", "optimizer"], "adamm", "training.optimizer"),
        (["axes", "model_size"], [], "axes.model_size"),
        (["axes", "data_size"], [10, -5], "positive"),
        (["axes", "seeds"], 0, "seed count"),
        (["axes"], ..., 'missing required field "axes"'),
        (["task", "params"], {"p": 11, "opp": "+"}, 'did you mean "op"'),
        (["task", "params"], {"p": "eleven"}, "parameter"),
        (["observables"], ["los"], 'did you mean "loss"'),
        (["grid"], {"training.wieght_decay": [0.1]}, 'did you mean "training.weight_decay"'),
    ],
)
def test_bad_spec_names_the_field(path, value, expected):
    with pytest.raises(UserError) as caught:
        parse_spec(mutate(path, value), source="bad.yaml")
    message = str(caught.value)
    assert message.startswith("bad.yaml: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "text", ["", "- a\n- b\n", "name: [unclosed\n", "!!python/object/apply:os.system ['echo hi']\n"]
)
def test_not_a_spec_is_a_clear_error(text):
    with pytest.raises(UserError):
        parse_spec(text)


def test_validate_command_exit_codes(tmp_path):
    good = write_spec(tmp_path, GOOD, "good.yaml")
    bad = write_spec(tmp_path, mutate(["training", "stpes"], 10), "bad.yaml")
    ok = cli("validate", str(good), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "18 runs" in ok.stdout
    failed = cli("validate", str(bad), cwd=tmp_path)
    assert failed.returncode == 2
    assert "bad.yaml" in failed.stderr and "stpes" in failed.stderr and 'did you mean "steps"' in failed.stderr
    assert "Traceback" not in failed.stderr
    missing = cli("validate", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert missing.returncode == 2 and "no such spec file" in missing.stderr
