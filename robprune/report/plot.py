"""Plots written as PNG files, e.g. per-layer sensitivity scores.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly rather than pyplot:
pyplot keeps a global registry of open figures and a process-wide backend, and Hydra multirun runs
many jobs in one process (no hidden state, docs/style.md).
"""
from __future__ import annotations

import math
from pathlib import Path

from robprune.io import atomic_write


def bar_chart(values: dict[str, float], out_png: Path, *, title: str, ylabel: str) -> Path:
    """One bar per item of ``values`` (label -> height, in insertion order), saved atomically to out_png.

    NaN heights leave a gap. Raises ValueError if ``values`` is empty. Returns out_png.
    """
    if not values:
        raise ValueError("bar_chart needs at least one value")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [str(k) for k in values]
    heights = [float(v) for v in values.values()]
    # Widen with the number of bars so per-layer labels of a deep network stay legible.
    fig = Figure(figsize=(max(4.0, 0.3 * len(labels) + 1.5), 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(range(len(labels)), [0.0 if math.isnan(h) else h for h in heights],
           color=["none" if math.isnan(h) else "tab:blue" for h in heights])
    ax.set_xticks(range(len(labels)), labels, rotation=90 if len(labels) > 6 else 0, fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return _save_png(fig, Path(out_png))


def line_plot(series: dict[str, list[tuple[float, float, str]]], out_png: Path, *, title: str, xlabel: str,
              ylabel: str, log_x: bool = False, notes_below: tuple[str, ...] = ()) -> Path:
    """One line with markers per series (label -> points (x, y, annotation)), saved atomically to out_png.

    Points are drawn in x order; a non-empty annotation is written next to its point (e.g. the
    compression level "r=0.5" or "8 bit"). NaN y values are skipped. log_x: logarithmic x axis
    (compression ratios, base 2, ticks written 1×, 2×, 4×...). notes_below: labels of series whose
    annotations go below their points, so two series meeting at one x do not overwrite each other.
    Raises ValueError if there is no point at all. Returns out_png.
    """
    fig = line_figure(series, title=title, xlabel=xlabel, ylabel=ylabel, log_x=log_x, notes_below=notes_below)
    return _save_png(fig, Path(out_png))


def line_figure(series: dict[str, list[tuple[float, float, str]]], *, title: str, xlabel: str, ylabel: str,
                log_x: bool = False, notes_below: tuple[str, ...] = ()):
    """The matplotlib Figure :func:`line_plot` saves (same arguments, without the file)."""
    if not any(series.values()):
        raise ValueError("line_plot needs at least one point")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, points in series.items():
        points = sorted((float(x), float(y), str(a)) for x, y, a in points if not math.isnan(float(y)))
        if not points:
            continue
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        for x, y, note in points:
            if note:
                ax.annotate(note, (x, y), textcoords="offset points", fontsize=7,
                            xytext=(4, -11) if label in notes_below else (4, 4))
    if log_x:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def scatter_plot(points: dict[str, tuple[float, float]], out_png: Path, *, title: str, xlabel: str, ylabel: str,
                 log_x: bool = True) -> Path:
    """One labelled point per item of ``points`` (label -> (x, y)), saved atomically to out_png.

    log_x: logarithmic x axis when every x is > 0; symmetric-log (linear within the smallest positive
    |x|) when some x are <= 0 but one is positive; linear otherwise. Non-finite points are skipped.
    Raises ValueError if no point is finite. Returns out_png.
    """
    finite = {k: (float(x), float(y)) for k, (x, y) in points.items() if math.isfinite(float(x)) and math.isfinite(float(y))}
    if not finite:
        raise ValueError("scatter_plot needs at least one finite point")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs, ys = [p[0] for p in finite.values()], [p[1] for p in finite.values()]
    ax.scatter(xs, ys, color="tab:blue")
    for label, (x, y) in finite.items():
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    positive = [abs(x) for x in xs if x > 0]
    if log_x and len(positive) == len(xs):
        ax.set_xscale("log")
    elif log_x and positive:
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return _save_png(fig, Path(out_png))


def _save_png(fig, path: Path) -> Path:
    """Render to a temp file beside ``path``, then rename over it, so readers never see half a PNG."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
