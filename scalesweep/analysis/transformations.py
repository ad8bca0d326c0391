"""Phenomenon A turns into phenomenon B: pairs, and transition scales shared by several phenomena.

A *transformation across phenomena* is seen along one axis in one slice: A
shrinks (or vanishes) while B expands (or emerges, or flips to a new regime),
and their transition scales lie within `factor` of each other. It is judged
from the verdicts alone (`verdicts.csv` in, `transformations.csv` out), so it
works on a sweep, a published table or a phenomenon record alike.

The test of a pair is an intersection-union test (Berger 1982): the claim "A
shrinks *and* B expands" is rejected unless both are, so its p-value is the
larger of the two verdicts' p-values, a valid level-alpha test of the pair
without any correction between the two. The transitions' closeness is the
criterion that makes it one change rather than two (within `factor`, 3x by
default). Across all the candidate pairs of a study (every ordered pair of
phenomena, along every axis, in every slice) the family-wise error is held by
Holm's step-down (Holm 1979); pairs declared in advance (`becomes: B` in A's
YAML) form their own, smaller family, as a pre-registered hypothesis should.
Confidence is the smaller of the two verdicts' confidences: the pair holds in
at most as many resamples as its weaker member.

*Shared transition scales*: where three or more phenomena (or two that are not a
pair) change within `factor` of one scale along one axis and slice, they are
listed together as candidates for one shared explanation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from scalesweep.analysis.phenomena import Phenomenon
from scalesweep.analysis.stats import holm

TRANSFORMATION_COLUMNS = [
    "phenomenon_a",
    "phenomenon_b",
    "axis",
    "slice",
    "transition_a",
    "transition_b",
    "transition",
    "confidence",
    "p_value",
    "p_adjusted",
    "detail",
]
FACTOR = 3.0  # transitions within this factor of each other count as one scale
ALPHA = 0.05
FADES = ("shrinkage",)
GROWS = ("expansion",)


def change_scale(row: pd.Series) -> float:
    """Where a phenomenon changes: the middle of its change (`midpoint`: an abrupt onset's
    transition is where the rise starts), else the verdict's transition (a regime split)."""
    middle = row.get("midpoint", math.nan)
    return float(middle) if _finite(middle) else float(row["transition"])


def _fades(row: pd.Series) -> bool:
    return row["verdict"] in FADES and _finite(change_scale(row))


def _grows(row: pd.Series) -> bool:
    grows = row["verdict"] in GROWS or row.get("reason") == "regime_flip"
    return bool(grows and _finite(change_scale(row)))


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def find_pairs(
    verdicts: pd.DataFrame, phenomena: Iterable[Phenomenon] = (), factor: float = FACTOR, alpha: float = ALPHA
) -> pd.DataFrame:
    """Every pair (A fades, B grows, transitions within `factor`) that survives Holm at `alpha`.

    Returns a table with `TRANSFORMATION_COLUMNS`, declared pairs first."""
    declared = {(ph.name, ph.becomes) for ph in phenomena if getattr(ph, "becomes", None)}
    candidates = []
    for (axis, label), rows in verdicts.groupby(["axis", "slice"], sort=False):
        if rows["phenomenon"].nunique() < 2:  # a pair needs two phenomena in the slice
            continue
        records = rows.to_dict("records")
        for a in records:
            for b in records:
                if a["phenomenon"] != b["phenomenon"]:
                    candidates.append((axis, label, pd.Series(a), pd.Series(b)))
    out = []
    for is_declared in (True, False):
        family = [c for c in candidates if ((c[2]["phenomenon"], c[3]["phenomenon"]) in declared) == is_declared]
        p = np.array([_pair_p(a, b, factor) for _, _, a, b in family], dtype=float)
        adjusted = holm(p)
        for (axis, label, a, b), p_value, p_adj in zip(family, p, adjusted, strict=True):
            if math.isfinite(p_adj) and p_adj <= alpha:
                out.append(_pair_row(axis, label, a, b, p_value, p_adj, is_declared, len(family)))
    return pd.DataFrame(out, columns=TRANSFORMATION_COLUMNS)


def _pair_p(a: pd.Series, b: pd.Series, factor: float) -> float:
    """Intersection-union p of "a fades and b grows near the same scale"; NaN when not a candidate."""
    if not (_fades(a) and _grows(b)):
        return 1.0
    if abs(math.log10(change_scale(a) / change_scale(b))) > math.log10(factor):
        return 1.0
    pa, pb = float(a["p_value"]), float(b["p_value"])
    return max(pa, pb) if math.isfinite(pa) and math.isfinite(pb) else 1.0


