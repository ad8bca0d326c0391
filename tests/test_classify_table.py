"""`scalesweep classify TABLE.csv`: any table, the same classifier, defaults per group."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import cli

from scalesweep.analysis.table import classify_table
from scalesweep.errors import UserError


def _two_metrics(rng: np.random.Generator) -> pd.DataFrame:
    """One table, two metrics of very different spread: BLEU (0-100) and accuracy (0-1)."""
    rows = []
    for metric, scale in (("bleu", 100.0), ("acc", 1.0)):
        for x in np.logspace(0, 3, 12):
            rows.append(
                dict(metric=metric, n=x, score=scale * (0.2 + 0.05 * np.log10(x)) + rng.normal(0, scale * 0.01))
            )
    return pd.DataFrame(rows)


def _classify(tmp_path, frame: pd.DataFrame, **options):
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    defaults = dict(axis="n", value="score", group=[], seed=None, direction="higher", presence=None, min_effect=None)
    return classify_table(path, **(defaults | options), out_dir=tmp_path / "out", n_boot=20)


def test_defaults_are_per_group_and_said_in_the_report(tmp_path):
    frame = _two_metrics(np.random.default_rng(1))
    _, verdicts = _classify(tmp_path, frame, group=["metric"])
    assert set(verdicts["slice"]) == {"metric=acc", "metric=bleu"}
    assert (verdicts["verdict"] == "expansion").all(), verdicts[["slice", "detail"]]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "defaulted for metric=acc" in page and "defaulted for metric=bleu" in page
    # accuracy's slice alone gives the same verdict and p: BLEU's spread did not set its min_effect
    _, alone = _classify(tmp_path, frame[frame.metric == "acc"], group=["metric"])
    acc = verdicts.set_index("slice").loc["metric=acc"]
    assert acc["verdict"] == alone.iloc[0]["verdict"] and np.isclose(acc["p_value"], alone.iloc[0]["p_value"])


def test_signed_gain_that_changes_sign_is_a_transformation(tmp_path):
    rng = np.random.default_rng(2)
    x = np.logspace(0, 3, 15)
    frame = pd.DataFrame({"n": x, "score": 0.1 * (np.log10(x) - 1.5) + rng.normal(0, 0.01, len(x))})
    _, plain = _classify(tmp_path, frame)
    _, signed = _classify(tmp_path, frame, signed=True)
    assert plain.iloc[0]["verdict"] == "expansion"
    assert signed.iloc[0]["verdict"] == "transformation" and signed.iloc[0]["reason"] == "sign_flip"
    assert signed.iloc[0]["detail"].startswith("sign flip - -> +")


def test_rows_left_out_are_counted(tmp_path):
    frame = _two_metrics(np.random.default_rng(3))
    frame.loc[:2, "n"] = np.nan
    frame.loc[3, "n"] = -1
    frame.loc[4, "score"] = np.nan
    _classify(tmp_path, frame, group=["metric"])
    page = (tmp_path / "out" / "report.html").read_text()
    assert "5 of 24 rows left out: 4 without a positive n, 1 without a numeric score" in page


def test_a_text_column_as_axis_is_named_as_such(tmp_path):
    frame = _two_metrics(np.random.default_rng(4))
    with pytest.raises(UserError, match=r'column "metric" of .* \(option --axis\) is not numeric \(e.g. "bleu"\)'):
        _classify(tmp_path, frame, axis="metric")


def test_classify_imports_neither_torch_nor_mlflow(tmp_path):
    frame = _two_metrics(np.random.default_rng(5))
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    code = (
        "import sys; from scalesweep.cli import app; sys.argv=['scalesweep','classify',sys.argv[1],'--axis','n',"
        "'--value','score','--group','metric','--out',sys.argv[2]]\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'mlflow' not in sys.modules, sorted(m for m in sys.modules if "
        "m.split('.')[0] in ('torch', 'mlflow'))[:3]\nprint('clean')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), str(tmp_path / "o")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "clean" in done.stdout, done.stderr[-2000:]


def test_signed_option_on_the_command_line(tmp_path):
    rng = np.random.default_rng(6)
    x = np.logspace(0, 3, 15)
    pd.DataFrame({"n": x, "gain": 0.1 * (np.log10(x) - 1.5) + rng.normal(0, 0.01, len(x))}).to_csv(
        tmp_path / "g.csv", index=False
    )
    done = cli("classify", "g.csv", "--axis", "n", "--value", "gain", "--signed", "--out", "o", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    verdicts = pd.read_csv(tmp_path / "o" / "verdicts.csv")
    assert verdicts.loc[0, "verdict"] == "transformation" and verdicts.loc[0, "reason"] == "sign_flip"
