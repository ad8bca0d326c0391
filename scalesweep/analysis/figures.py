"""Figures: tidy table in, PNG out (seaborn), one job per function."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written headless, on workers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def strength_vs_axis(
    points: pd.DataFrame, *, axis: str, slice_col: str | None, title: str, ylabel: str, path: Path
) -> Path:
    """Strength against one scale axis on a log x axis, one line per slice,
    with a band of the seed-to-seed 95% interval at each point."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    data = points.dropna(subset=["strength"])
    if data.empty:
        ax.text(0.5, 0.5, "no finite strength values", ha="center", va="center", transform=ax.transAxes)
    else:
        sns.lineplot(
            data=data, x=axis, y="strength", hue=slice_col, marker="o", errorbar=("ci", 95), n_boot=200, seed=0, ax=ax
        )
        ax.set_xscale("log")
    ax.set(title=title, xlabel=axis, ylabel=ylabel)
    if ax.get_legend() is not None:
        ax.legend(title=slice_col, fontsize="small", title_fontsize="small")
    return _save(fig, path)


def regime_phase_diagram(table: pd.DataFrame, *, x: str, y: str, title: str, path: Path) -> Path:
    """The dominant regime at each (x, y) point, as a heatmap with labels
    (like the grokking phase diagrams of Liu et al. 2022)."""
    dominant = table.groupby([y, x])["regime"].agg(lambda s: s.value_counts().index[0]).unstack(x)
    labels = sorted(set(dominant.stack()))
    codes = dominant.apply(lambda col: col.map(labels.index)).astype(float)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    palette = sns.color_palette("Set2", len(labels))
    sns.heatmap(codes, annot=dominant, fmt="", cmap=palette, cbar=False, ax=ax, vmin=-0.5, vmax=len(labels) - 0.5)
    ax.invert_yaxis()
    ax.set(title=title, xlabel=x, ylabel=y)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
