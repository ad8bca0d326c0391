"""Figures: tidy table in, PNG out (seaborn), one job per function.

Every figure is written headless (Agg) so reports can be built on a worker or
in CI. Text that comes from a spec or a run is passed through `_plain`, because
matplotlib would read a `$` in a run's name as the start of a formula.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DEEP_BLUE = "#4c72b0"  # seaborn's first colour


@functools.cache
def pyplot():
    """matplotlib's pyplot, headless (Agg: reports are written on workers and in CI), with
    seaborn's look before seaborn is imported (see `_seaborn`). Imported on first use (~0.3 s):
    `classify TABLE.csv` imports it while its slices are classified in forked workers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.style.use("seaborn-v0_8-whitegrid")
    return plt


def _no_minor_ticks(axis) -> None:
    from matplotlib.ticker import NullLocator

    axis.set_minor_locator(NullLocator())


def _seaborn():
    """seaborn, imported on first use, with its theme: the import costs ~0.7 s (it imports
    scipy.stats), which a report drawn only with small multiples does not need."""
    pyplot()  # headless first
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return sns


MAX_LABELLED_TICKS = 12
SMALL_MULTIPLES_FROM = 7  # from this many slices on, one panel per slice instead of one line each
PANELS_PER_ROW = 5


@dataclass
class Curve:
    """A fitted law drawn over one slice: dashed over the data, dotted where it
    extrapolates beyond the largest measured scale (`data_max`)."""

    slice: str
    x: np.ndarray
    y: np.ndarray
    label: str
    data_max: float


def strength_vs_axis(
    points: pd.DataFrame,
    *,
    axis: str,
    slice_col: str,
    order: Sequence[str],
    title: str,
    ylabel: str,
    path: Path,
    curves: Sequence[Curve] = (),
    presence: float | None = None,
) -> Path:
    """Strength against one scale axis on a log x axis, one line per slice
    (in `order`), with a band of the seed-to-seed 95% interval at each point,
    the fitted laws of the verdicts and the presence threshold. From
    `SMALL_MULTIPLES_FROM` slices on, small multiples instead: one panel per
    slice, shared axes (so 30 or more slices stay readable on one page)."""
    if len(order) >= SMALL_MULTIPLES_FROM:
        return _small_multiples(points, axis, slice_col, order, title, ylabel, path, curves, presence)
    fig, ax = pyplot().subplots(figsize=(8.0, 4.4))
    data = points.dropna(subset=["strength"])
    palette_name = None if len(order) <= 10 else "husl"  # seaborn's default repeats after 10 colours
    sns = _seaborn()
    colours = dict(zip(order, sns.color_palette(palette_name, n_colors=max(len(order), 1)), strict=False))
    if data.empty:
        ax.text(0.5, 0.5, "no run has a finite strength", ha="center", va="center", transform=ax.transAxes)
    else:
        data = data.assign(**{slice_col: data[slice_col].map(_plain)})
        palette = {_plain(k): v for k, v in colours.items()}
        sns.lineplot(
            data=data,
            x=axis,
            y="strength",
            hue=slice_col,
            hue_order=[_plain(s) for s in order],
            palette=palette,
            marker="o",
            errorbar=("ci", 95),
            n_boot=200,
            seed=0,
            ax=ax,
        )
        _draw_curves(ax, curves, colours)
        _draw_presence(ax, presence, data["strength"])
        _log_axis(ax, points[axis])
    ax.set(title=_plain(title), xlabel=_plain(axis), ylabel=_plain(ylabel))
    if ax.get_legend() is not None:  # beside the axes, so that many slices hide no data
        ax.legend(
            fontsize="x-small",
            title_fontsize="small",
            title=_plain(slice_col),
            bbox_to_anchor=(1.02, 1),
            loc="upper left",
            ncol=1 if len(order) <= 16 else 2,
        )
    return _save(fig, path)


def _small_multiples(points, axis, slice_col, order, title, ylabel, path, curves, presence) -> Path:
    """One panel per slice on a shared grid of axes, its own fitted curve in each.

    Drawn with plain matplotlib on seaborn's theme: a FacetGrid lays out its panels
    twice (`tight_layout`), which for 30 panels costs more than the whole classification."""
    data = points.dropna(subset=["strength"])
    cols = min(PANELS_PER_ROW, len(order))
    rows = -(-len(order) // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(2.6 * cols, 2.0 * rows + 0.9), sharex=True, sharey=True)
    axes = np.atleast_1d(axes).ravel()
    by_slice = {c.slice: c for c in curves}
    colour = DEEP_BLUE
    for ax, name in zip(axes, order, strict=False):
        mine = data[data[slice_col] == name]
        stats = mine.groupby(axis)["strength"].agg(["mean", "sem", "size"])
        ax.plot(stats.index, stats["mean"], marker="o", ms=3, lw=1, color=colour)
        spread = stats["size"] >= 2
        if spread.any():  # replicates: the 95% interval of the mean (normal approximation)
            half = 1.96 * stats["sem"].where(spread)
            ax.fill_between(stats.index, stats["mean"] - half, stats["mean"] + half, color=colour, alpha=0.2, lw=0)
        if name in by_slice:
            _draw_curves(ax, [by_slice[name]], {name: "black"}, legend=False)
        _draw_presence(ax, presence, data["strength"])
        ax.set_xscale("log")
        ax.set_title(_plain(name), fontsize="x-small")
    for ax in axes[len(order) :]:
        ax.set_visible(False)
    # No minor ticks on the shared log axis: each is an artist per panel, and drawing them
    # cost half the figure's time (30 panels: ~1 s); the decades are labelled.
    _no_minor_ticks(axes[0].xaxis)
    fig.supxlabel(_plain(axis), fontsize="small")
    fig.supylabel(_plain(ylabel) if len(ylabel) <= 24 else "strength", fontsize="small")
    fig.suptitle(_plain(title) + " (dashed: fitted curve; dotted: extrapolated)", fontsize="medium")
    height = 2.0 * rows + 0.9  # inches: the margins below are fixed in inches, whatever the rows
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.5 / height + 0.03, top=1 - 0.8 / height, hspace=0.45)
    return _save(fig, path, tight=False)  # a fixed layout: tight_layout measures every panel's text


