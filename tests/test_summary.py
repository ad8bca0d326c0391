"""The report's plain-sentence summary, on hand-made verdict tables (no runs, no classifier)."""

from __future__ import annotations

import pandas as pd
import pytest

from scalesweep.analysis.phenomena import Phenomenon
from scalesweep.analysis.summary import summary_sentences

GROK = Phenomenon(name="grokking", strength="grokking_delay", presence=0.3, min_effect=0.2)
GAP = Phenomenon(name="generalization_gap", strength="final_train_acc - final_test_acc", presence=0.05)
RANK = Phenomenon(name="rank_collapse", strength="effective_rank", direction="lower", presence=4, min_effect=1)
NAN = float("nan")


def table(rows: list[tuple], reason: bool = False) -> pd.DataFrame:
    """(phenomenon, axis, slice, verdict, detail, transition[, reason]) -> a verdicts.csv-shaped table."""
    cols = ["phenomenon", "axis", "slice", "verdict", "detail", "transition"] + (["reason"] if reason else [])
    frame = pd.DataFrame(rows, columns=cols)
    return frame.assign(confidence=0.9, p_value=0.01)


def flips(widths=(32, 64, 128), transition=(450, 460, 440), to=("grokking",) * 3) -> list[tuple]:
    return [
        ("grokking", "data_size", f"model_size={w}", "transformation", f"memorization -> {b} (Fisher p=0.001)", t)
        for w, t, b in zip(widths, transition, to, strict=True)
    ]


def test_a_regime_flip_at_every_width_gives_the_rounded_transition():
    out = summary_sentences(table(flips()), [GROK], nouns={"data_size": "training pairs"})
    assert out == [
        "Grokking: runs end in memorization below about 450 training pairs and in grokking above, at every width."
    ]


def test_slices_that_disagree_are_counted_and_named():
    rows = flips()[:2] + [("grokking", "data_size", "model_size=128", "inconclusive", "only 2 scale points", NAN)]
    out = summary_sentences(table(rows), [GROK])
    assert out[0].endswith("at 2 of 3 widths (32 and 64).")
    assert "training examples" in out[0]  # the default noun for data_size
    assert out[-1] == "1 of 3 verdicts is inconclusive; the table says what would decide them."


def test_transitions_far_apart_are_given_as_a_range_and_end_regimes_are_merged():
    out = summary_sentences(
        table(flips(transition=(420, 560, 750), to=("grokking", "comprehension", "grokking"))), [GROK]
    )
    assert "below about 420 to 750 training examples" in out[0]
    assert "in grokking or comprehension above (depending on the width)" in out[0]


def test_shrinkage_along_data_and_persistence_along_width_read_plainly():
    rows = [
        ("generalization_gap", "data_size", f"model_size={w}", "shrinkage", "vanishes (abrupt offset near 480)", 480)
        for w in (32, 64, 128)
    ] + [
        ("generalization_gap", "model_size", f"data_size={n}", "persistent", "change +0.001 within +-0.05", NAN)
        for n in (200, 400)
    ]
    out = summary_sentences(table(rows), [GAP])
    assert out[0] == (
        "The generalization gap shrinks as the training set grows, and vanishes near 480 training examples, "
        "at every width."
    )
    assert out[1] == "The generalization gap stays about the same as the width grows, at every training-set size."
    assert len(out) == 2  # nothing inconclusive, so no closing count


def test_a_lower_is_more_phenomenon_says_which_way_its_metric_moves():
    rows = [("rank_collapse", "model_size", f"data_size={n}", "shrinkage", "less pronounced", NAN) for n in (200, 800)]
    out = summary_sentences(table(rows), [RANK])
    assert out == [
        "The rank collapse shrinks as the width grows (effective_rank rises; lower counts as more), "
        "at every training-set size."
    ]
    grows = table([("rank_collapse", "data_size", "model_size=32", "expansion", "more pronounced", NAN)])
    assert "(effective_rank falls; lower counts as more)" in summary_sentences(grows, [RANK])[0]


