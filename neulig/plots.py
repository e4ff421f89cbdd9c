"""Figures: the paper's Figure 3 scatter of merged vs ensembled average accuracy.

:func:`curve_png` draws a run's accuracy-versus-steps curves (``curve.png``), from its training histories.

Each point is one run (one method on one combination): x = merged accuracy, y = ensembled accuracy,
both in percent. A point on the dash-dot line y = x has no gap between merging and ensembling; the
vertical distance to the line is the run's ``gap/avg``. One marker shape per method. A method with no
ensemble counterpart is drawn at y = 0, as in the paper.

matplotlib is imported inside the functions and draws on an Agg canvas of its own (no pyplot, no global
backend change), so importing this module costs nothing and it works headless.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from neulig.utils.cache import atomic_file

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "8", "d", "H")


def scatter_png(points: list[dict], path: str | Path, title: str | None = None) -> Path:
    """Write the merged-vs-ensembled scatter of ``points`` to ``path`` (PNG, written atomically).

    ``points``: dicts with ``method`` (str), ``merged`` (float, %) and ``ensembled`` (float % or None
    when the method has no ensemble). Returns ``path``.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    methods = list(dict.fromkeys(p["method"] for p in points))
    fig = Figure(figsize=(5.6, 4.8), dpi=120)
    FigureCanvasAgg(fig)  # Agg canvas on this figure only: no pyplot, no global backend switch
    ax = fig.add_subplot(1, 1, 1)
    values = [float(p["merged"]) for p in points] + [float(p["ensembled"]) for p in points
                                                     if p.get("ensembled") is not None]
    if any(p.get("ensembled") is None for p in points) or not values:
        lo = 0.0  # points without an ensemble sit on y = 0
    else:
        lo = max(0.0, 5.0 * math.floor((min(values) - 2.0) / 5.0))
    hi = 100.0
    ax.plot([lo, hi], [lo, hi], linestyle="-.", color="0.4", linewidth=1.0, label="merged = ensembled",
            zorder=1)
    colors = matplotlib.colormaps["tab10"]
    for i, method in enumerate(methods):
        mine = [p for p in points if p["method"] == method]
        xs = [float(p["merged"]) for p in mine]
        ys = [float(p["ensembled"]) if p.get("ensembled") is not None else 0.0 for p in mine]
        no_ens = all(p.get("ensembled") is None for p in mine)
        ax.scatter(xs, ys, marker=MARKERS[i % len(MARKERS)], s=60, color=colors(i % 10), edgecolors="black",
                   linewidths=0.5, zorder=3, label=f"{method} (no ensemble: y = 0)" if no_ens else method)
    pad = (hi - lo) * 0.015  # markers at 0 or 100 stay whole
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal", adjustable="box")
    return save_figure(fig, ax, "merged accuracy (%)", "ensembled accuracy (%)", title, path)


def run_scatter(run_dir: str | Path, method: str, metrics: dict[str, float], title: str | None = None) -> Path:
    """``scatter.png`` in ``run_dir`` with this run's average point (``acc/merged/avg``, ``acc/ensembled/avg``)."""
    point = {"method": method, "merged": metrics["acc/merged/avg"], "ensembled": metrics.get("acc/ensembled/avg")}
    return scatter_png([point], Path(run_dir) / "scatter.png", title=title)


CURVE_KEY = re.compile(r"^(val|test)/\w+_avg$")


def curve_png(histories: dict[str, list[dict]], path: str | Path, title: str | None = None) -> Path | None:
    """The accuracy-versus-steps (or epochs) curves of a run: every ``val/..._avg`` and ``test/..._avg`` of
    each combination's training history (``histories``: {combination label: history}); None when no
    history holds one. Written atomically, like :func:`scatter_png`."""
    series = {(label, key): [(p["epoch"], p[key]) for p in history if key in p]
              for label, history in histories.items() for key in sorted({k for p in history for k in p
                                                                          if CURVE_KEY.match(k)})}
    if not series:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for (label, key), points in series.items():
        xs, ys = zip(*points)
        name = key if len(histories) == 1 else f"{label}: {key}"
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, linestyle="-" if key.startswith("test") else "--",
                label=name)
    return save_figure(fig, ax, "step (epoch for Portland)", "accuracy (%), mean over datasets", title, path)


def save_figure(fig, ax, xlabel: str, ylabel: str, title: str | None, path: str | Path) -> Path:
    """Label, grid and legend the axes, then write the figure as a PNG at ``path`` (temp name, renamed)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, linewidth=0.3, alpha=0.5)
    ax.legend(fontsize=7, loc="best", framealpha=0.8)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