def _draw_curves(ax, curves: Sequence[Curve], colours: dict, legend: bool = True) -> None:
    labelled: set[str] = set()  # one legend entry per kind of law, not per slice
    for curve in curves:
        inside = curve.x <= curve.data_max * (1 + 1e-9)
        colour = colours.get(curve.slice, "black")
        label = "_" if curve.label in labelled or not legend else _plain(curve.label)
        ax.plot(curve.x[inside], curve.y[inside], ls="--", lw=1.2, color=colour, label=label)
        beyond = curve.x >= curve.data_max * (1 - 1e-9)
        if beyond.sum() > 1:
            label = "_" if "extrapolated" in labelled or not legend else "extrapolated"
            ax.plot(curve.x[beyond], curve.y[beyond], ls=":", lw=1.5, color=colour, label=label)
            labelled.add("extrapolated")
        labelled.add(curve.label)


def _draw_presence(ax, presence: float | None, strength: pd.Series) -> None:
    """The presence threshold, when it lies near the data (not +-inf or far away)."""
    if presence is None or not np.isfinite(presence):
        return
    lo, hi = float(strength.min()), float(strength.max())
    pad = 0.5 * (hi - lo)
    if lo - pad <= presence <= hi + pad:
        ax.axhline(presence, color="grey", ls="-.", lw=1, label="presence threshold")


def _log_axis(ax, values: pd.Series) -> None:
    """Log x axis labelled with the measured scales (few) or decades (many)."""
    ax.set_xscale("log")
    ticks = np.sort(pd.to_numeric(values, errors="coerce").dropna().unique())
    ticks = ticks[ticks > 0]
    if 0 < len(ticks) <= MAX_LABELLED_TICKS:
        from matplotlib.ticker import FixedLocator

        ax.xaxis.set_major_locator(FixedLocator(ticks))
        _no_minor_ticks(ax.xaxis)
        ax.set_xticklabels([f"{t:g}" for t in ticks], fontsize="small")


def regime_shares_vs_axis(table: pd.DataFrame, *, axis: str, labels: Sequence[str], title: str, path: Path) -> Path:
    """Share of runs in each regime against one axis (log x), over every slice: the
    figure to show when no run has a finite strength but every run has a regime.
    Regimes keep the colours of the phase diagram."""
    full = table.groupby(axis)["regime"].value_counts(normalize=True).unstack("regime").fillna(0.0)
    labels = _all_labels(labels, full.columns)
    colours = _regime_colours(labels)
    fig, ax = pyplot().subplots(figsize=(8.0, 4.4))
    for label in (label for label in labels if label in full.columns):
        ax.plot(full.index, full[label], marker="o", color=colours[label], label=_plain(label))
    _log_axis(ax, table[axis])
    ax.set(title=_plain(title), xlabel=_plain(axis), ylabel="share of runs", ylim=(-0.05, 1.05))
    ax.legend(fontsize="x-small", title="regime", bbox_to_anchor=(1.02, 1), loc="upper left")
    return _save(fig, path)


def _all_labels(labels: Sequence[str], found: Iterable[str]) -> list[str]:
    """The phenomenon's regimes in catalog order, then any other label found."""
    return [*labels, *sorted(set(found) - set(labels))]


def _regime_colours(labels: Sequence[str]) -> dict[str, tuple]:
    return dict(zip(labels, _seaborn().color_palette("Set2", len(labels)), strict=True))


