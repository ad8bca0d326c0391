"""Plain words for verdicts that do not decide: what more data would decide them.

The classifier's `reason` code says *why* a verdict is inconclusive (too few
points, too narrow a span, an interval too wide...; see `classify.REASONS`).
A researcher wants the next step instead: which runs to add. `advice` switches
on the code (never on the prose of `detail`, which may be reworded) and the
verdict's numbers, and says it in one short paragraph of plain text (the
report escapes it). Advice fits the table: a sweep gets "more seeds", a table
with one value per model gets "more models".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

MANY_SEEDS = 64  # beyond this, more seeds is not a practical answer


def advice(row: Mapping[str, Any], axis_values: Sequence[float], min_effect: float) -> str:
    """What would decide an inconclusive or flagged verdict; "" for a verdict that stands."""
    axis = str(row.get("axis", "the axis"))
    flag = _str(row.get("flag"))
    said = []
    if row.get("verdict") == "inconclusive":
        values = sorted(axis_values)
        rule = RULES.get(_str(row.get("reason")))
        said = [rule(row, axis, values, min_effect)] if rule else []
        left_out = _count(row.get("n_left_out"))
        if left_out:
            said.append(
                f"{left_out} run(s) had no finite strength (e.g. the event did not happen within the step budget); "
                "longer training would give them a value."
            )
        said = said or [f"More {_units(row)} per point and more points along {axis} would decide it."]
    if flag:
        said.append(_flag(flag))
    return " ".join(said)


def _str(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _count(value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    return int(number) if math.isfinite(number) else 0


def _replicated(row: Mapping[str, Any]) -> bool:
    return not _str(row.get("noise")).startswith("one value per model")


def _units(row: Mapping[str, Any]) -> str:
    return "seeds" if _replicated(row) else "models"


def _few_points(row, axis: str, values: Sequence[float], min_effect: float) -> str:
    return f"Measure at least 3 points along {axis} (it has {_count(row.get('n_points'))} with a finite strength)."


def _narrow(row, axis: str, values: Sequence[float], min_effect: float) -> str:
    if not values:
        return f"Widen the range of {axis} to a 4x span at least."
    lo, hi = values[0], values[-1]
    return (
        f"Widen the range of {axis}: it runs from {lo:g} to {hi:g} ({hi / lo:.2g}x); a span of 4x at least, "
        f"e.g. up to {4 * lo:g} or down to {hi / 4:g}, lets a trend show."
    )


def _no_spread(row, axis: str, values: Sequence[float], min_effect: float) -> str:
    if _replicated(row):
        return (
            f"Add scale points along {axis}: the point means scatter more than the seeds do, so each point "
            "counts once, and the trend needs more of them."
        )
    return f"Add models (or scale points) along {axis}, so the scatter around the trend can be estimated."


def _small_trend(row, axis: str, values: Sequence[float], min_effect: float) -> str:
    return (
        f"The trend is real but smaller than min_effect {min_effect:g}. {_seeds_needed(row, values, min_effect)}"
        f"Then it is persistent; over a wider range of {axis} it may instead grow past min_effect."
    )


def _undecided(row, axis: str, values: Sequence[float], min_effect: float) -> str:
    return (
        f"Neither a trend nor persistence is shown: the interval of the change still reaches +-{min_effect:g}. "
        f"{_seeds_needed(row, values, min_effect)}More points along {axis} help too."
    )


def _no_margin(row, axis: str, values: Sequence[float], min_effect: float) -> str:
    return (
        "Set min_effect for this phenomenon (the smallest change that matters, in units of its strength): "
        "with min_effect 0 persistence can never be shown, and no trend is significant."
    )


def _multiple(row, axis: str, values: Sequence[float], min_effect: float) -> str:
    return (
        "The call holds on its own but not after correcting across the slices of this phenomenon along "
        f"{axis} (Benjamini-Hochberg): it is borderline. More {_units(row)} per point would make it clear."
    )


def _flag(flag: str) -> str:
    return (
        f"Flagged: {flag}. A discontinuous metric can fake or hide a trend (Schaeffer et al. 2023); "
        "trust the continuous metric, or add points between the scales where the metric jumps."
    )


def _seeds_needed(row: Mapping[str, Any], values: Sequence[float], min_effect: float) -> str:
    """Seeds per point at which the 95% interval of the change would fit within +-min_effect.

    The interval shrinks like 1/sqrt(seeds); the change itself is taken as it is now.
    Only for replicated slices whose noise is the seeds': where the point means are
    the units, or a table has one value per model, seeds do not narrow it."""
    if not _replicated(row) or _str(row.get("noise")).startswith("scatter of the point means"):
        return f"More {'scale points' if _replicated(row) else 'models'} would narrow the interval. "
    try:
        effect, lo, hi, seeds = (float(row[k]) for k in ("effect", "ci_low", "ci_high", "n_seeds"))
    except (KeyError, TypeError, ValueError):
        return "More seeds per point would narrow the interval. "
    decades = math.log10(values[-1] / values[0]) if len(values) > 1 and values[0] > 0 else math.nan
    half = (hi - lo) / 2 * decades
    room = min_effect - abs(effect * decades)
    if not (math.isfinite(half) and half > 0 and room > 0 and seeds >= 1):
        return "More seeds per point would narrow the interval. "
    needed = math.ceil(seeds * (half / room) ** 2)
    if needed > MANY_SEEDS:
        return f"Seeds alone would take over {MANY_SEEDS} per point (it has {seeds:g}); a wider range is cheaper. "
    return f"About {max(needed, int(seeds) + 1)} seeds per point (it has {seeds:g}) would narrow the interval enough. "


Rule = Callable[[Mapping[str, Any], str, Sequence[float], float], str]
RULES: dict[str, Rule] = {
    "too_few_points": _few_points,
    "span_too_small": _narrow,
    "no_spread": _no_spread,
    "below_min_effect": _small_trend,
    "not_significant": _undecided,
    "no_min_effect": _no_margin,
    "not_significant_after_fdr": _multiple,
}
