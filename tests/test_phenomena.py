import numpy as np
import pandas as pd
import pytest

from scalesweep.analysis.phenomena import catalog_dir, evaluate, list_phenomena, load_phenomenon
from scalesweep.errors import UserError

BUILT_IN = {
    "grokking",
    "generalization_gap",
    "loss_spikes",
    "activation_growth",
    "rank_collapse",
    "dead_units",
    "superposition",
    "test_loss",
}


def test_catalog_has_the_built_ins_and_all_load():
    assert set(list_phenomena()) >= BUILT_IN
    for name in list_phenomena():
        ph = load_phenomenon(name)
        assert ph.description and ph.name == name


def test_grokking_phases_of_liu_et_al():
    runs = pd.DataFrame(
        {
            "steps_to_fit_train": [100, 100, 100, np.nan],
            "steps_to_fit_test": [150, 5000, np.nan, np.nan],
            "grokking_delay": [np.log10(1.5), np.log10(50), np.nan, np.nan],  # decades
        }
    )
    out = evaluate(runs, load_phenomenon("grokking"))
    assert out["regime"].tolist() == ["comprehension", "grokking", "memorization", "confusion"]
    assert out["present"].tolist() == [False, True, False, False]
    wide = evaluate(runs, load_phenomenon("grokking", {"gap": 10000}))
    assert wide["regime"].tolist()[1] == "comprehension"


def test_overrides_and_errors(tmp_path):
    ph = load_phenomenon("test_loss", {"strength": "loss", "presence": 1.5, "min_effect": None})
    assert ph.strength == "loss" and ph.presence == 1.5
    with pytest.raises(UserError, match='did you mean "grokking"'):
        load_phenomenon("grokin")
    with pytest.raises(UserError, match="presense"):
        load_phenomenon("test_loss", {"presense": 1})
    (tmp_path / "bad.yaml").write_text("strength: a\ndirection: sideways\n")
    with pytest.raises(UserError, match=r"bad.yaml.*direction"):
        load_phenomenon("bad", search_dirs=[tmp_path])
    (tmp_path / "evil.yaml").write_text("strength: __import__('os')\n")
    with pytest.raises(UserError, match="evil.yaml"):
        load_phenomenon("evil", search_dirs=[tmp_path])
    (tmp_path / "broken.yaml").write_text("strength: [\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_phenomenon("broken", search_dirs=[tmp_path])


def test_missing_column_is_a_clear_error():
    with pytest.raises(UserError, match=r'phenomenon "dead_units".*dead_fraction'):
        evaluate(pd.DataFrame({"x": [1]}), load_phenomenon("dead_units"))


def test_catalog_dir_env(monkeypatch, tmp_path):
    assert catalog_dir().name == "phenomena" and (catalog_dir() / "grokking.yaml").is_file()
    (tmp_path / "mine.yaml").write_text("strength: a\ndescription: mine\n")
    monkeypatch.setenv("SCALESWEEP_CATALOG", str(tmp_path))
    assert list_phenomena() == ["mine"]


def test_direction_lower_and_alternative():
    runs = pd.DataFrame({"effective_rank": [2.0, 8.0], "em": [0.0, 0.5], "bleu": [10, 40]})
    out = evaluate(runs, load_phenomenon("rank_collapse"))
    assert out["present"].tolist() == [True, False]
    ph = load_phenomenon("test_loss", {"strength": "em", "alternative": "bleu / 100"})
    np.testing.assert_allclose(evaluate(runs, ph)["alternative"], [0.1, 0.4])


def test_a_project_analysis_folder_is_searched_before_the_catalog(monkeypatch, tmp_path):
    """./analysis/ beside the project's sweeps/ adds phenomena and may replace a built-in by name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "mine.yaml").write_text("strength: final_test_loss\n")
    (tmp_path / "analysis" / "grokking.yaml").write_text("strength: grokking_delay\npresence: 0.9\n")
    names = list_phenomena()
    assert "mine" in names and set(names) >= BUILT_IN
    assert load_phenomenon("grokking").presence == 0.9  # the project's, not the built-in 0.3
    assert load_phenomenon("generalization_gap").presence == 0.05  # built-ins still found


def test_an_unknown_phenomenon_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        UserError, match=r'"grokkking" \(did you mean "grokking"\?\).*looked in .*analysis and .*phenomena'
    ):
        load_phenomenon("grokkking")
