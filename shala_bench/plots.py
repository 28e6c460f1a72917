"""PNG line plots for the leaderboards: one line per model, mean ± std (or min–max) bands over seeds.

Byte-reproducible: an Agg canvas on a bare `Figure` (no pyplot state, no GUI backend), the
matplotlib default style whatever the user's matplotlibrc says, and no metadata (the
"Software" text chunk names the matplotlib version; PNGs carry no timestamp otherwise).
"""

from __future__ import annotations

import math
from pathlib import Path

PNG_METADATA = {"Software": None}
DPI = 100
SIZE = (6.4, 4.2)  # inches


def model_colors(models: list[str]) -> dict[str, str]:
    """A fixed colour per model: its place in the sorted list of models (tab10, then tab20)."""
    from matplotlib import colormaps

    names = sorted(models)
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(names)}


def line_plot(path: Path, series: dict[str, tuple[list, list[float], list[float]]], *, xlabel: str, ylabel: str,
              title: str, models: list[str] | None = None, xticks: list | None = None,
              chance: float | None = None) -> Path:
    """series: model -> (xs, means, stds); a std of NaN (one seed) draws no band at that x. `chance`: a
    dashed line at that y, so a curve's distance from chance is seen at a glance."""
    bands = {}
    for model, (xs, means, stds) in series.items():
        lo = [m - (0.0 if math.isnan(s) else s) for m, s in zip(means, stds)]
        hi = [m + (0.0 if math.isnan(s) else s) for m, s in zip(means, stds)]
        bands[model] = (xs, means, lo, hi)
    return band_plot(path, bands, xlabel=xlabel, ylabel=ylabel, title=title, models=models, xticks=xticks,
                     chance=chance)


def band_plot(path: Path, series: dict[str, tuple[list, list[float], list[float], list[float]]], *, xlabel: str,
              ylabel: str, title: str, models: list[str] | None = None, xticks: list | None = None,
              chance: float | None = None, marker: str | None = "o",
              xline: tuple[float, str] | None = None) -> Path:
    """series: model -> (xs, means, lows, highs): a line through the means and a band from low to high
    (drawn only where some band has width). As `line_plot`, whose bands are mean ± std. `xline`: (x, label),
    a dotted vertical line at x."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    colors = model_colors(models or list(series))
    with matplotlib.style.context("default"):  # ignore the user's matplotlibrc
        fig = Figure(figsize=SIZE, dpi=DPI)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for model in sorted(series):
            xs, means, lo, hi = series[model]
            if not xs:
                continue
            color = colors.get(model)
            ax.plot(xs, means, marker=marker, markersize=4 if marker and len(xs) > 12 else 6, color=color,
                    label=model)
            if any(h - l > 0 for l, h in zip(lo, hi)):
                ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
        if xline is not None:
            ax.axvline(xline[0], color="black", linestyle=":", linewidth=1, label=xline[1])
        if xticks:
            ax.set_xticks(list(xticks))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        if any(series[m][0] for m in series):
            ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=DPI, metadata=PNG_METADATA)
    return path
