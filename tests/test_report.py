"""The report's structure, built from synthetic tidy run tables (no Ray, no MLflow).

Each test reads what a researcher would: the page's tables and figures, the
PNGs beside it, and `verdicts.csv`.
"""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from scalesweep.analysis.advice import advice
from scalesweep.analysis.classify import VERDICT_COLUMNS, classify_runs
from scalesweep.analysis.phenomena import Phenomenon, load_phenomenon
from scalesweep.analysis.report import ReportHeader, in_words, write_report

AXES = ["model_size", "data_size"]
EVIL = "<script>alert(1)</script>"


def synthetic_runs(
    model_sizes=(8, 16, 32, 64), data_sizes=(100, 400, 1600), seeds=3, name="syn", rng=0
) -> pd.DataFrame:
    """A tidy runs table shaped like `store.runs_table`'s: the generalization gap
    shrinks with data, and the grokking phase goes memorization -> grokking ->
    comprehension as data grows."""
    gen = np.random.default_rng(rng)
    rows = []
    for w in model_sizes:
        for n in data_sizes:
            for seed in range(seeds):
                test_acc = min(0.98, 0.3 + 0.3 * np.log10(n / 100) + 0.02 * np.log2(w / 8)) + gen.normal(0, 0.02)
                fit_train = 100 + gen.normal(0, 5)
                fit_test = {100: np.nan, 400: 900.0, 1600: 150.0}.get(n, 300.0) * (1 + gen.normal(0, 0.05))
                rows.append(
                    dict(
                        run_id=f"{gen.integers(1 << 62):032x}",
                        run_name=f"{name} w={w} n={n} seed={seed}",
                        status="FINISHED",
                        model_size=w,
                        data_size=n,
                        seed=seed,
                        n_params=w * 40,
                        final_train_acc=1.0 - abs(gen.normal(0, 0.005)),
                        final_test_acc=test_acc,
                        steps_to_fit_train=fit_train,
                        steps_to_fit_test=fit_test,
                        grokking_delay=np.log10(fit_test / fit_train),
                    )
                )
    return pd.DataFrame(rows)


def build_report(out: Path, runs: pd.DataFrame, phenomena: list[Phenomenon], **study) -> tuple[str, pd.DataFrame]:
    verdicts = classify_runs(runs, phenomena, axes=AXES, grid=[], seed="seed", n_boot=20)
    study = ReportHeader(**({"title": "syn", "axes": AXES, "runs_finished": len(runs)} | study))
    path = write_report(out, study, runs, phenomena, verdicts)
    return path.read_text(encoding="utf-8"), verdicts


