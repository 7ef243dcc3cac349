"""PNG figures of the comparison statistics in :mod:`searchlab.report.statistics`.

Each function takes one result dataclass and a path, writes a PNG there (creating the
folder) and returns the path.  Figures are drawn on a bare ``matplotlib.figure.Figure``
with the Agg canvas, never through ``pyplot``: nothing here changes the process's
matplotlib backend or keeps figures alive, so it is safe in servers, workers and tests.
When a strategy has fewer than 5 seeds, the figure carries the plain warning of
:func:`~searchlab.report.statistics.few_seeds_warning` under the plot.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from .statistics import (FixedTarget, IQMEstimates, PerformanceProfile,
                         ProbabilityOfImprovement, few_seeds_warning)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_fixed_target_ecdf", "plot_iqm_curves", "plot_performance_profile",
           "plot_probability_of_improvement"]


def _figure(width: float = 7.0, height: float = 4.5) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _colors() -> list[str]:
    import matplotlib

    return list(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"])


def _save(fig: "Figure", path: str | os.PathLike[str], n_seeds: Mapping[str, int]) -> Path:
    warning = few_seeds_warning(min(n_seeds.values())) if n_seeds else None
    if warning:
        fig.text(0.01, 0.01, textwrap.fill(warning, 120), fontsize=7, color="firebrick",
                 va="bottom", ha="left")
        fig.tight_layout(rect=(0, 0.08, 1, 1))
    else:
        fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120)
    return out


def _legend(ax: "Axes") -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")


def plot_iqm_curves(est: IQMEstimates, path: str | os.PathLike[str], *,
                    title: str | None = None, targets: Mapping[str, float] | None = None,
                    ylabel: str = "best reward so far") -> Path:
    """IQM of best-so-far over seeds with its confidence band, per strategy.

    The x axis is whatever ``est`` was computed against (unique evaluations or
    CPU-seconds); ``targets`` (name -> reward) are drawn as dotted horizontal lines.
    Points where a strategy has no value (NaN) are left out.
    """
    fig = _figure()
    ax = fig.add_subplot()
    colors = _colors()
    x = np.asarray(est.x, dtype=float)
    few = len(x) <= 12
    for k, name in enumerate(est.strategies):
        c = colors[k % len(colors)]
        ax.plot(x, est.point[name], color=c, marker="o" if few else None, markersize=4,
                label=f"{name} (n={est.n_seeds[name]})")
        ax.fill_between(x, est.lower[name], est.upper[name], color=c, alpha=0.2, linewidth=0)
    for k, (tname, level) in enumerate((targets or {}).items()):
        ax.axhline(level, color="0.4", linestyle=":", linewidth=1)
        ax.annotate(tname, (1.0, level), xycoords=("axes fraction", "data"), fontsize=7,
                    color="0.3", ha="right", va="bottom")
    ax.set_xlabel(est.x_label)
    ax.set_ylabel(ylabel)
    pct = round(100 * est.confidence)
    ax.set_title(title or f"IQM over seeds, {pct} % stratified-bootstrap CI "
                          f"({est.reps} resamples)", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(fig, path, est.n_seeds)


def plot_probability_of_improvement(poi: ProbabilityOfImprovement,
                                    path: str | os.PathLike[str], *,
                                    title: str | None = None) -> Path:
    """Heatmap of P(row > column) with the point estimate and CI written in each cell."""
    k = len(poi.names)
    side = max(4.0, 1.1 * k + 2.0)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    shown = np.where(np.isnan(poi.point), 0.5, poi.point)
    im = ax.imshow(shown, cmap="RdBu", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            if i == j or math.isnan(poi.point[i, j]):
                text, color = "-", "0.3"
            else:
                text = f"{poi.point[i, j]:.2f}\n[{poi.lower[i, j]:.2f}, {poi.upper[i, j]:.2f}]"
                color = "white" if abs(poi.point[i, j] - 0.5) > 0.3 else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(k), labels=list(poi.names), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels=list(poi.names), fontsize=8)
    ax.set_xlabel("Y (column)")
    ax.set_ylabel("X (row)")
    pct = round(100 * poi.confidence)
    ax.set_title(title or f"P(X > Y) of final best reward, {pct} % bootstrap CI", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path, poi.n_seeds)


def plot_performance_profile(profile: PerformanceProfile, path: str | os.PathLike[str], *,
                             title: str | None = None,
                             xlabel: str = "final best reward tau") -> Path:
    """Fraction of runs scoring above tau, per strategy, with its confidence band."""
    fig = _figure()
    ax = fig.add_subplot()
    colors = _colors()
    for k, name in enumerate(profile.point):
        c = colors[k % len(colors)]
        ax.plot(profile.taus, profile.point[name], color=c,
                label=f"{name} (n={profile.n_seeds[name]})")
        ax.fill_between(profile.taus, profile.lower[name], profile.upper[name], color=c,
                        alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of runs with score > tau")
    ax.set_ylim(-0.02, 1.02)
    pct = round(100 * profile.confidence)
    ax.set_title(title or f"Performance profiles, {pct} % stratified-bootstrap band",
                 fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(fig, path, profile.n_seeds)


def plot_fixed_target_ecdf(ft: FixedTarget, path: str | os.PathLike[str], *,
                           title: str | None = None) -> Path:
    """ECDF of the unique evaluations needed to reach the targets, per strategy.

    The y value at x is the fraction of (run, target) pairs reached within x evaluations;
    the legend gives the pooled success rate.
    """
    fig = _figure()
    ax = fig.add_subplot()
    colors = _colors()
    n_seeds: dict[str, int] = {}
    for k, (name, y) in enumerate(ft.ecdf.items()):
        c = colors[k % len(colors)]
        per = ft.results[name]
        runs = next(iter(per.values())).runs
        n_seeds[name] = runs
        succ = sum(r.successes for r in per.values()) / (runs * len(per))
        ax.step(ft.grid, y, where="post", color=c,
                label=f"{name} (n={runs}, reached {100 * succ:.0f} %)")
    ax.set_xlabel("unique evaluations")
    ax.set_ylabel("fraction of (run, target) pairs reached")
    ax.set_ylim(-0.02, 1.02)
    names = ", ".join(f"{t}={v:.3f}" for t, v in ft.targets.items())
    ax.set_title(title or textwrap.fill(f"Fixed-target ECDF; targets {names}", 90), fontsize=9)
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(fig, path, n_seeds)