def test_reason_codes_are_used_when_present_and_the_detail_when_not():
    rows = [
        ("grokking", "data_size", "model_size=32", "transformation", "inverted-U (maximum near 300)", 300, "inverted_u")
    ]
    with_reason = summary_sentences(table(rows, reason=True), [GROK])
    without = summary_sentences(table([r[:6] for r in rows]), [GROK])
    assert with_reason == without
    assert with_reason == [
        "Grokking is an inverted U in training-set size, highest near 300 training examples, at width 32."
    ]


def test_a_sign_flip_and_the_compute_axis():
    rows = [("activation_growth", "compute", "all", "transformation", "sign flip + -> -", 3.16e10)]
    growth = Phenomenon(name="activation_growth", strength="x", signed=True)
    assert summary_sentences(table(rows), [growth]) == [
        "The activation growth changes sign with compute, from positive to negative near 3.2e10 FLOPs."
    ]


def test_findings_are_ordered_and_limited():
    rows = (
        [("generalization_gap", "data_size", f"model_size={w}", "shrinkage", "less pronounced", NAN) for w in (32, 64)]
        + flips(widths=(32, 64), transition=(450, 450), to=("grokking", "grokking"))
        + [("grokking", "model_size", "data_size=450", "transformation", "memorization -> grokking", 63)]
        + [("grokking", "model_size", f"data_size={n}", "inconclusive", "only 0 scale points", NAN) for n in (200, 800)]
        + [("generalization_gap", "compute", "all", "absent", "never present", NAN)]
    )
    out = summary_sentences(table(rows), [GROK, GAP], limit=2)
    assert out[0].startswith("Grokking: runs end in memorization below about 450")  # the study's first phenomenon
    assert out[1].startswith("The generalization gap shrinks as the training set grows")
    assert out[2] == "2 of 8 verdicts are inconclusive; the table says what would decide them."
    everything = summary_sentences(table(rows), [GROK, GAP], limit=10)
    assert any(
        "below a width of about 63" in s and "at 1 of 3 training-set sizes (450 training examples)" in s
        for s in everything
    )
    assert not any("never present" in s for s in everything)  # absence is said only when nothing else was found


def test_only_absent_and_inconclusive_and_empty_tables():
    rows = [("dead_units", "model_size", "data_size=200", "absent", "never beyond presence", NAN)]
    assert summary_sentences(table(rows), []) == [
        "The dead units: never beyond its presence threshold, at training-set size 200."
    ]
    undecided = table([("grokking", "data_size", "model_size=32", "inconclusive", "only 2 scale points", NAN)])
    assert summary_sentences(undecided, [GROK]) == [
        "1 of 1 verdicts is inconclusive; the table says what would decide them."
    ]
    assert summary_sentences(pd.DataFrame(), [GROK]) == []
    assert summary_sentences(pd.DataFrame(columns=["phenomenon", "axis", "slice", "verdict"]), [GROK]) == []


@pytest.mark.parametrize(
    ("value", "text"),
    [(448, "450"), (1234, "1,200"), (3.16e10, "3.2e10"), (0.0123, "0.012"), (63.2, "63"), (2.5e-5, "2.5e-5")],
)
def test_transition_scales_are_rounded_to_two_significant_figures(value, text):
    rows = [("grokking", "data_size", "model_size=32", "transformation", "memorization -> grokking", value)]
    assert f"below about {text} training examples" in summary_sentences(table(rows), [GROK])[0]


def test_a_verdicts_csv_round_trip_reads_the_same(tmp_path):
    frame = table(flips())
    frame.to_csv(tmp_path / "verdicts.csv", index=False)
    again = pd.read_csv(tmp_path / "verdicts.csv")
    assert summary_sentences(again, [GROK]) == summary_sentences(frame, [GROK])
