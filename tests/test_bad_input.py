"""Bad input: every malformed spec gets exit code 2 and one clear paragraph, never a traceback.

Hypothesis mutates the two known-good specs (conftest's TINY_SPEC and sweeps/quickstart.yaml):
wrong types, missing and unknown fields, bad sizes, huge values, unicode, non-mapping documents,
binary junk, YAML anchors and "billion laughs" bombs. Most checks run in-process (`parse_spec`,
and typer's CliRunner for `validate`) so a few hundred examples take seconds; a handful of
subprocess checks show that no traceback reaches a real terminal. The same file covers the
size guard (more than 10,000 runs needs --yes; a huge grid is counted, never expanded) and a
corrupt or half-written mlflow.db.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from scalesweep import safe_yaml
from scalesweep.cli import app
from scalesweep.errors import UserError
from scalesweep.plan import plan
from scalesweep.spec import MAX_RUNS_WITHOUT_CONFIRM, MAX_SIZE, SweepSpec, load_spec, parse_spec
from scalesweep.zoo import FAMILIES, TASKS
from tests.conftest import REPO, TINY_SPEC, cli, cli_here, write_spec

BASES = {
    "tiny": TINY_SPEC.format(name="tiny", steps=50),
    "quickstart": (REPO / "sweeps" / "quickstart.yaml").read_text(encoding="utf-8"),
}
SOURCE = "mutant.yaml"
MANY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ helpers


def base_data(name: str) -> dict[str, Any]:
    return yaml.safe_load(BASES[name])


def dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def set_path(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """`data` with the value at `path` replaced (or removed when value is ...), parents created."""
    node = data
    for part in path[:-1]:
        node = node[part] if isinstance(node, list) else node.setdefault(part, {})
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


def all_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into the spec tree: mapping keys and list indices, leaves and branches."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    paths = []
    for key, child in items:
        paths.append((*prefix, key))
        paths.extend(all_paths(child, (*prefix, key)))
    return paths


def outcome(text: str) -> SweepSpec | UserError:
    """A valid spec, or the UserError it raised; any other exception fails the test."""
    try:
        return parse_spec(text, source=SOURCE)
    except UserError as error:
        assert_clear(error)
        return error


def refused(text: str) -> str:
    """The message of the UserError `text` must raise."""
    result = outcome(text)
    assert isinstance(result, UserError), f"accepted a bad spec:\n{text}"
    return str(result)


def assert_clear(error: UserError) -> None:
    """One paragraph that names the file; no Python internals."""
    message = str(error)
    assert message.startswith(f"{SOURCE}: "), message
    assert "\n" not in message and "Traceback" not in message, message
    assert len(message) < 2000, message


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
any_value = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
words = st.text(alphabet=st.characters(categories=["L"]), min_size=1, max_size=12)  # never a number


# ------------------------------------------------------------------ any mutation


@st.composite
def mutants(draw) -> str:
    """A good spec with one random change: a value replaced, a field deleted, or a key added."""
    data = base_data(draw(st.sampled_from(sorted(BASES))))
    path = draw(st.sampled_from(all_paths(data)))
    kind = draw(st.sampled_from(["replace", "delete", "add"]))
    if kind == "delete":
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        del parent[path[-1]]
    elif kind == "replace":
        set_path(data, path, draw(any_value))
    else:
        target = data
        for part in path:
            target = target[part]
        assume(isinstance(target, dict))
        target[draw(st.one_of(st.text(max_size=10), st.integers()))] = draw(any_value)
    return dump(data)


@MANY
@given(mutants())
def test_any_mutation_is_a_valid_spec_or_one_clear_error(text):
    result = outcome(text)
    if isinstance(result, SweepSpec) and result.n_runs <= 500:
        assert len(plan(result)) == result.n_runs  # what validates also plans


@SOME
@given(mutants())
def test_validate_command_exits_0_or_2_without_traceback(text):
    with tempfile.TemporaryDirectory() as folder:
        path = write_spec(Path(folder), text)
        result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert result.stderr.startswith("error: ") and str(path.name) in result.stderr
    else:
        assert "ok" in result.stdout


# ------------------------------------------------------------------ one kind of mistake at a time

REQUIRED = [("name",), ("task",), ("model",), ("axes",), ("task", "name"), ("model", "family")]
REQUIRED += [("axes", "model_size"), ("axes", "data_size")]


@SOME
@given(st.sampled_from(sorted(BASES)), st.sampled_from(REQUIRED))
def test_missing_required_field_is_named(base, path):
    message = refused(dump(set_path(base_data(base), path, ...)))
    assert ".".join(path) in message and "required" in message


SECTIONS = [(), ("training",), ("axes",), ("model",), ("task",), ("resources",), ("tracking",)]


@SOME
@given(st.sampled_from(sorted(BASES)), st.sampled_from(SECTIONS), st.text(min_size=1, max_size=20), any_value)
def test_unknown_field_is_refused_with_the_valid_ones(base, section, key, value):
    model_fields = _fields_of(section)
    assume(key not in model_fields)
    message = refused(dump(set_path(base_data(base), (*section, key), value)))
    assert "unknown field" in message and "valid fields here: " + ", ".join(model_fields) in message


def _fields_of(section: tuple[str, ...]) -> list[str]:
    model: Any = SweepSpec
    for part in section:
        model = model.model_fields[part].annotation
    return list(model.model_fields)


bad_sizes = st.one_of(
    st.just([]),
    st.lists(st.integers(min_value=-(10**12), max_value=0), min_size=1, max_size=4),
    st.lists(st.integers(min_value=MAX_SIZE + 1, max_value=10**40), min_size=1, max_size=3),
    st.integers(min_value=1, max_value=100).map(lambda v: [v, v]),  # duplicates
    words,
    st.floats(min_value=0.1, max_value=1e6).filter(lambda v: v != int(v)).map(lambda v: [v]),
)


@SOME
@given(st.sampled_from(sorted(BASES)), st.sampled_from(["model_size", "data_size"]), bad_sizes)
def test_bad_sizes_and_empty_axes_are_refused(base, axis, sizes):
    message = refused(dump(set_path(base_data(base), ("axes", axis), sizes)))
    assert f"axes.{axis}" in message


WRONG_TYPES: dict[tuple[str, ...], st.SearchStrategy] = {
    ("name",): st.one_of(st.integers(), st.lists(words, min_size=1), st.dictionaries(words, words, min_size=1)),
    ("training", "steps"): st.one_of(words, st.lists(st.integers(), min_size=1), st.just(2.5)),
    ("training", "batch_size"): st.one_of(words, st.dictionaries(words, st.integers(), min_size=1)),
    ("training", "lr"): st.one_of(words, st.lists(st.floats(), min_size=1)),
    ("training", "optimizer"): st.one_of(words.filter(lambda w: w not in ("adamw", "adam", "sgd")), st.integers()),
    ("axes", "seeds"): st.one_of(words, st.dictionaries(words, st.integers(), min_size=1), st.just([])),
    ("axes", "model_size"): st.one_of(words, st.integers(min_value=1), st.dictionaries(words, words, min_size=1)),
    ("task",): st.one_of(words, st.integers(), st.lists(words, min_size=1)),
    ("model",): st.one_of(words, st.integers(), st.lists(words, min_size=1)),
    ("task", "params"): st.one_of(words, st.lists(st.integers(), min_size=1)),
    ("grid",): st.one_of(words, st.lists(words, min_size=1)),
    ("phenomena",): st.one_of(st.integers(), st.lists(st.integers(), min_size=1)),
    ("observables",): st.one_of(words, st.lists(st.integers(), min_size=1)),
    ("max_retries",): st.one_of(words, st.integers(max_value=-1), st.integers(min_value=21)),
}


@SOME
@given(st.sampled_from(sorted(BASES)), st.sampled_from(sorted(WRONG_TYPES)), st.data())
def test_wrong_types_name_the_field(base, path, data):
    value = data.draw(WRONG_TYPES[path])
    message = refused(dump(set_path(base_data(base), path, value)))
    assert f'"{".".join(path)}' in message


HUGE: dict[tuple[str, ...], st.SearchStrategy] = {
    ("training", "steps"): st.integers(min_value=10**7 + 1, max_value=10**60),
    ("training", "batch_size"): st.integers(min_value=10**6 + 1, max_value=10**60),
    ("training", "lr"): st.floats(min_value=100.5, allow_infinity=True, allow_nan=False),
    ("training", "weight_decay"): st.floats(min_value=1000.5, allow_infinity=True, allow_nan=False),
    ("axes", "seeds"): st.integers(min_value=1001, max_value=10**60),
    ("max_retries",): st.integers(min_value=21, max_value=10**60),
    ("resources", "cpus_per_run"): st.floats(min_value=1025, allow_infinity=True, allow_nan=False),
    ("task", "params", "p"): st.integers(min_value=2001, max_value=10**60),
}


@SOME
@given(st.sampled_from(sorted(BASES)), st.sampled_from(sorted(HUGE)), st.data())
def test_huge_values_are_refused(base, path, data):
    value = data.draw(HUGE[path])
    message = refused(dump(set_path(base_data(base), path, value)))
    assert f'"{path[0]}' in message


@MANY
@given(st.sampled_from(sorted(BASES)), st.text(max_size=60))
def test_unicode_names_are_kept_exactly_or_refused_when_unprintable(base, name):
    text = dump(set_path(base_data(base), ("name",), name))
    name = yaml.safe_load(text)["name"]  # as YAML reads it back (a NEL, \x85, is a line break to YAML)
    result = outcome(text)
    if name.isprintable() and name.strip():
        assert isinstance(result, SweepSpec) and result.name == name
    else:
        assert isinstance(result, UserError) and 'field "name"' in str(result)


@SOME
@given(st.sampled_from(sorted(BASES)), st.sampled_from([("task", "name"), ("model", "family")]), st.text(min_size=1))
def test_unicode_registry_names_are_unknown_names(base, path, name):
    assume(name not in (*TASKS, *FAMILIES))  # a registered name (e.g. "superposition") is not unknown
    message = refused(dump(set_path(base_data(base), path, name)))
    assert "unknown" in message and "valid: " in message


@SOME
@given(st.one_of(st.lists(any_value), scalars))
def test_a_document_that_is_not_a_mapping_is_refused(document):
    message = refused(dump(document))
    assert "a spec is a YAML mapping" in message


@SOME
@given(st.binary(max_size=3000))
def test_binary_junk_file_is_refused(junk):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "junk.yaml"
        path.write_bytes(junk)
        with pytest.raises(UserError) as caught:
            load_spec(path)
    assert str(caught.value).startswith(str(path))


@SOME
@given(st.sampled_from(sorted(BASES)), st.binary(min_size=1, max_size=200), st.floats(0, 1))
def test_junk_spliced_into_a_spec_is_valid_or_a_clear_error(base, junk, where):
    raw = BASES[base].encode()
    cut = int(len(raw) * where)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / SOURCE
        path.write_bytes(raw[:cut] + junk + raw[cut:])
        try:
            load_spec(path)
        except UserError as error:
            assert str(error).startswith(str(path)) and "Traceback" not in str(error)


# ------------------------------------------------------------------ YAML anchors, aliases, bombs


def test_ordinary_anchors_and_aliases_still_work():
    text = BASES["tiny"].replace("  lr: 0.01", "  lr: &lr 0.01") + "grid:\n  training.weight_decay: [*lr, 1.0]\n"
    spec = parse_spec(text)
    assert spec.grid == {"training.weight_decay": [0.01, 1.0]}


def laughs(width: int, depth: int) -> tuple[str, int]:
    """A flow list of `depth` anchored levels, each `width` aliases of the last; and its expanded size."""
    levels = ["&l0 [" + ", ".join(["lol"] * width) + "]"]
    sizes = [1 + width]
    for k in range(1, depth):
        levels.append(f"&l{k} [" + ", ".join([f"*l{k - 1}"] * width) + "]")
        sizes.append(1 + width * sizes[-1])
    return "[" + ", ".join(levels) + "]", 1 + sum(sizes)


PLACES = ["name: {bomb}", "description: {bomb}", "grid: {{training.lr: {bomb}}}", "laughs: {bomb}"]


@SOME
@given(st.sampled_from(sorted(BASES)), st.integers(2, 12), st.integers(2, 12), st.sampled_from(PLACES))
def test_alias_bombs_are_refused_before_expanding(base, width, depth, place):
    bomb, expanded = laughs(width, depth)
    assume(abs(expanded - safe_yaml.MAX_VALUES) > 500)  # the rest of the spec is a few dozen values
    text = BASES[base] + "\n" + place.format(bomb=bomb) + "\n"  # a repeated key: YAML keeps the last
    message = refused(text)
    assert ("anchors and aliases" in message) == (expanded > safe_yaml.MAX_VALUES)


def test_billion_laughs_is_refused_by_the_cli_without_a_traceback(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)]
    path = write_spec(tmp_path, "\n".join(lines) + "\n")
    result = cli("validate", str(path), cwd=tmp_path, timeout=120)  # 9**9 values if expanded: would not return
    assert result.returncode == 2
    assert "anchors and aliases" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["\n", " ", "\t", "grok\nking", "a\x00b", {"name": "\n"}])
def test_a_blank_or_control_phenomenon_name_is_one_clear_line(name):
    """Found by the mutation test: a phenomenon named "\\n" was echoed raw into the message."""
    data = base_data("tiny")
    data["phenomena"] = ["generalization_gap", name]
    assert "phenomenon name must be printable" in refused(dump(data))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a: &a [*a]\n", "recursive"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nests deeper"),
        ("a: " + "{b: " * 2000 + "1" + "}" * 2000 + "\n", "nests deeper"),
        ("name: *nowhere\n", "not valid YAML"),
        ("---\nname: a\n---\nname: b\n", "not valid YAML"),
    ],
)
def test_odd_yaml_structures_are_clear_errors(text, expected):
    assert expected in refused(text)


@pytest.mark.skipif(safe_yaml._LOADER is yaml.SafeLoader, reason="PyYAML without libyaml")
@pytest.mark.parametrize(
    "text, expected",
    [
        ("a: " + "[" * 70 + "]" * 70 + "\n", "nests deeper than 64 levels"),
        ("a: " + "[" * 1500 + "]" * 1500 + "\n", "nests deeper than 64 levels"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_nesting_check_is_scalesweeps_own_whatever_libyaml_refuses(monkeypatch, text, expected):
    """PyYAML >= 6.0.4's libyaml refuses deep flow nesting itself, in its own words, before the
    first event: the message stays scalesweep's. Simulated (libyaml refuses every document), so
    this holds with any installed PyYAML; real bad YAML is still "not valid YAML"."""
    real_parse = yaml.parse

    def libyaml_refuses(text, Loader=yaml.Loader):
        if Loader is not yaml.SafeLoader:
            raise yaml.scanner.ScannerError("while increasing flow level", None, "exceeded maximum nesting depth")
        return real_parse(text, Loader=Loader)

    monkeypatch.setattr(safe_yaml.yaml, "parse", libyaml_refuses)
    with pytest.raises(UserError) as caught:
        safe_yaml.load(text, SOURCE)
    assert expected in str(caught.value) and "maximum nesting depth" not in str(caught.value)


# ------------------------------------------------------------------ a handful through a real process


@pytest.mark.parametrize(
    "content",
    [b"\x00\x01\xfe\xff binary", b"- just\n- a list\n", b"name: [unclosed\n", "名前: スイープ\n".encode()],
)
def test_cli_prints_one_error_line_and_exits_2(tmp_path, content):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    result = cli("validate", str(path), cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


# ------------------------------------------------------------------ grid size: counted, confirmed


def sized_spec(n_widths: int, n_sizes: int, seeds: int) -> str:
    data = base_data("tiny")
    data["task"]["params"]["p"] = 97  # 9,408 training pairs: room for every data size below
    data["axes"] = {"model_size": list(range(1, n_widths + 1)), "data_size": list(range(1, n_sizes + 1))}
    data["axes"]["seeds"] = seeds
    return dump(data)


@SOME
@given(
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(1, 3),
    st.lists(st.sampled_from(["training.lr", "training.weight_decay", "model.params.depth"]), unique=True),
    st.integers(1, 3),
)
def test_run_count_is_the_planned_count(n_widths, n_sizes, seeds, dims, n_values):
    data = yaml.safe_load(sized_spec(n_widths, n_sizes, seeds))
    data["grid"] = {dim: list(range(1, n_values + 1)) for dim in dims}
    spec = parse_spec(dump(data))
    assert spec.n_runs == len(plan(spec)) == len({run.run_key for run in plan(spec)})


def test_more_than_10000_runs_needs_yes(tmp_path):
    path = write_spec(tmp_path, sized_spec(MAX_RUNS_WITHOUT_CONFIRM + 1, 1, 1))
    result = cli_here("run", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "10,001 runs" in result.stderr and "pass --yes" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before touching the store


def test_a_ten_million_run_grid_is_counted_not_expanded(tmp_path):
    path = write_spec(tmp_path, sized_spec(1000, 100, 100))  # 10**7 runs: gigabytes if expanded
    runner = CliRunner()
    checked = runner.invoke(app, ["validate", str(path)])
    assert checked.exit_code == 0 and "10000000 runs" in checked.stdout
    listed = runner.invoke(app, ["plan", str(path)])
    assert listed.exit_code == 2 and "10,000,000 runs" in listed.stderr and "--yes" in listed.stderr
    ran = runner.invoke(app, ["run", str(path)])
    assert ran.exit_code == 2 and "pass --yes to run it" in ran.stderr


def test_more_than_a_billion_runs_is_refused_outright():
    message = refused(sized_spec(1000, 1000, 1000) + "grid: {training.lr: [0.1, 0.2]}\n")
    assert "2,000,000,000 runs" in message


# ------------------------------------------------------------------ a corrupt or half-written mlflow.db


@pytest.fixture(scope="module")
def real_store(tmp_path_factory) -> bytes:
    """The bytes of a real, fresh MLflow sqlite store (tables created by MLflow itself)."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("store")
    MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").create_experiment("scalesweep/tiny")
    return (folder / "mlflow.db").read_bytes()


