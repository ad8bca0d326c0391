import numpy as np
import pytest

from scalesweep.analysis import fits
from scalesweep.errors import UserError


def test_power_law_recovers_parameters_and_crossing():
    rng = np.random.default_rng(0)
    x = np.logspace(1, 5, 20)
    y = 0.5 + 20 * x**-0.4 * np.exp(rng.normal(0, 0.01, len(x)))
    fit = fits.fit_power_law(x, y, n_boot=100)
    assert fit.params["alpha"] == pytest.approx(0.4, abs=0.05)
    assert fit.ci["E"][0] < 0.5 < fit.ci["E"][1]
    np.testing.assert_allclose(fit.predict(x), y, rtol=0.05)
    est, lo, hi = fit.crossing(1.0)
    true = (20 / 0.5) ** (1 / 0.4)
    assert lo <= est <= hi and est == pytest.approx(true, rel=0.3)
    assert fit.crossing(0.1)[0] == np.inf  # below the asymptote: never crossed


@pytest.mark.slow
def test_chinchilla_recovers_synthetic_law():
    rng = np.random.default_rng(1)
    n = 10 ** rng.uniform(7, 10, 150)
    d = 10 ** rng.uniform(9, 11, 150)
    true = dict(E=1.7, A=400.0, B=1500.0, alpha=0.34, beta=0.3)
    loss = (true["E"] + true["A"] / n ** true["alpha"] + true["B"] / d ** true["beta"]) * np.exp(
        rng.normal(0, 0.005, 150)
    )
    fit = fits.fit_chinchilla(n, d, loss, n_boot=30)
    assert fit.params["alpha"] == pytest.approx(0.34, abs=0.05)
    assert fit.params["E"] == pytest.approx(1.7, abs=0.1)
    np.testing.assert_allclose(fit.predict(n, d), loss, rtol=0.03)
    n_opt, d_opt = fit.compute_optimal(1e21)
    assert 6 * n_opt * d_opt == pytest.approx(1e21)
    assert set(fit.table()) == {"E", "A", "B", "alpha", "beta"}


def test_bnsl_fits_a_break():
    x = np.logspace(1, 4, 25)
    y = fits._bnsl(x, 0.1, 3.0, 0.05, 2.0, 300.0, 0.2)
    fit = fits.fit_bnsl(x[:20], y[:20], n_boot=0)
    assert fits.rmsle(fit.predict(x[20:]), y[20:]) < 0.05


def test_too_few_points():
    with pytest.raises(UserError):
        fits.fit_power_law([1, 2, 3], [1, 2, 3])


def test_commands_give_clear_errors(tmp_path):
    from scalesweep.analysis.table import classify_table
    from scalesweep.commands import fit_command

    table = tmp_path / "t.csv"
    table.write_text("size,loss\n1,3\n10,2\n100,1.5\n1000,1.2\n")
    with pytest.raises(UserError, match="does not exist"):
        fit_command(tmp_path / "nope.csv", "power", "loss", x="size")
    with pytest.raises(UserError, match='did you mean "loss"'):
        fit_command(table, "power", "los", x="size")
    with pytest.raises(UserError, match="unknown law"):
        fit_command(table, "powr", "loss", x="size")
    with pytest.raises(UserError, match="columns are: size, loss"):
        classify_table(
            table,
            axis="sise",
            value="loss",
            group=[],
            seed=None,
            direction="higher",
            presence=None,
            min_effect=None,
            out_dir=tmp_path,
        )
    out = fit_command(table, "power", "loss", x="size", n_boot=10)
    assert set(out) == {"E", "A", "alpha"} and set(out["E"]) == {"value", "ci_low", "ci_high"}
