"""Security: input can describe a study, never run code or reach outside what the user named.

YAML is read only with safe loaders; phenomenon formulas are a small arithmetic
language, not Python; `scalesweep ui` binds 127.0.0.1 unless told otherwise;
a user observable is imported only when the spec names it; relative paths in a
spec stay inside the working directory; the report escapes spec and run strings.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import scalesweep
from scalesweep.analysis import expressions
from scalesweep.analysis.classify import classify_runs
from scalesweep.analysis.phenomena import load_phenomenon
from scalesweep.analysis.report import ReportHeader, write_report
from scalesweep.cli import app
from scalesweep.errors import UserError
from scalesweep.plan import plan
from scalesweep.spec import parse_spec
from scalesweep.store import ui_command
from scalesweep.train import train_to_result
from tests.conftest import TINY_SPEC, write_spec

GOOD = TINY_SPEC.format(name="tiny", steps=20)
PACKAGE = Path(scalesweep.__file__).parent

# ------------------------------------------------------------------ YAML: safe loaders only

PYTHON_TAGS = [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:os.system ['touch {marker}']",
    "!!python/object/apply:subprocess.call [['touch', '{marker}']]",
    "!!python/name:os.system",
    "!!python/module:os",
]


@pytest.mark.parametrize("tag", PYTHON_TAGS)
def test_python_tags_in_a_spec_are_refused_and_never_run(workdir, tag):
    marker = workdir / "pwned"
    for text in (tag.format(marker=marker), GOOD + f"\ndescription: {tag.format(marker=marker)}\n"):
        with pytest.raises(UserError, match="not valid YAML .*could not determine a constructor"):
            parse_spec(text, source="evil.yaml")
    assert not marker.exists()


def test_python_tag_through_the_cli_is_a_clear_error(workdir):
    marker = workdir / "pwned"
    path = write_spec(workdir, PYTHON_TAGS[0].format(marker=marker))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "could not determine a constructor" in result.stderr
    assert not marker.exists()


def test_python_tags_in_a_phenomenon_file_are_refused(workdir):
    marker = workdir / "pwned"
    path = workdir / "evil.yaml"
    path.write_text(f"strength: a\ndescription: {PYTHON_TAGS[0].format(marker=marker)}\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_phenomenon(str(path))
    assert not marker.exists()


UNSAFE_YAML = re.compile(
    r"yaml\.(unsafe_load|full_load|load_all|unsafe_load_all|full_load_all)\b|"
    r"yaml\.C?(Unsafe|Full)?Loader\b|yaml\.CLoader\b|Loader\s*=\s*yaml\.(Unsafe|Full)?Loader\b"
)


def test_the_package_reads_yaml_only_with_safe_loaders():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            direct_load = re.search(r"(?<![\w.])yaml\.load\(", line) and path.name != "safe_yaml.py"
            if UNSAFE_YAML.search(line) or direct_load:
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, "YAML must go through yaml.safe_load or scalesweep.safe_yaml:\n" + "\n".join(offenders)


# ------------------------------------------------------------------ phenomenon formulas are not Python

DF = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
ESCAPES = [
    "__import__('os').system('touch {marker}')",
    "__import__('os')",
    "a.__class__",
    "a.__class__.__base__.__subclasses__()",
    "(1).__class__",
    "a[0]",
    "b[::-1]",
    "lambda: 1",
    "(lambda: 1)()",
    "[x for x in a]",
    "{{x: 1 for x in a}}",
    "(x for x in a)",
    "(x := 1)",
    "a if b else 1",
    "f'{{a}}'",
    "'text'",
    "eval('1')",
    "exec('import os')",
    "open('/etc/passwd')",
    "getattr(a, 'real')",
    "log(a).real",
    "np.load('x')",
    "log(a, base=2)",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_expressions_cannot_run_python(workdir, template):
    expr = template.format(marker=workdir / "pwned")
    with pytest.raises(UserError, match="invalid expression") as caught:
        expressions.evaluate(expr, DF)
    assert "\n" not in str(caught.value)
    assert not (workdir / "pwned").exists()


def test_a_phenomenon_file_with_code_is_refused_when_loaded(workdir):
    path = workdir / "sneaky.yaml"
    path.write_text("strength: \"__import__('os').system('touch pwned')\"\n")
    with pytest.raises(UserError, match=r"sneaky\.yaml.*invalid expression"):
        load_phenomenon(str(path))
    assert not (workdir / "pwned").exists()


@pytest.mark.parametrize("expr", ["-" * 1500 + "a", "not " * 480 + "a", "+".join(["a"] * 900), "a" * 5000])
def test_deep_or_huge_expressions_are_clear_errors(expr):
    with pytest.raises(UserError, match="invalid expression"):
        expressions.evaluate(expr, DF)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_a_value_or_a_clear_error(expr):
    try:
        value = expressions.evaluate(expr, DF)
    except UserError as error:
        assert str(error).startswith(("invalid expression", "expression ")), str(error)
    else:
        assert len(np.asarray(value)) == len(DF)


# ------------------------------------------------------------------ the UI binds 127.0.0.1


def captured_ui_command(monkeypatch, *args: str) -> list[str]:
    """The command line `scalesweep ui ARGS` would run, without starting it."""
    seen: list[list[str]] = []
    monkeypatch.setattr("scalesweep.cli.serve_ui", lambda command, probe, url: seen.append(command) or 0)
    result = CliRunner().invoke(app, ["ui", *args])
    assert result.exit_code == 0, result.output
    (command,) = seen
    return command


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_ui_binds_localhost_unless_told_otherwise(workdir, monkeypatch):
    command = captured_ui_command(monkeypatch)
    assert "ui" in command and _option(command, "--host") == "127.0.0.1"
    uri = f"sqlite:///{workdir.resolve() / 'mlflow.db'}"
    assert command == ui_command(uri, "127.0.0.1", 5000)
    told = captured_ui_command(monkeypatch, "--host", "0.0.0.0", "--port", "5055")
    assert _option(told, "--host") == "0.0.0.0" and _option(told, "--port") == "5055"


# ------------------------------------------------------------------ user observables: only when named


@pytest.fixture
def marker_module(workdir, monkeypatch) -> tuple[str, Path]:
    """A module that leaves a file behind when imported, with a summary function `margin`."""
    name = f"user_obs_{uuid.uuid4().hex[:8]}"
    marker = workdir / "imported"
    (workdir / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n\n"
        "def margin(history, ctx):\n    return {'user_margin': 0.5}\n"
    )
    monkeypatch.syspath_prepend(str(workdir))
    yield name, marker
    sys.modules.pop(name, None)


def _one_run(text: str):
    return plan(parse_spec(text))[0]


def test_user_observable_is_not_imported_unless_named(marker_module):
    name, marker = marker_module
    history, summary = train_to_result(_one_run(GOOD))
    assert len(history) and "user_margin" not in summary
    assert not marker.exists()


def test_validating_a_spec_that_names_it_does_not_import_it(marker_module, workdir):
    name, marker = marker_module
    path = write_spec(workdir, GOOD + f"observables: [loss, accuracy, fit_steps, '{name}:margin']\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert not marker.exists()  # validation checks the form module:function, it runs nothing


def test_user_observable_is_imported_when_the_spec_names_it(marker_module):
    name, marker = marker_module
    _, summary = train_to_result(_one_run(GOOD + f"observables: [loss, accuracy, fit_steps, '{name}:margin']\n"))
    assert marker.exists() and summary["user_margin"] == 0.5


@pytest.mark.parametrize("observable", ["../evil:f", "os.path:", ":f", "a b:f", "/tmp/x.py:f", "x:f:g"])
def test_user_observable_must_be_module_colon_function(observable):
    with pytest.raises(UserError, match="module:function"):
        parse_spec(GOOD + f"observables: ['{observable}']\n", source="spec.yaml")


# ------------------------------------------------------------------ paths stay inside the working directory


def with_phenomenon(name: str) -> str:
    return GOOD.split("phenomena:")[0] + f"phenomena:\n  - name: {name!r}\n"


def with_uri(uri: str) -> str:
    return GOOD + f"tracking: {{uri: {uri!r}}}\n"


@pytest.mark.parametrize("name", ["../outside.yaml", "sub/../../outside.yml", "./../../etc/x.yaml"])
def test_relative_phenomenon_file_outside_the_workdir_is_refused(workdir, name):
    with pytest.raises(UserError, match="leads outside the working directory.*absolute path"):
        parse_spec(with_phenomenon(name), source="spec.yaml")


def test_phenomenon_files_inside_or_absolute_are_allowed(workdir, tmp_path_factory):
    (workdir / "mine").mkdir()
    (workdir / "mine" / "gap.yaml").write_text("strength: final_train_acc - final_test_acc\n")
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "gap.yaml"
    elsewhere.write_text("strength: final_train_acc - final_test_acc\n")
    for name in ("mine/gap.yaml", "mine/../mine/gap.yaml", str(elsewhere)):
        ref = parse_spec(with_phenomenon(name)).phenomenon_refs[0]
        assert load_phenomenon(ref.name).strength == "final_train_acc - final_test_acc"


def test_a_symlink_out_of_the_workdir_is_refused(workdir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "gap.yaml"
    elsewhere.write_text("strength: final_train_acc - final_test_acc\n")
    (workdir / "link.yaml").symlink_to(elsewhere)
    with pytest.raises(UserError, match="leads outside the working directory"):
        parse_spec(with_phenomenon("link.yaml"))


@pytest.mark.parametrize(
    "uri, allowed",
    [
        ("sqlite:///mlflow.db", True),
        ("sqlite:///runs/sub/mlflow.db", True),
        ("sqlite:////var/tmp/scalesweep/mlflow.db", True),  # absolute: explicit
        ("sqlite:///../mlflow.db", False),
        ("sqlite:///runs/../../mlflow.db", False),
        ("file:../mlruns", False),
        ("../mlruns", False),
        ("mlruns", True),
        ("http://127.0.0.1:5000", True),
        ("https://mlflow.example.org", True),
    ],
)
def test_tracking_store_paths_stay_inside_the_workdir(workdir, uri, allowed):
    if allowed:
        assert parse_spec(with_uri(uri)).tracking.uri == uri
    else:
        with pytest.raises(UserError, match='field "tracking.uri".*leads outside the working directory'):
            parse_spec(with_uri(uri), source="spec.yaml")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["..", ".", "a", "b", "c.yaml"]), min_size=1, max_size=6))
def test_a_relative_path_is_refused_exactly_when_it_climbs_out(parts):
    relative = "/".join(parts) + "/x.yaml"
    try:
        parse_spec(with_phenomenon(relative))
        refused = False
    except UserError as error:
        # A path inside is checked further (scalesweep/checks.py): x.yaml does not exist.
        refused = "leads outside the working directory" in str(error)
        assert refused or "phenomenon file" in str(error) and "does not exist" in str(error)
    assert refused == (os.path.normpath(relative).split("/")[0] == ".."), relative


# ------------------------------------------------------------------ the report escapes spec and run strings

EVIL = "<script>alert(1)</script>"


def test_report_escapes_spec_and_run_strings(workdir):
    spec = parse_spec(GOOD.replace("name: tiny", f"name: {EVIL!r}") + f"description: {EVIL!r}\n")
    gen = np.random.default_rng(0)
    rows = [
        dict(
            run_id=f"{i:032x}",
            run_name=f"{EVIL} w={w} n={n} seed={seed}",
            status="FINISHED",
            model_size=w,
            data_size=n,
            seed=seed,
            final_train_acc=1.0,
            final_test_acc=min(0.99, 0.3 + 0.2 * np.log2(n / 30) + gen.normal(0, 0.02)),
        )
        for i, (w, n, seed) in enumerate((w, n, s) for w in (8, 16, 32) for n in (30, 60, 120) for s in (0, 1))
    ]
    runs = pd.DataFrame(rows)
    phenomena = [load_phenomenon("generalization_gap")]
    verdicts = classify_runs(runs, phenomena, axes=["model_size", "data_size"], grid=[], seed="seed", n_boot=20)
    study = ReportHeader(
        title=f"scalesweep report: {spec.name}",
        axes=["model_size", "data_size"],
        runs_finished=len(runs),
        notes=[spec.description],
        failed_runs=[(f"{EVIL} w=64", EVIL)],
    )
    page = write_report(workdir / "report", study, runs, phenomena, verdicts).read_text(encoding="utf-8")
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, as text
