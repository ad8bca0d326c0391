"""`validate` catches, before any compute is spent, what `report` would fail on after the sweep.

Before scalesweep/checks.py, a misspelt phenomenon (`grokkking`) passed `validate`, `plan` and
`run` and failed only at `report`; a spec asking for `grokking` without the `fit_steps`
observable ran to the end and then failed with "unknown column grokking_delay".
"""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from scalesweep.cli import app
from scalesweep.errors import UserError
from scalesweep.spec import load_spec
from tests.conftest import REPO, TINY_SPEC, write_spec

OBSERVABLES_WITHOUT_FIT_STEPS = "observables: [loss, accuracy, weight_norm]\n"


def spec_text(phenomena: str = "", observables: str = "") -> str:
    text = TINY_SPEC.format(name="tiny", steps=60)
    if phenomena:
        text = text.split("phenomena:")[0] + phenomena
    return text + observables


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_a_misspelt_phenomenon_is_refused_with_did_you_mean(workdir):
    path = write_spec(workdir, spec_text("phenomena: [grokkking, generalization_gap]\n"))
    with pytest.raises(UserError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert str(path) in message and "phenomena[0]" in message
    assert 'unknown phenomenon "grokkking" (did you mean "grokking"?)' in message
    result = invoke("validate", str(path))
    assert result.exit_code == 2 and "did you mean" in result.output


def test_a_phenomenon_whose_observable_is_not_recorded_says_which_to_add(workdir):
    path = write_spec(workdir, spec_text(observables=OBSERVABLES_WITHOUT_FIT_STEPS))
    with pytest.raises(UserError, match=r"grokking_delay.*\(recorded by fit_steps\).*add `fit_steps` to observables"):
        load_spec(path)
    result = invoke("validate", str(path))
    assert result.exit_code == 2 and "add `fit_steps` to observables" in result.output


def test_every_missing_observable_is_named(workdir):
    text = spec_text("phenomena: [dead_units]\n", observables="observables: [loss, accuracy]\n")
    with pytest.raises(UserError, match="add `dead_fraction` to observables"):
        load_spec(write_spec(workdir, text))


def test_an_observable_that_reads_another_needs_it(workdir):
    text = spec_text("phenomena: [generalization_gap]\n", observables="observables: [loss, fit_steps]\n")
    with pytest.raises(UserError, match=r"fit_steps reads train_acc, test_acc.*add `accuracy` to observables"):
        load_spec(write_spec(workdir, text))


def test_run_refuses_before_anything_starts(workdir):
    path = write_spec(workdir, spec_text(observables=OBSERVABLES_WITHOUT_FIT_STEPS))
    started = time.monotonic()
    result = invoke("run", str(path))
    assert result.exit_code == 2 and "add `fit_steps`" in result.output
    assert time.monotonic() - started < 30
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlartifacts").exists()


def test_a_project_phenomenon_is_found_and_its_columns_checked(workdir):
    (workdir / "analysis").mkdir()
    (workdir / "analysis" / "slow_fit.yaml").write_text("strength: log10(steps_to_fit_test)\npresence: 2\n")
    (workdir / "analysis" / "typo.yaml").write_text("strength: final_tset_loss\n")
    assert load_spec(write_spec(workdir, spec_text("phenomena: [slow_fit]\n"))).phenomena == ["slow_fit"]
    with pytest.raises(UserError, match=r'final_tset_loss \(did you mean "final_test_loss"\?\), which no observable'):
        load_spec(write_spec(workdir, spec_text("phenomena: [typo]\n")))


def test_a_column_of_a_user_observable_cannot_be_known_so_it_is_allowed(workdir):
    (workdir / "analysis").mkdir()
    (workdir / "analysis" / "margin.yaml").write_text("strength: margin / n_params\n")
    text = spec_text("phenomena: [margin]\n", observables="observables: [loss, accuracy, mymetrics:margin]\n")
    assert load_spec(write_spec(workdir, text)).phenomena == ["margin"]
    with pytest.raises(UserError, match="margin"):
        load_spec(write_spec(workdir, spec_text("phenomena: [margin]\n")))


def test_params_axes_and_grid_columns_are_known(workdir):
    (workdir / "analysis").mkdir()
    (workdir / "analysis" / "wd.yaml").write_text("strength: weight_decay * model_size + k + compute\nparams: {k: 1}\n")
    text = spec_text("phenomena: [{name: wd, params: {k: 2}}]\n") + "grid:\n  training.weight_decay: [0.1, 1.0]\n"
    assert load_spec(write_spec(workdir, text)).phenomena[0].name == "wd"


def test_every_shipped_sweep_validates():
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        if not path.name.endswith(".refine.yaml"):
            load_spec(path)


def test_validate_stays_fast(workdir):
    path = write_spec(workdir, spec_text())
    load_spec(path)  # imports once
    started = time.perf_counter()
    for _ in range(5):
        load_spec(path)
    assert (time.perf_counter() - started) / 5 < 0.5
