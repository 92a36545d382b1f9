"""Deterministic PNG charts for the dataset card (matplotlib Agg, no pyplot global state).

Same inputs and the same matplotlib/FreeType versions give byte-identical PNGs: the figures use
matplotlib's default rc (not the user's matplotlibrc), a fixed size and dpi, and the PNG
``Software`` tag (the only metadata matplotlib writes by default) is removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: rc overrides on top of matplotlib's defaults; fixed so charts do not depend on the user's rc.
RC = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.hashsalt": "vividhead",
    "path.simplify": True,
}
_SIZE_IN = (6.4, 3.6)
_COLOR = "#3b6ea5"
_PNG_META = {"Software": None}


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata=_PNG_META)
    return path


def _context():
    rc = dict(matplotlib.rcParamsDefault)
    rc.pop("backend", None)
    rc.update(RC)
    return matplotlib.rc_context(rc)


def histogram(values: Sequence[float], path: Path, title: str, xlabel: str, bins: int = 30,
              missing: int = 0) -> Path:
    """Draw a histogram PNG of ``values`` (nulls already removed).

    Args:
        values: finite numbers; an empty sequence draws a "no data" panel.
        path: output PNG path (parents created).
        title: chart title.
        xlabel: x axis label with units.
        bins: number of equal-width bins between min and max.
        missing: count of null values, shown in the title.

    Returns:
        ``path``.
    """
    with _context():
        fig = Figure(figsize=_SIZE_IN)
        ax = fig.add_subplot()
        arr = np.asarray(values, dtype=np.float64)
        suffix = f" (n={arr.size}" + (f", {missing} null)" if missing else ")")
        ax.set_title(title + suffix)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("clips")
        if arr.size:
            lo, hi = float(arr.min()), float(arr.max())
            if lo == hi:
                lo, hi = lo - 0.5, hi + 0.5
            ax.hist(arr, bins=np.linspace(lo, hi, bins + 1), color=_COLOR)
        else:
            ax.text(0.5, 0.5, "no data (stage did not run)", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        return _save(fig, path)


def funnel_figure(stages: Sequence[str], counts_in: Sequence[int], counts_out: Sequence[int],
                  off: Sequence[bool] = ()) -> Figure:
    """The filtering funnel figure: one horizontal bar pair (in, out) per stage, in pipeline order.

    Args:
        stages: stage names, first stage at the top.
        counts_in / counts_out: items entering / leaving each stage (ignored for stages that are off).
        off: per stage, True when it was disabled: no bars, its label reads ``<name> (off)`` and
            the row says ``off`` (empty: every stage ran).

    Returns:
        The figure (call inside :func:`_context` to get the card's fixed style).
    """
    off = list(off) or [False] * len(stages)
    ran = [not o for o in off]
    fig = Figure(figsize=(_SIZE_IN[0], max(2.0, 0.45 * len(stages) + 1.0)))
    ax = fig.add_subplot()
    y = np.arange(len(stages))[::-1]
    ax.barh(y[ran] + 0.2, np.asarray(counts_in)[ran], height=0.4, color="#b8c7d9", label="in")
    ax.barh(y[ran] - 0.2, np.asarray(counts_out)[ran], height=0.4, color=_COLOR, label="out")
    for yi, c, was_off in zip(y, counts_out, off):
        if was_off:
            ax.text(0, yi, " off (stage disabled)", va="center", fontsize=8, color="#888888")
        else:
            ax.text(c, yi - 0.2, f" {c}", va="center", fontsize=8)
    ax.set_yticks(y, [f"{s} (off)" if o else s for s, o in zip(stages, off)])
    for label, was_off in zip(ax.get_yticklabels(), off):
        if was_off:
            label.set_color("#888888")
    ax.set_xlabel("items (inputs or clips)")
    ax.set_title("Filtering funnel")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def funnel(stages: Sequence[str], counts_in: Sequence[int], counts_out: Sequence[int], path: Path,
           off: Sequence[bool] = ()) -> Path:
    """Draw :func:`funnel_figure` to a PNG at ``path`` (stages that were ``off`` drawn as such).

    Returns:
        ``path``.
    """
    with _context():
        return _save(funnel_figure(stages, counts_in, counts_out, off), path)


def bars(labels: Sequence[str], counts: Sequence[int], path: Path, title: str, xlabel: str) -> Path:
    """Draw a horizontal bar chart (e.g. clips per language), first label at the top.

    Returns:
        ``path``.
    """
    with _context():
        fig = Figure(figsize=(_SIZE_IN[0], max(2.0, 0.3 * len(labels) + 1.0)))
        ax = fig.add_subplot()
        y = np.arange(len(labels))[::-1]
        ax.barh(y, counts, color=_COLOR)
        ax.set_yticks(y, list(labels))
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        fig.tight_layout()
        return _save(fig, path)
