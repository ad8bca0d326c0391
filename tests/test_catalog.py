"""`scalesweep list` and docs/zoo.md: every task, family, observable and phenomenon, with its
parameters, defaults and one line, read from the registries and the phenomenon catalog."""

from __future__ import annotations

import pytest
from rich.console import Console
from typer.testing import CliRunner

from scalesweep import catalog, cli
from scalesweep.analysis.phenomena import list_phenomena
from scalesweep.observables import LEVELS, OBSERVABLES
from scalesweep.zoo import FAMILIES, TASKS
from tests.conftest import REPO


def listed(monkeypatch, *args: str) -> tuple[int, str]:
    """`scalesweep list ARGS` in-process, on a console wide enough that no cell wraps."""
    monkeypatch.setattr(cli, "out", Console(width=400, no_color=True, highlight=False))
    result = CliRunner().invoke(cli.app, ["list", *args])
    return result.exit_code, result.output


def row(output: str, name: str) -> str:
    """The first table line of the entry `name` (its first parameter is on it)."""
    return next(line for line in output.splitlines() if line.startswith(f"│ {name} "))


def test_list_tasks_shows_each_task_with_parameters_defaults_and_a_line(monkeypatch):
    code, output = listed(monkeypatch, "tasks")
    assert code == 0
    assert {name for name in TASKS if f"│ {name} " in output} == set(TASKS)
    line = row(output, "modular_arithmetic")
    assert "p = 97: the modulus (a prime for ÷)" in line and "(a op b) mod p (Power et al. 2022)." in line
    assert "grokking (Power et al. 2022)" in line  # known for
    assert 'op = "+"' in output
    assert "n_bits = 40: input bits n" in row(output, "sparse_parity")
    assert "span = 10: length of the repeated span" in output and "seq_len = 64" in output
    assert "families" not in output.lower().split("tasks")[0]  # one kind only


def test_list_families_shows_the_width_knob_and_parameters(monkeypatch):
    code, output = listed(monkeypatch, "families")
    assert code == 0
    line = row(output, "transformer")
    assert "n_layers = 2" in line and "d_model" in line and "A small pre-LayerNorm GPT" in line
    assert "attention_only = false: no MLP blocks" in output and "n_heads = 4" in output
    assert "depth = 2: hidden layers" in row(output, "mlp") and "width" in row(output, "mlp")
    assert 'readout = "relu"' in row(output, "tms") and "hidden dims m" in row(output, "tms")
    assert {name for name in FAMILIES if f"│ {name} " in output} == set(FAMILIES)


def test_list_observables_shows_level_kind_columns_and_a_line(monkeypatch):
    code, output = listed(monkeypatch, "observables")
    assert code == 0
    for name, ob in OBSERVABLES.items():
        line = row(output, name)
        assert ob.level in line and ob.columns[0] in line and ob.description[:30] in line
    assert "attention" in row(output, "induction_score") and "neuron" in row(output, "dead_fraction")
    assert "init + step + summary" in row(output, "activation_rms")
    assert "steps_to_fit_train" in row(output, "fit_steps")


def test_list_phenomena_shows_params_thresholds_strength_and_regimes(monkeypatch):
    code, output = listed(monkeypatch, "phenomena")
    assert code == 0
    assert {name for name in list_phenomena() if f"│ {name} " in output} == set(list_phenomena())
    line = row(output, "grokking")
    assert (
        "gap = 1000" in line and "grokking_delay" in line and "comprehension, grokking, memorization, confusion" in line
    )
    assert "Delayed generalization" in line and "presence = 0.3" in output and "min_effect = 0.2" in output
    assert "final_train_acc - final_test_acc" in row(output, "generalization_gap")


def test_list_without_a_kind_shows_all_four_and_a_wrong_kind_is_one_paragraph(monkeypatch):
    code, output = listed(monkeypatch)
    assert code == 0
    for title in catalog.TITLES.values():
        assert title.replace("`", "").split(" (")[0] in output
    assert "│ sharpness " in output and "│ teacher_student " in output and "│ rank_collapse " in output
    result = CliRunner().invoke(cli.app, ["list", "famlies"])
    assert result.exit_code == 2 and 'did you mean "families"' in result.output


def test_every_observable_has_a_level_columns_and_a_description():
    for name, ob in OBSERVABLES.items():
        assert ob.level in LEVELS and ob.columns and ob.description, name


@pytest.mark.parametrize("text, first", [
    ("Delayed generalization (Power et al. 2022; Liu et al. 2022): late. More here.",
     "Delayed generalization (Power et al. 2022; Liu et al. 2022): late."),
    ("(a op b) mod p (Power et al. 2022). Knobs: `p`.", "(a op b) mod p (Power et al. 2022)."),
    ("one line without a stop", "one line without a stop"),
])  # fmt: skip
def test_first_sentence_does_not_stop_at_et_al(text, first):
    assert catalog.first_sentence(text) == first


def test_docs_zoo_md_is_the_generated_list():
    """docs/zoo.md is `scalesweep list --markdown`; regenerate it when a registry changes."""
    assert (REPO / "docs" / "zoo.md").read_text(encoding="utf-8") == catalog.markdown(), (
        "docs/zoo.md is stale: run `scalesweep list --markdown > docs/zoo.md`"
    )
    page = catalog.markdown()
    for name in [*TASKS, *FAMILIES, *OBSERVABLES, *list_phenomena()]:
        assert f"| `{name}` |" in page, name