def damaged(real_store: bytes, damage: str) -> bytes:
    if damage == "random bytes":
        return os.urandom(len(real_store) // 4)
    return real_store[: len(real_store) // 2]  # "half-written"


@pytest.mark.parametrize("damage", ["random bytes", "half-written"])
def test_corrupt_store_is_a_clear_error_for_run_status_report(workdir, real_store, damage):
    content = damaged(real_store, damage)
    (workdir / "mlflow.db").write_bytes(content)
    path = write_spec(workdir, TINY_SPEC.format(name="tiny", steps=20))
    for command in ("status", "report", "run"):
        result = CliRunner().invoke(app, [command, str(path)])
        assert result.exit_code == 2, (command, result.output, result.exception)
        assert "is not a readable MLflow sqlite store" in result.stderr and "move it aside" in result.stderr
    assert (workdir / "mlflow.db").read_bytes() == content  # left as it was, for the user to inspect


def test_corrupt_store_reaches_the_terminal_without_a_traceback(workdir, real_store):
    (workdir / "mlflow.db").write_bytes(damaged(real_store, "half-written"))
    path = write_spec(workdir, TINY_SPEC.format(name="tiny", steps=20))
    result = cli("status", str(path), cwd=workdir, timeout=300)
    assert result.returncode == 2
    assert "is not a readable MLflow sqlite store" in result.stderr and "Traceback" not in result.stderr
