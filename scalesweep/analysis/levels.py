"""Where in the network a phenomenon looks: its level, for the report to group by.

Each built-in observable declares a level (`observables.LEVELS`: neuron, weight,
representation, attention, output) and the columns it records. A phenomenon's
level is that of the columns its expressions use (`expressions.names`): the
grokking delay reads `steps_to_fit_*` (output), Fourier sparsity reads the
embedding (weight). A phenomenon over columns no observable records (a CSV
table's, a user observable's) is of level `OTHER`.

The report must open without torch (a record's or a CSV table's report imports
no torch, MLflow or Ray), and the registry lives beside the torch code in
`observables.py`. So the columns of each level are copied here, and
`tests/test_report_levels.py` asserts that this copy and
`observables.levels_of` agree for every registered column: a new observable
that is not added here fails that test, it does not silently land in "other".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from scalesweep.analysis import expressions
from scalesweep.analysis.phenomena import Phenomenon

LEVELS = ("neuron", "weight", "representation", "attention", "output")
OTHER = "other"

# level -> the columns its observables record; "x.<layer>" / "x.<param>" stand for per-layer columns x.NAME
COLUMNS: dict[str, tuple[str, ...]] = {
    "neuron": ("dead_fraction", "hyperactive_fraction", "nonlinear_rate"),
    "weight": (
        "weight_norm",
        "grad_norm",
        "final_grad_norm",
        "features_per_dim",
        "sharpness",
        "weight_alpha",
        "stable_rank",
        "weight_alpha.<param>",
        "stable_rank.<param>",
        "weight_displacement",
        "weight_displacement.<param>",
        "fourier_sparsity",
        "fourier_key_frequencies",
    ),
    "representation": (
        "activation_rms",
        "activation_rms_init",
        "activation_rms_final",
        "activation_rms_final.<layer>",
        "effective_rank",
        "anisotropy",
        "anisotropy.<layer>",
        "rankme",
        "nc1",
    ),
    "attention": (
        "induction_score",
        "attention_entropy_mean",
        "attention_entropy_min",
        "attention_entropy_max",
        "attention_sink_mean",
        "attention_sink_max",
    ),
    "output": (
        "train_loss",
        "test_loss",
        "final_train_loss",
        "final_test_loss",
        "train_acc",
        "test_acc",
        "final_train_acc",
        "final_test_acc",
        "steps_to_fit_train",
        "steps_to_fit_test",
        "grokking_delay",
        "fit_train",
        "fit_test",
        "step_budget",
        "loss_spikes",
        "memorization_bits",
        "memorization_bits_per_param",
    ),
}


def levels_of(columns: Iterable[str]) -> list[str]:
    """The levels (in `LEVELS` order) whose observables record any of `columns`; the same rule as
    `observables.levels_of` (a per-layer column `x.NAME` counts as the pattern `x.<layer>`)."""
    wanted = {str(c) for c in columns}
    wanted |= {c.split(".", 1)[0] for c in wanted if "." in c}
    return [level for level in LEVELS if wanted & {c.split(".<", 1)[0] for c in COLUMNS[level]}]


def columns_of(ph: Phenomenon) -> set[str]:
    """The columns (and step series) a phenomenon's expressions read, its parameters left out."""
    used = set().union(*(expressions.names(expr) for expr in ph.expressions_used()))
    return used - set(ph.params)


def level_of(ph: Phenomenon) -> str:
    """A phenomenon's level: the first (in `LEVELS` order: innermost first) of the levels of the
    columns it reads, or `OTHER` when no built-in observable records any of them."""
    found = levels_of(columns_of(ph))
    return found[0] if found else OTHER


def by_level(phenomena: Sequence[Phenomenon]) -> list[tuple[str, list[Phenomenon]]]:
    """(level, its phenomena in their given order) for each level that has one, in `LEVELS`
    order, `OTHER` last."""
    groups: dict[str, list[Phenomenon]] = {}
    for ph in phenomena:
        groups.setdefault(level_of(ph), []).append(ph)
    return [(level, groups[level]) for level in (*LEVELS, OTHER) if level in groups]