def _pair_row(axis, label, a, b, p_value, p_adj, declared: bool, family: int) -> dict:
    ta, tb = change_scale(a), change_scale(b)
    where = math.sqrt(ta * tb)
    gives = b["detail"].split(" (")[0] if b.get("reason") == "regime_flip" else "grows"
    detail = (
        f"{a['phenomenon']} fades ({a['verdict']}, transition {ta:.3g}) as {b['phenomenon']} {gives} "
        f"(transition {tb:.3g}) near {axis} = {where:.3g}; intersection-union p, Holm over the {family} "
        f"{'declared' if declared else 'searched'} pairs"
    )
    both = [c for c in (float(a["confidence"]), float(b["confidence"])) if math.isfinite(c)]
    confidence = min(both) if both else math.nan
    return dict(
        phenomenon_a=a["phenomenon"],
        phenomenon_b=b["phenomenon"],
        axis=axis,
        slice=label,
        transition_a=ta,
        transition_b=tb,
        transition=where,
        confidence=confidence,
        p_value=float(p_value),
        p_adjusted=float(p_adj),
        detail=detail,
    )


def _round(x: float) -> str:
    """Two significant figures, without an exponent below 10^5: 540, 0.31, 1.5e+10."""
    return f"{float(f'{x:.2g}'):g}" if 1e-3 <= abs(x) < 1e5 else f"{x:.2g}"


def shared_transitions(verdicts: pd.DataFrame, factor: float = FACTOR) -> list[dict]:
    """Groups of phenomena whose transitions along one axis and slice lie within `factor`
    of their neighbours' (single linkage in log scale), with the verdicts as evidence."""
    groups = []
    for (axis, label), rows in verdicts.groupby(["axis", "slice"], sort=False):
        rows = rows[rows["verdict"].isin(("expansion", "shrinkage", "transformation"))]
        rows = rows.loc[np.array([_finite(t) for t in rows["transition"]], dtype=bool)].sort_values("transition")
        if len(rows) < 2:
            continue
        logs = np.log10(rows["transition"].to_numpy(dtype=float))
        cuts = np.flatnonzero(np.diff(logs) > math.log10(factor)) + 1
        for part in np.split(np.arange(len(rows)), cuts):
            if len(part) >= 2:
                members = rows.iloc[part]
                groups.append(
                    dict(
                        axis=axis,
                        slice=label,
                        phenomena=members["phenomenon"].tolist(),
                        scale=float(10 ** logs[part].mean()),
                        evidence=[f"{r.phenomenon}: {r.verdict} ({r.detail})" for r in members.itertuples()],
                    )
                )
    return groups


def pair_sentences(pairs: pd.DataFrame, slices_per_axis: dict[str, int] | None = None) -> list[str]:
    """One sentence per (A, B, axis): "memorization gives way to comprehension near
    data_size 600, in 3 of 3 slices" (the geometric mean of the slices' transitions)."""
    sentences = []
    for (a, b, axis), rows in pairs.groupby(["phenomenon_a", "phenomenon_b", "axis"], sort=False):
        near = float(np.exp(np.log(rows["transition"].to_numpy(dtype=float)).mean()))
        total = (slices_per_axis or {}).get(axis, len(rows))
        where = "in every slice" if len(rows) == total and total > 1 else f"in {len(rows)} of {total} slice(s)"
        if total == 1 and len(rows) == 1:
            where = f"({rows['slice'].iloc[0]})"
        sentences.append(f"{a} gives way to {b} near {axis} = {_round(near)}, {where}.")
    return sentences


SHARED_SENTENCES = 4  # at most this many on the first screen; every group is in the figures' evidence


def shared_sentences(groups: list[dict], pairs: pd.DataFrame | None = None) -> list[str]:
    """Groups of phenomena changing near one scale, one sentence per set of phenomena along an
    axis (its slices counted), leaving out sets that are exactly a pair already said."""
    paired = set()
    if pairs is not None and len(pairs):
        paired = {(r.axis, frozenset((r.phenomenon_a, r.phenomenon_b))) for r in pairs.itertuples(index=False)}
    merged: dict[tuple, list[dict]] = {}
    for g in groups:
        key = (g["axis"], tuple(sorted(g["phenomena"])))
        if (g["axis"], frozenset(g["phenomena"])) not in paired:
            merged.setdefault(key, []).append(g)
    sentences = []
    for (axis, names), found in sorted(merged.items(), key=lambda item: -len(item[1]))[:SHARED_SENTENCES]:
        scale = float(np.exp(np.mean([np.log(g["scale"]) for g in found])))
        where = found[0]["slice"] if len(found) == 1 else f"in {len(found)} slices"
        sentences.append(
            f"Along {axis} ({where}), {', '.join(names)} change near {_round(scale)}: "
            "candidates for one shared explanation."
        )
    return sentences
