"""What was found, in plain sentences: the first lines of the report.

`summary_sentences(verdicts, phenomena)` reads a verdict table (the columns of
`verdicts.csv`: phenomenon, axis, slice, verdict, detail, transition, ...; the
`reason` and `effect` columns are used when present, never required) and
returns a few sentences a researcher reads before any table, e.g.::

    Grokking: runs end in memorization below about 450 training examples and in
    grokking or comprehension above, at every width.
    The generalization gap shrinks as the training set grows, at every width.
    3 of 33 verdicts are inconclusive; the table says what would decide them.

Usage (in the report, above the verdict table)::

    from scalesweep.analysis.summary import summary_sentences
    for sentence in summary_sentences(verdicts, phenomena, nouns={"data_size": "training pairs"}):
        ...  # one <p> each (escape it: it quotes phenomenon and regime names)

How the sentences are chosen. The slices of one (phenomenon, axis) are grouped by
what they found (a regime flip, a sign flip, a U / inverted U, expansion,
shrinkage, persistence, absence); the largest decided group is that pair's
finding, worded "at every width" when all slices agree and "at 2 of 3 widths
(32 and 64)" otherwise. Findings that hold in at least half the slices come
first, then transformations before trends before persistence, in the order of
`phenomena`, data size before model size before the derived compute axis.
`limit` of them are returned (absence only when nothing else was found), then
one sentence counting the inconclusive verdicts, if any.

Words. An axis reads plainly ("as the training set grows", "a width of about 64",
"about 3.2e10 FLOPs"); `nouns` overrides the unit of an axis (e.g. "training
pairs" for a task whose examples are pairs). Transition scales are rounded to two
significant figures. Expansion / shrinkage say "grows" / "shrinks" (more / less
pronounced); when the phenomenon's direction is "lower" (less of the metric is
more of the phenomenon), the sentence also says which way the metric itself moves,
so that a lower-is-more metric never reads backwards.

Pure: no I/O, no plotting; the same table always gives the same sentences.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from scalesweep.analysis.phenomena import Phenomenon

__all__ = ["summary_sentences"]

DECIDED = ("transformation", "expansion", "shrinkage", "persistent", "absent")
# Lower rank = said first (after coverage): what changes kind, then what trends, then what holds.
_RANK = {"regime_flip": 0, "sign_flip": 0, "u_shape": 0, "inverted_u": 0, "transformation": 0}
_RANK |= {"expansion": 1, "shrinkage": 1, "persistent": 2, "absent": 3}
_AXIS_ORDER = {"data_size": 0, "model_size": 1, "compute": 3, "step": 4}
_REGIME = re.compile(r"^\s*([A-Za-z_][\w ]*?)\s*->\s*([A-Za-z_][\w ]*?)\s*(?:[(;,]|$)")
_NEAR = re.compile(r"(?:minimum|maximum) near ([0-9.eE+-]+)")


@dataclass(frozen=True)
class _Axis:
    """How an axis reads: its growth, its unit, and how one of its values is named."""

    grows: str  # "as the training set grows"
    along: str  # "in training-set size"
    noun: str  # unit of a value: "training examples"
    slice_noun: tuple[str, str]  # a slice of the OTHER axes at one value of this one: ("width", "widths")

    def value(self, x: float) -> str:
        return f"{_round(x)} {self.noun}"

    def below(self, x: float) -> str:
        return f"below about {self.value(x)}"


class _Width(_Axis):
    def value(self, x: float) -> str:
        return f"{self.noun} {_round(x)}"

    def below(self, x: float) -> str:
        return f"below a {self.noun} of about {_round(x)}"


def _axis_words(axis: str, nouns: Mapping[str, str]) -> _Axis:
    if axis == "data_size":
        return _Axis(
            "as the training set grows",
            "in training-set size",
            nouns.get(axis, "training examples"),
            ("training-set size", "training-set sizes"),
        )
    if axis == "model_size":
        return _Width("as the width grows", "in width", nouns.get(axis, "width"), ("width", "widths"))
    if axis == "compute":
        return _Axis("with compute", "in compute", nouns.get(axis, "FLOPs"), ("compute budget", "compute budgets"))
    if axis == "step":  # along training, within each scale point (a phenomenon with `over: step`)
        return _Axis("over training", "over training", nouns.get(axis, "steps"), ("scale point", "scale points"))
    name = axis.replace("_", " ")
    return _Axis(f"as {name} grows", f"in {name}", nouns.get(axis, name), (f"{name} value", f"{name} values"))


# --- numbers and names ------------------------------------------------------------


def _round(x: float) -> str:
    """Two significant figures: 448 -> "450", 1234 -> "1,200", 3.16e10 -> "3.2e10", 0.0123 -> "0.012"."""
    if not _finite(x):
        return "?"
    x = float(x)
    if x == 0:
        return "0"
    r = float(f"{x:.2g}")
    if abs(r) >= 1e6 or abs(r) < 1e-3:
        mantissa, exponent = f"{r:.1e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    if r == int(r):
        return f"{int(r):,}"
    return f"{r:g}"


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _title(name: str) -> str:
    """ "generalization_gap" -> "The generalization gap"; "grokking" -> "Grokking"."""
    words = name.replace("_", " ").strip()
    return f"The {words}" if " " in words else words[:1].upper() + words[1:]


def _join(items: Sequence[str], word: str = "and") -> str:
    items = list(dict.fromkeys(items))  # unique, in order
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


# --- what one verdict found --------------------------------------------------------


def _kind(row: Mapping) -> str:
    """The finding of one decided verdict: a reason code (regime_flip, ...) or the verdict."""
    verdict = str(row.get("verdict", ""))
    reason = str(row.get("reason") or "") if isinstance(row.get("reason"), str) else ""
    detail = str(row.get("detail") or "")
    if verdict != "transformation":
        return verdict
    if reason in ("regime_flip", "sign_flip", "u_shape", "inverted_u"):
        return reason
    if detail.startswith("sign flip"):
        return "sign_flip"
    if detail.startswith("U-shaped"):
        return "u_shape"
    if detail.startswith("inverted-U"):
        return "inverted_u"
    return "regime_flip" if _REGIME.match(detail) else "transformation"


def _regimes(detail: str) -> tuple[str, str] | None:
    m = _REGIME.match(detail or "")
    return (m.group(1), m.group(2)) if m else None


def _transition(row: Mapping) -> float:
    t = row.get("transition")
    if _finite(t):
        return float(t)
    m = _NEAR.search(str(row.get("detail") or ""))
    return float(m.group(1)) if m and _finite(m.group(1)) else math.nan


def _scale_range(values: Sequence[float], axis: _Axis, below: bool = False) -> str:
    """ "below about 450 training examples", or "below about 380 to 540 training examples" when
    the slices put it at different scales (the caller says which slices)."""
    xs = sorted(float(v) for v in values if _finite(v) and float(v) > 0)
    if not xs:
        return ""
    lo, hi = xs[0], xs[-1]
    if hi / lo < 1.25:
        mid = math.exp(sum(math.log(x) for x in xs) / len(xs))
        return axis.below(mid) if below else f"near {axis.value(mid)}"
    if isinstance(axis, _Width):
        if below:
            return f"below a {axis.noun} of about {_round(lo)} to {_round(hi)}"
        return f"between a {axis.noun} of about {_round(lo)} and {_round(hi)}"
    if below:
        return f"below about {_round(lo)} to {_round(hi)} {axis.noun}"
    return f"between about {_round(lo)} and {_round(hi)} {axis.noun}"


# --- one (phenomenon, axis) ----------------------------------------------------------


@dataclass
class _Finding:
    sentence: str
    coverage: float  # share of the pair's slices that found it
    rank: int
    order: tuple[int, int]  # (phenomenon, axis)
    derived: bool  # along the compute diagonal


def _slice_value(label: str) -> str | None:
    """ "model_size=32" -> "32"; a slice of several columns or "all" -> None."""
    parts = [p for p in str(label).split(",") if p.strip()]
    if len(parts) != 1 or "=" not in parts[0]:
        return None
    return parts[0].split("=", 1)[1].strip()


def _slice_axis(label: str) -> str | None:
    parts = [p for p in str(label).split(",") if p.strip()]
    if len(parts) != 1 or "=" not in parts[0]:
        return None
    return parts[0].split("=", 1)[0].strip()


def _where(group: pd.DataFrame, all_slices: pd.DataFrame, nouns: Mapping[str, str]) -> str:
    """ ", at every width" / ", at 2 of 3 widths (32 and 64)" / "" (one slice: the whole table)."""
    n_all, n = len(all_slices), len(group)
    labels = [str(s) for s in group["slice"]]
    if n_all <= 1 and (labels == ["all"] or not labels):
        return ""
    columns = {_slice_axis(s) for s in all_slices["slice"]}
    if len(columns) == 1 and None not in columns:
        words = _axis_words(columns.pop(), nouns)
        one, many = words.slice_noun
        if n == n_all:
            return f", at every {one}" if n_all > 1 else f", at {one} {_slice_value(labels[0])}"
        shown = _join([_slice_value(s) or s for s in labels])  # grid values as they are, not rounded
        unit = "" if isinstance(words, _Width) else f" {words.noun}"
        return f", at {n} of {n_all} {many} ({shown}{unit})"
    if n == n_all:
        return ", in every slice"
    return f", in {n} of {n_all} slices ({_join(labels, 'and')})"


def _sentence(kind: str, group: pd.DataFrame, ph: Phenomenon | None, name: str, axis: str, nouns) -> str:
    words = _axis_words(axis, nouns)
    title = _title(name)
    rows = [r for _, r in group.iterrows()]
    transitions = [_transition(r) for r in rows]
    if kind == "regime_flip":
        pairs = [p for p in (_regimes(str(r.get("detail", ""))) for r in rows) if p]
        small = _join([a for a, _ in pairs], "or")
        large = _join([b for _, b in pairs], "or")
        where = _scale_range(transitions, words, below=True)
        if where:
            return f"{title}: runs end in {small} {where} and in {large} above{_depending(transitions, group)}"
        return f"{title}: runs go from {small} to {large} {words.grows}"
    if kind == "sign_flip":
        where = _scale_range(transitions, words)
        first = "positive" if "+ -> -" in str(rows[0].get("detail", "")) else "negative"
        other = "negative" if first == "positive" else "positive"
        return f"{title} changes sign {words.grows}, from {first} to {other}" + (f" {where}" if where else "")
    if kind in ("u_shape", "inverted_u"):
        shape, end = ("U-shaped", "lowest") if kind == "u_shape" else ("an inverted U", "highest")
        where = _scale_range(transitions, words)
        return f"{title} is {shape} {words.along}, {end}" + (f" {where}" if where else " inside the range")
    if kind in ("expansion", "shrinkage"):
        verb = "grows" if kind == "expansion" else "shrinks"
        text = f"{title} {verb} {words.grows}"
        if ph is not None and ph.direction == "lower":
            metric_falls = kind == "expansion"  # more pronounced = lower metric
            text += f" ({ph.strength} {'falls' if metric_falls else 'rises'}; lower counts as more)"
        ends = [str(r.get("detail", "")) for r in rows]
        reasons = [str(r.get("reason", "")) if isinstance(r.get("reason"), str) else "" for r in rows]
        abrupt = [
            t
            for d, rs, t in zip(ends, reasons, transitions, strict=True)
            if d.startswith(("vanishes", "emerges")) or rs in ("abrupt_onset", "abrupt_offset")
        ]
        crossings = [t for t in transitions if _finite(t)]
        if abrupt and len(abrupt) == len(rows) and (where := _scale_range(abrupt, words)):
            text += f", and {'emerges' if kind == 'expansion' else 'vanishes'} {where}"
        elif crossings and len(crossings) == len(rows) and (where := _scale_range(crossings, words)):
            text += f", {'rising above' if kind == 'expansion' else 'falling below'} its presence threshold {where}"
        return text
    if kind == "persistent":
        return f"{title} stays about the same {words.grows}"
    if kind == "absent":
        return f"{title}: never beyond its presence threshold"
    return f"{title} changes kind {words.grows}"


def _depending(transitions: Sequence[float], group: pd.DataFrame) -> str:
    """ " (depending on the width)" when the slices put a transition at different scales."""
    xs = [float(t) for t in transitions if _finite(t) and float(t) > 0]
    if len(xs) < 2 or max(xs) / min(xs) < 1.25:
        return ""
    columns = {_slice_axis(s) for s in group["slice"]}
    if len(columns) != 1 or None in columns:
        return " (depending on the slice)"
    column = columns.pop()
    noun = {"model_size": "width", "data_size": "training-set size", "compute": "compute"}.get(column, column)
    return f" (depending on the {noun})"


def _findings(verdicts: pd.DataFrame, phenomena: Sequence[Phenomenon], nouns: Mapping[str, str]) -> list[_Finding]:
    by_name = {ph.name: ph for ph in phenomena}
    ph_order = {ph.name: i for i, ph in enumerate(phenomena)}
    found: list[_Finding] = []
    for (name, axis), pair in verdicts.groupby(["phenomenon", "axis"], sort=False):
        decided = pair[pair["verdict"].isin(DECIDED)]
        if decided.empty:
            continue
        kinds = decided.apply(lambda r: _kind(r), axis=1)
        counts = kinds.value_counts()
        # the largest group; ties go to the more telling finding (a transformation before a trend)
        kind = min(counts.index, key=lambda k: (-counts[k], _RANK.get(k, 0), k))
        group = decided[kinds == kind]
        sentence = _sentence(kind, group, by_name.get(name), str(name), str(axis), nouns)
        sentence += _where(group, pair, nouns) + "."
        found.append(
            _Finding(
                sentence=sentence[:1].upper() + sentence[1:],
                coverage=len(group) / len(pair),
                rank=_RANK.get(kind, 0),
                order=(ph_order.get(name, len(ph_order)), _AXIS_ORDER.get(str(axis), 2)),
                derived=str(axis) == "compute",
            )
        )
    return found


def summary_sentences(
    verdicts: pd.DataFrame,
    phenomena: list[Phenomenon],
    *,
    limit: int = 3,
    nouns: Mapping[str, str] | None = None,
) -> list[str]:
    """Two to four plain sentences saying what the verdicts found (see the module docstring).

    `verdicts`: a verdict table (`classify_runs`' output or `verdicts.csv`); needs the
    columns phenomenon, axis, slice, verdict and detail, and reads transition, reason
    and effect when they exist. `phenomena`: their definitions (direction, strength),
    in the order the study lists them; a phenomenon missing from it reads as
    direction "higher". `limit`: how many findings at most. `nouns`: the unit of an
    axis, e.g. `{"data_size": "training pairs"}`.
    """
    need = {"phenomenon", "axis", "slice", "verdict"}
    if verdicts is None or verdicts.empty or not need <= set(verdicts.columns):
        return []
    table = verdicts.copy()
    if "detail" not in table:
        table["detail"] = ""
    table["detail"] = table["detail"].fillna("").astype(str)
    nouns = dict(nouns or {})
    found = _findings(table, phenomena, nouns)
    key = lambda f: (f.coverage < 0.5, f.derived, f.rank, -f.coverage, f.order)  # noqa: E731
    telling = sorted((f for f in found if f.rank < _RANK["absent"]), key=key)
    best: dict[int, _Finding] = {}
    for f in telling:  # each phenomenon's best finding first, in that order; then the others
        best.setdefault(f.order[0], f)
    first = sorted(best.values(), key=key)
    ordered = first + [f for f in telling if f not in first]
    chosen = (ordered or sorted(found, key=key))[: max(limit, 0)]
    sentences = [f.sentence for f in chosen]
    total = len(table)
    undecided = int((table["verdict"] == "inconclusive").sum())
    if undecided:
        sentences.append(
            f"{undecided} of {total} verdicts {'is' if undecided == 1 else 'are'} inconclusive; "
            "the table says what would decide them."
        )
    elif not found:
        sentences.append("No verdicts yet.")
    return sentences