def regime_phase_diagram(table: pd.DataFrame, *, x: str, y: str, labels: Sequence[str], title: str, path: Path) -> Path:
    """The dominant regime at each (x, y) point over seeds and other grid values,
    as a heatmap annotated with the regime and its share of the runs (like the
    grokking phase diagrams of Liu et al. 2022). Colours follow `labels`, so a
    regime has the same colour in every phenomenon's diagram."""
    grouped = table.groupby([y, x])["regime"]
    dominant = grouped.agg(lambda s: s.value_counts().index[0]).unstack(x)
    share = grouped.agg(lambda s: s.value_counts(normalize=True).iloc[0]).unstack(x)
    labels = _all_labels(labels, dominant.stack())
    codes = dominant.apply(lambda col: col.map(labels.index)).astype(float)
    short = len(codes.columns) > 3  # narrow cells: abbreviated labels, the legend has them whole
    text = dominant.apply(lambda col: col.map(lambda v: _plain(_abbreviate(v) if short else v)))
    text = text + share.map(lambda v: f"\n{v:.0%}")
    palette = list(_regime_colours(labels).values())
    fig, ax = pyplot().subplots(figsize=(min(4.0 + 1.1 * len(codes.columns), 12.0), 4.6))
    _seaborn().heatmap(
        codes,
        annot=text.to_numpy(),
        fmt="",
        cmap=palette,
        cbar=False,
        ax=ax,
        vmin=-0.5,
        vmax=len(labels) - 0.5,
        annot_kws={"fontsize": "small"},
        linewidths=0.5,
    )
    ax.set_xticklabels([_tick(v) for v in codes.columns])
    ax.set_yticklabels([_tick(v) for v in codes.index], rotation=0)
    ax.invert_yaxis()
    used = [label for label in labels if label in set(dominant.stack())]
    from matplotlib.patches import Patch

    handles = [Patch(color=palette[labels.index(label)], label=_plain(label)) for label in used]
    ax.legend(handles=handles, bbox_to_anchor=(1.02, 1), loc="upper left", fontsize="small", title="regime")
    ax.set(title=_plain(title), xlabel=_plain(x), ylabel=_plain(y))
    return _save(fig, path)


def _abbreviate(label: object, width: int = 7) -> str:
    text = str(label)
    return text if len(text) <= width else text[: width - 1] + "."


def _tick(value: object) -> str:
    return f"{value:g}" if isinstance(value, int | float | np.number) else _plain(value)


def _plain(text: object) -> str:
    """Text as it is: no mathtext (a `$` in a spec name would start a formula)."""
    return str(text).replace("$", r"\$")


def _save(fig, path: Path, tight: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


# --- over training steps: small multiples, one panel per scale point ------------------------


def over_steps(
    table: pd.DataFrame,
    *,
    value: str,
    panel_col: str,
    order: Sequence[str],
    title: str,
    ylabel: str,
    path: Path,
    seed_col: str = "seed",
    presence: float | None = None,
    marks: dict[str, Sequence[float]] | None = None,
    columns: int | None = None,
) -> Path:
    """`value` against the training step (log x), one panel per scale point (`panel_col`, in
    `order`) on shared axes: a thin line per seed and their mean in bold, so that a reader
    compares how the dynamics change with scale panel by panel. `marks` draws vertical lines
    (e.g. each seed's `first_step(...)`) in the panel of that name. `columns` panels per row
    (default `PANELS_PER_ROW`): the values of the last scale axis, so that rows and columns of
    the grid are the two axes. Step 0 is not drawn (log x)."""
    data = table[np.isfinite(pd.to_numeric(table[value], errors="coerce")) & (table["step"] > 0)]
    cols = min(columns or PANELS_PER_ROW, max(len(order), 1))
    rows = max(1, -(-len(order) // cols))
    height = 2.0 * rows + 0.9  # inches: the fixed margins below are in inches too
    fig, axes = pyplot().subplots(
        rows, cols, figsize=(2.6 * cols + 0.4, height), sharex=True, sharey=True, squeeze=False
    )
    axes = axes.ravel()
    for ax, name in zip(axes, order, strict=False):
        _steps_panel(ax, data[data[panel_col] == name], value, seed_col)
        for step in (marks or {}).get(name, ()):
            if np.isfinite(step) and step > 0:
                ax.axvline(step, color="#c44e52", lw=0.8, ls=":")
        _draw_presence(ax, presence, data[value] if len(data) else pd.Series([0.0]))
        ax.set_title(_plain(name), fontsize="x-small")
    for ax in axes[len(order) :]:
        ax.set_visible(False)
    if len(data):
        axes[0].set_xscale("log")
        _no_minor_ticks(axes[0].xaxis)
    fig.supxlabel("training step", fontsize="small")
    fig.supylabel(_plain(ylabel) if len(ylabel) <= 28 else _plain(value), fontsize="small")
    fig.suptitle(_plain(title), fontsize="medium")
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.5 / height + 0.03, top=1 - 0.8 / height, hspace=0.45)
    return _save(fig, path, tight=False)


def _steps_panel(ax, mine: pd.DataFrame, value: str, seed_col: str) -> None:
    """One scale point: each seed's series thin, the mean over seeds at each step bold."""
    if mine.empty:
        ax.text(0.5, 0.5, "no series", ha="center", va="center", transform=ax.transAxes, fontsize="x-small")
        return
    groups = mine.groupby(seed_col) if seed_col in mine else [(None, mine)]
    for _, run in groups:
        run = run.sort_values("step")
        ax.plot(run["step"], run[value], lw=0.6, alpha=0.45, color=DEEP_BLUE)
    mean = mine.groupby("step")[value].mean()
    ax.plot(mean.index, mean.to_numpy(), lw=1.6, color="black")
