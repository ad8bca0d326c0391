"""Plain words for verdicts that do not decide: what more data would decide them.

The classifier's `detail` says *why* a verdict is inconclusive (too few
points, too narrow a span, an interval too wide...). A researcher wants the
next step instead: which runs to add. `advice` reads the detail (the phrases
are those of `classify.py`) and the verdict's numbers, and says it in one
short paragraph of plain text (the report escapes it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

MANY_SEEDS = 64  # beyond this, more seeds is not a practical answer


def advice(row: Mapping[str, Any], axis_values: Sequence[float], min_effect: float) -> str:
    """What would decide an inconclusive or flagged verdict; "" for a verdict that stands."""
    detail = str(row.get("detail", ""))
    axis = str(row.get("axis", "the axis"))
    flag = str(row.get("flag") or "")
    said = []
    if row.get("verdict") == "inconclusive":
        values = sorted(axis_values)
        said = [
            say(match, row, axis, values, min_effect) for pattern, say in RULES if (match := pattern.search(detail))
        ]
        said = said or [f"More seeds per point and more points along {axis} would decide it."]
    if flag:
        said.append(_flag(flag))
    return " ".join(said)


def _few_points(match: re.Match, row, axis: str, values: Sequence[float], min_effect: float) -> str:
    return f"Measure at least 3 points along {axis} (it has {match[1]} with a finite strength)."


def _narrow(match: re.Match, row, axis: str, values: Sequence[float], min_effect: float) -> str:
    if not values:
        return f"Widen the range of {axis} to a 4x span at least."
    lo, hi = values[0], values[-1]
    return (
        f"Widen the range of {axis}: it runs from {lo:g} to {hi:g} ({match[1]}x); a span of 4x at least, "
        f"e.g. up to {4 * lo:g} or down to {hi / 4:g}, lets a trend show."
    )


def _no_spread(match: re.Match, row, axis: str, values: Sequence[float], min_effect: float) -> str:
    return f"Add seeds (2 or more per point) or more points along {axis}, so the seed-to-seed spread can be estimated."


def _small_trend(match: re.Match, row, axis: str, values: Sequence[float], min_effect: float) -> str:
    return (
        f"The trend is real but smaller than min_effect {min_effect:g}. {_seeds_needed(row, values, min_effect)}"
        f"Then it is persistent; over a wider range of {axis} it may instead grow past min_effect."
    )


def _undecided(match: re.Match, row, axis: str, values: Sequence[float], min_effect: float) -> str:
    return (
        f"Neither a trend nor persistence is shown: the interval of the change still reaches +-{min_effect:g}. "
        f"{_seeds_needed(row, values, min_effect)}More points along {axis} help too."
    )


def _no_margin(match: re.Match, row, axis: str, values: Sequence[float], min_effect: float) -> str:
    return (
        "Set min_effect for this phenomenon (the smallest change that matters, in units of its strength): "
        "with min_effect 0 persistence can never be shown, and no trend is significant."
    )


def _multiple(match: re.Match, row, axis: str, values: Sequence[float], min_effect: float) -> str:
    return (
        f"The call ({match[1]}) holds on its own but not after correcting for the {match[2]} verdicts of this "
        "report (Benjamini-Hochberg): it is borderline. More seeds per point would make it clear."
    )


def _left_out(match: re.Match, row, axis: str, values: Sequence[float], min_effect: float) -> str:
    return (
        f"{match[1]} run(s) had no finite strength (e.g. the event did not happen within the step budget); "
        "longer training would give them a value."
    )


def _flag(flag: str) -> str:
    return (
        f"Flagged: {flag}. A discontinuous metric can fake or hide a trend (Schaeffer et al. 2023); "
        "trust the continuous metric, or add points between the scales where the metric jumps."
    )


def _seeds_needed(row: Mapping[str, Any], values: Sequence[float], min_effect: float) -> str:
    """Seeds per point at which the 95% interval of the change would fit within +-min_effect.

    The interval shrinks like 1/sqrt(seeds); the change itself is taken as it is now.
    """
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


Rule = Callable[[re.Match, Mapping[str, Any], str, Sequence[float], float], str]
RULES: list[tuple[re.Pattern, Rule]] = [
    (re.compile(r"only (\d+) scale point"), _few_points),
    (re.compile(r"the axis spans only ([\d.e+]+)x"), _narrow),
    (re.compile(r"too few runs to estimate the spread"), _no_spread),
    (re.compile(r"significant trend \(p=[^)]*\) but change"), _small_trend),
    (re.compile(r"trend not significant \(p=[^)]*\) but cannot rule out"), _undecided),
    (re.compile(r"with min_effect 0 no interval"), _no_margin),
    (re.compile(r"^(\w+) \(.*\) not significant after Benjamini-Hochberg over (\d+) verdicts"), _multiple),
    (re.compile(r"(\d+) run\(s\) without a finite strength"), _left_out),
]