class _Page(HTMLParser):
    """The images (with their data- attributes) and the table rows of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self._table = attrs.get("class", "")
            self.tables.setdefault(self._table, [])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._table is not None and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def assert_not_blank(png: bytes) -> None:
    """The PNG decodes and has something drawn on it (not one flat colour)."""
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.width > 100 and image.height > 100
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 20, f"a nearly blank figure: {len(colours)} colours"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    runs = synthetic_runs()
    phenomena = [load_phenomenon("grokking", overrides={"params": {"gap": 300}}), load_phenomenon("generalization_gap")]
    page, verdicts = build_report(out, runs, phenomena)
    return out, page, verdicts, runs


def test_first_screen_has_study_and_coloured_verdict_table(report):
    out, page, verdicts, runs = report
    parsed = parse(page)
    header = page[: page.index("<section")]
    assert "<h1>syn</h1>" in header and f"<b>{len(runs)}</b> runs finished" in header
    axes = {row[0]: row for row in parsed.tables["axes"][1:]}
    assert axes["model_size"][2] == "8, 16, 32, 64" and axes["model_size"][4] == "8x"
    assert axes["data_size"][2] == "100, 400, 1600" and axes["seed"][3] == "3"
    table = parsed.tables["verdicts"]
    assert table[0] == ["phenomenon", "axis", "slice", "verdict", "in words", "detail", "confidence"]
    assert len(table) - 1 == len(verdicts)
    shown = {(r[0], r[1], r[2]): r[3] for r in table[1:]}
    assert shown == {(r.phenomenon, r.axis, r.slice): r.verdict for r in verdicts.itertuples()}
    rows = re.findall(r"<tr class='v-(\w+)'>", header)
    assert sorted(rows) == sorted(verdicts["verdict"])
    assert "shrinkage" in set(verdicts["verdict"])  # the gap shrinks with data: a coloured row to look at
    gap = [r for r in table[1:] if r[0] == "generalization_gap" and r[3] == "shrinkage"]
    assert gap and all("generalization_gap falls with" in r[4] and "less pronounced" in r[4] for r in gap)


def test_verdicts_read_in_the_tables_own_direction():
    row = dict(verdict="expansion", phenomenon="brier", axis="n_params", effect=-0.02)
    assert in_words(row, "lower") == "brier falls with n_params (more pronounced: lower counts as more)"
    rising = dict(row, verdict="shrinkage", effect=0.02)
    assert in_words(rising, "lower") == "brier rises with n_params (less pronounced: lower counts as more)"
    assert in_words(dict(row, verdict="inconclusive"), "lower") == "the data cannot decide yet"


def test_one_figure_per_phenomenon_and_axis_plus_phase_diagrams_none_blank(report):
    out, page, verdicts, _ = report
    images = parse(page).images
    strength = sorted((i["data-phenomenon"], i["data-axis"]) for i in images if i["data-kind"] == "strength")
    assert strength == sorted((p, a) for p in ("grokking", "generalization_gap") for a in AXES)
    phases = [i["data-phenomenon"] for i in images if i["data-kind"] == "phases"]
    assert phases == ["grokking"]  # the only phenomenon with regimes
    files = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert files == sorted(Path(i["data-file"]).name for i in images)
    for image in images:
        embedded = base64.b64decode(image["src"].removeprefix("data:image/png;base64,"))
        assert embedded == (out / image["data-file"]).read_bytes()
        assert_not_blank(embedded)


def test_verdicts_csv_keeps_its_stable_columns(report):
    out, _, verdicts, _ = report
    csv = pd.read_csv(out / "verdicts.csv")
    assert list(csv.columns[: len(VERDICT_COLUMNS)]) == VERDICT_COLUMNS
    assert len(csv) == len(verdicts) and list(csv["verdict"]) == list(verdicts["verdict"])


def test_evidence_and_definition_per_phenomenon(report):
    _, page, verdicts, _ = report
    section = page[page.index("<h2 id='ph-generalization_gap'>") :]
    assert "Train accuracy exceeds test accuracy" in section  # the catalog's words
    evidence = parse(section).tables["evidence"]
    assert evidence[0][:4] == ["axis", "slice", "verdict", "detail"] and "p adjusted" in evidence[0]
    mine = verdicts[verdicts["phenomenon"] == "generalization_gap"]
    assert len(evidence) - 1 == len(mine)
    shrinking = mine[(mine["axis"] == "data_size") & (mine["verdict"] == "shrinkage")]
    assert len(shrinking)  # the gap shrinks with data in every width slice
    row = next(r for r in evidence[1:] if r[1] == shrinking.iloc[0]["slice"] and r[0] == "data_size")
    assert row[5].startswith(f"{shrinking.iloc[0]['effect']:.3g} [")
    assert "per decade" in row[-1]  # 3 scale points: the classifier's straight line is the fitted law


def test_power_law_drawn_with_extrapolation_where_enough_points(tmp_path):
    """Five data sizes: the shrinking gap gets a saturating power law and its extrapolated crossing."""
    runs = synthetic_runs(model_sizes=(16, 64), data_sizes=(100, 200, 400, 800, 1600))
    noise = np.random.default_rng(1).normal(0, 0.01, len(runs))
    runs["final_test_acc"] = runs["final_train_acc"] - 0.02 - 0.8 * (runs["data_size"] / 100) ** -0.8 + noise
    page, verdicts = build_report(tmp_path, runs, [load_phenomenon("generalization_gap")])
    laws = [r[-1] for r in parse(page).tables["evidence"][1:] if r[0] == "data_size" and r[2] == "shrinkage"]
    assert laws and all("power law y = " in law for law in laws), laws
    assert any("crosses the presence threshold at data_size = " in law for law in laws), laws


def test_inconclusive_verdicts_get_plain_words(tmp_path):
    """Two widths only, and a 2x span of data: the advice says which runs to add."""
    runs = synthetic_runs(model_sizes=(8, 16), data_sizes=(100, 150, 200))
    page, verdicts = build_report(tmp_path, runs, [load_phenomenon("generalization_gap")])
    assert set(verdicts["verdict"]) == {"inconclusive"}
    advice = page[page.index("<ul class='advice'>") :]
    assert "Measure at least 3 points along model_size (it has 2" in advice
    assert "Widen the range of data_size: it runs from 100 to 200" in advice and "up to 400" in advice


def test_runs_behind_each_point_link_to_the_mlflow_ui(tmp_path):
    runs = synthetic_runs(model_sizes=(8, 16, 32), data_sizes=(100, 400, 1600), seeds=2)
    page, _ = build_report(
        tmp_path,
        runs,
        [load_phenomenon("generalization_gap")],
        mlflow_url="http://mlflow.example:5000/",
        experiment_id="7",
    )
    for run_id in runs["run_id"]:
        assert f"href='http://mlflow.example:5000/#/experiments/7/runs/{run_id}'" in page
    page, _ = build_report(tmp_path / "local", runs, [load_phenomenon("generalization_gap")], mlflow_url=None)
    assert all(run_id in page for run_id in runs["run_id"]) and "/#/experiments/" not in page


def test_spec_and_run_strings_are_escaped(tmp_path):
    """A spec named `<script>...`, run names and a grid value with markup show as text."""
    runs = synthetic_runs(model_sizes=(8, 16, 32), seeds=2, name=EVIL).assign(optimizer=EVIL)
    runs.loc[runs["seed"] == 1, "optimizer"] = "adam & $x$"
    ph = Phenomenon(name=f"gap {EVIL}", description=EVIL, strength="final_train_acc - final_test_acc")
    verdicts = classify_runs(runs, [ph], axes=AXES, grid=["optimizer"], seed=None, n_boot=0)
    study = ReportHeader(
        title=f"report {EVIL}", axes=AXES, grid=["optimizer"], notes=[EVIL], failed_runs=[(EVIL, "abc")]
    )
    page = write_report(tmp_path, study, runs, [ph], verdicts).read_text()
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5
    assert "<title>report &lt;script&gt;" in page
    assert len(parse(page).images) == 2


def test_advice_sizes_the_seeds_that_would_decide():
    """Interval of the change +-0.09 around +0.01 over 2 decades, min_effect 0.05, 2 seeds:
    the interval must shrink by (0.09 / 0.04)^2 ~ 5x in variance: 11 seeds per point."""
    row = dict(
        verdict="inconclusive",
        axis="data_size",
        detail="trend not significant (p=0.8, needs < 0.035) but cannot rule out a change of 0.05",
        reason="not_significant",
        noise="seeds (the point means fit the trend)",
        effect=0.005,
        ci_low=0.005 - 0.045,
        ci_high=0.005 + 0.045,
        n_seeds=2,
    )
    words = advice(row, [10, 100, 1000], min_effect=0.05)
    assert "About 11 seeds per point (it has 2)" in words
    wide = advice(row | dict(ci_low=-1.0, ci_high=1.0), [10, 100, 1000], min_effect=0.05)
    assert "over 64 per point" in wide and "a wider range is cheaper" in wide


def test_advice_for_flagged_and_demoted_verdicts():
    flag = "metric disagreement (Schaeffer et al. 2023): expansion (accelerating) on the metric, ..."
    assert "Schaeffer" in advice(dict(verdict="expansion", axis="n", detail="emerges", flag=flag), [1, 10], 0.1)
    assert advice(dict(verdict="expansion", axis="n", detail="emerges", flag=""), [1, 10], 0.1) == ""
    demoted = dict(verdict="inconclusive", axis="n", detail="reworded at will", reason="not_significant_after_fdr")
    words = advice(demoted, [1, 10], 0.1)
    assert "holds on its own but not after correcting across the slices of this phenomenon along n" in words
    table = dict(verdict="inconclusive", axis="n", reason="not_significant", noise="one value per model; ...")
    assert "More models would narrow the interval" in advice(table, [1, 10], 0.1)
    assert "seeds" not in advice(table, [1, 10], 0.1)


def test_no_finite_strength_shows_the_regimes_instead_of_an_empty_plot(tmp_path):
    """Too short a training run: test accuracy never got there, so grokking has no
    strength anywhere; its figure shows the share of runs in each regime."""
    runs = synthetic_runs(model_sizes=(8, 16, 32), seeds=2).assign(steps_to_fit_test=np.nan, grokking_delay=np.nan)
    runs.loc[runs["data_size"] == 1600, "steps_to_fit_train"] = np.nan  # confusion at the largest data size
    page, _ = build_report(tmp_path, runs, [load_phenomenon("grokking")])
    images = [i for i in parse(page).images if i["data-kind"] == "strength"]
    assert len(images) == 2 and all("share of runs in each regime" in i["alt"] for i in images)
    for image in images:
        assert_not_blank((tmp_path / image["data-file"]).read_bytes())


def test_flagged_verdict_is_marked_and_explained(tmp_path):
    """A metric that rises with data while its continuous alternative falls: the
    classifier flags the disagreement (Schaeffer et al. 2023); the report says so
    on the first screen and in plain words."""
    runs = synthetic_runs(model_sizes=(8, 16, 32), seeds=2).assign(
        hits=lambda t: np.log10(t["data_size"]) + 0.01 * t["seed"],
        smooth=lambda t: -np.log10(t["data_size"]) + 0.01 * t["seed"],
    )
    ph = Phenomenon(name="odd", strength="hits", alternative="smooth", presence=0.0, min_effect=0.1)
    verdicts = classify_runs(runs, [ph], axes=AXES, grid=[], seed="seed", n_boot=0, fdr=None)
    assert (verdicts["flag"] != "").any()  # the setting works: else this test would test nothing
    page = write_report(tmp_path, ReportHeader(title="flags", axes=AXES), runs, [ph], verdicts).read_text()
    first_screen = parse(page[: page.index("<section")]).tables["verdicts"]
    assert sum("FLAGGED" in row[5] for row in first_screen[1:]) == int((verdicts["flag"] != "").sum())
    evidence = parse(page[page.index("<h3>Evidence") :]).tables["evidence"]
    assert evidence[0][-2:] == ["on the alternative metric", "flag"]
    assert "Flagged: metric disagreement" in page and "trust the continuous metric" in page


def _table_report(tmp_path, truth, n_slices: int, rng: int = 0):
    """A published-table-style report: `n_slices` tasks, one value per model, accuracy in [0, 1]."""
    gen = np.random.default_rng(rng)
    parts = []
    for k in range(n_slices):
        u = np.sort(gen.uniform(0, 4, 30))
        parts.append(
            pd.DataFrame({"task": f"t{k}", "n": 10**u, "acc": np.clip(truth(u) + gen.normal(0, 0.02, 30), 0, 1)})
        )
    runs = pd.concat(parts, ignore_index=True)
    ph = Phenomenon(name="acc", strength="acc", presence=0.3, min_effect=0.05)
    verdicts = classify_runs(runs, [ph], axes=["n"], grid=["task"], seed=None, n_boot=0)
    study = ReportHeader(title="table", axes=["n"], grid=["task"], runs_finished=len(runs))
    page = write_report(tmp_path, study, runs, [ph], verdicts).read_text(encoding="utf-8")
    return page, verdicts


def test_thirty_slices_are_small_multiples_on_one_figure(tmp_path):
    page, verdicts = _table_report(tmp_path, lambda u: 0.25 + 0.15 * u, 30)
    images = [i for i in parse(page).images if i["data-kind"] == "strength"]
    assert len(images) == 1 and len(verdicts) == 30
    png = Image.open(tmp_path / images[0]["data-file"])
    assert png.width >= 1000 and png.height >= 6 * 150  # 5 panels a row, 6 rows: each panel readable
    assert "one value per model" in page and "mean over seeds" not in page
    evidence = parse(page[page.index("<h3>Evidence") :]).tables["evidence"]
    assert "values per point" in evidence[0] and "seeds" not in evidence[0]


def test_every_verdict_kind_gets_its_fitted_curve_within_bounds(tmp_path):
    take_off = lambda u: 0.25 + 0.7 / (1 + np.exp(-(u - 2.5) / 0.12))  # noqa: E731
    page, verdicts = _table_report(tmp_path, take_off, 1, rng=1)
    assert verdicts.iloc[0]["reason"] == "abrupt_onset"
    evidence = parse(page[page.index("<h3>Evidence") :]).tables["evidence"]
    assert evidence[1][evidence[0].index("fitted law")].startswith("clipped ramp: flat to n =")
    peak = lambda u: 0.5 + 0.4 * (1 - ((u - 2) / 2) ** 2)  # noqa: E731
    page, verdicts = _table_report(tmp_path / "u", peak, 1, rng=2)
    assert verdicts.iloc[0]["reason"] == "inverted_u", verdicts.iloc[0]["detail"]
    evidence = parse(page[page.index("<h3>Evidence") :]).tables["evidence"]
    assert evidence[1][evidence[0].index("fitted law")].startswith(("broken line", "quadratic"))


def test_a_bounded_metric_is_never_drawn_outside_its_range():
    from scalesweep.analysis.report import _law

    x = np.logspace(0, 3, 8)
    points = pd.DataFrame({"n": x, "strength": np.linspace(0.5, 0.99, 8)})
    row = pd.Series(dict(slice="all", verdict="expansion", effect=0.16, shape="linear", reason="smooth_trend"))
    law = _law(points, "n", row, Phenomenon(name="acc", strength="acc"))
    assert law is not None and law.curve.x.max() > x.max()  # it extrapolates ...
    assert law.curve.y.max() <= 1.0 and law.curve.y.min() >= 0.0  # ... but accuracy stays within [0, 1]
