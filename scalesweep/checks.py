"""Checks of a validated spec against the registries, before any compute is spent.

`spec.py` checks a spec's shape (pydantic); this module checks what it names
against what exists, so that `validate` (and `run`, `plan`, ... which all load
the spec the same way) catch the mistakes that would otherwise surface only
at `report`, after the sweep has run:

* every phenomenon must be in the catalog (the project's `analysis/`, then the
  built-in one) or be a readable phenomenon file, with "did you mean";
* every column a phenomenon's expressions use must be recorded: a column that
  a built-in observable writes needs that observable in `observables` ("add
  `fit_steps` to observables"); a column that nothing writes (no observable,
  no axis, no grid dimension, no column every run records) is refused unless
  the spec has a user observable (`module:function`), whose columns cannot be
  known without importing it;
* an observable that reads another one's step series (e.g. `fit_steps` reads
  `train_acc` / `test_acc`, written by `accuracy`) needs that one too.
* an observable the spec lists must apply to its task and model family (the
  families / tasks its registry entry declares): attention entropy of an MLP,
  or Fourier sparsity off modular arithmetic, is refused with what is valid.

Only file reads and the registries: no torch work, no MLflow, no Ray, so
`validate` stays fast.
"""

from __future__ import annotations

from scalesweep.errors import UserError, did_you_mean

# Columns every run of a sweep has in its runs table, whatever its observables:
# the axes and run facts (tags), what the trainer adds to every summary, and what
# the analysis derives (compute, an IsoFLOP point's budget).
ALWAYS_RECORDED = frozenset(
    {
        "model_size",
        "data_size",
        "seed",
        "n_params",
        "diverged",
        "train_seconds",
        "ensemble_size",
        "compute",
        "budget",
        "run_key",
        "abandoned",
    }
)

# Observables whose summary reads another observable's step series (else it is
# silently NaN): name -> (the observable it needs, the columns it reads).
READS = {
    "fit_steps": ("accuracy", ("train_acc", "test_acc")),
    "loss_spikes": ("loss", ("train_loss",)),
}


def check_spec(spec, source: str) -> None:
    """Refuse, in one paragraph naming `source` and the field, what `report` would fail on later."""
    _check_observable_inputs(spec, source)
    _check_observables_apply(spec, source)
    _check_phenomena(spec, source)


def _check_observable_inputs(spec, source: str) -> None:
    listed = set(spec.observables)
    for name in spec.observables:
        if name in READS and READS[name][0] not in listed:
            needed, columns = READS[name]
            raise UserError(
                f'{source}: field "observables": {name} reads {", ".join(columns)}, which observable '
                f"{needed} records; add `{needed}` to observables."
            )


def _check_observables_apply(spec, source: str) -> None:
    """An observable the spec lists for a family or task it does not apply to (attention entropy of
    an MLP, Fourier sparsity off modular arithmetic) would only record NaN: refuse it. The default
    list is not checked: it is meant for every family, NaN where a model lacks what one reads."""
    if "observables" not in spec.model_fields_set:
        return
    from scalesweep.observables import OBSERVABLES, does_not_apply

    task, family = spec.task.name, spec.model.family
    for i, name in enumerate(spec.observables):
        why = does_not_apply(name, task, family)
        if why is None:
            continue
        valid = [n for n in OBSERVABLES if does_not_apply(n, task, family) is None]
        raise UserError(
            f'{source}: field "observables[{i}]": observable {name} does not apply to task {task} with model '
            f"family {family}: {why}. Remove it, or use the {' or '.join(OBSERVABLES[name].families) or family} family"
            f"{' on ' + ', '.join(OBSERVABLES[name].tasks) if OBSERVABLES[name].tasks else ''}; observables "
            f"valid here: {', '.join(valid)}."
        )


def recorders() -> dict[str, list[str]]:
    """Which built-in observables record each column: {column: [observable, ...]}."""
    from scalesweep.observables import OBSERVABLES

    by_column: dict[str, list[str]] = {}
    for name, observable in OBSERVABLES.items():
        for column in observable.columns:
            by_column.setdefault(column, []).append(name)
    return by_column


def _check_step_series(ph, source: str, field: str) -> None:
    """A step function (first_step, series_max, ...) must read step series: a column some observable
    logs at every evaluation, or `step`; a summary (one value per run) is refused."""
    from scalesweep.analysis import expressions, series
    from scalesweep.observables import OBSERVABLES

    stepwise = {"step"} | {c for ob in OBSERVABLES.values() for c in ob.step_columns}
    in_series: set[str] = set()
    for expr in ph.expressions_used():
        in_series |= series.series_names(expressions.parse(expr)) - set(ph.params)
    wrong = sorted(in_series - stepwise)
    if wrong:
        raise UserError(
            f'{source}: {field}: phenomenon "{ph.name}" applies a step function to {", ".join(wrong)}, which '
            f"no observable logs as a step series (a summary has one value per run); step series: "
            f"{', '.join(sorted(stepwise))}."
        )


def _check_phenomena(spec, source: str) -> None:
    from scalesweep.analysis import expressions
    from scalesweep.analysis.phenomena import load_phenomenon

    by_column = recorders()
    listed = set(spec.observables)
    has_user_observable = any(":" in name for name in spec.observables)
    known = ALWAYS_RECORDED | {path.split(".")[-1] for path in spec.grid}
    for i, ref in enumerate(spec.phenomenon_refs):
        field = f'field "phenomena[{i}]" ({ref.name})'
        try:
            ph = load_phenomenon(ref.name, overrides={"params": ref.params} if ref.params else None)
        except UserError as err:
            raise UserError(f"{source}: {field}: {err}") from None
        _check_step_series(ph, source, field)
        used = sorted({name for expr in ph.expressions_used() for name in expressions.names(expr)} - set(ph.params))
        missing: dict[str, list[str]] = {}  # observable -> the columns of it the phenomenon uses
        unknown = []
        for column in used:
            if column in known:
                continue
            writers = by_column.get(column)
            if writers is None:
                unknown.append(column)
            elif not listed & set(writers):
                missing.setdefault(writers[0], []).append(column)
        if missing:
            uses = "; ".join(f"{', '.join(cols)} (recorded by {obs})" for obs, cols in missing.items())
            adds = " and ".join(f"`{obs}`" for obs in missing)
            raise UserError(
                f'{source}: {field}: phenomenon "{ph.name}" uses {uses}, which the spec does not record; '
                f"add {adds} to observables."
            )
        if unknown and not has_user_observable:
            valid = sorted(by_column)
            hints = "".join(did_you_mean(c, valid) for c in unknown)
            raise UserError(
                f'{source}: {field}: phenomenon "{ph.name}" uses {", ".join(unknown)}{hints}, which no observable '
                f"records (nor any axis or grid dimension); observables record: {', '.join(valid)}."
            )
