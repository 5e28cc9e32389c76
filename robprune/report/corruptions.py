"""Corruption-robustness plots from metrics, never from console output: one run's accuracy per
corruption and severity (``corruptions.png`` in the run directory), and the runs of a table compared
as accuracy against severity (``corruptions.png`` beside ``table.md``)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from robprune.report.plot import _save_png, line_plot

KEY = re.compile(r"^corruption_acc/(?P<name>[a-z_]+)/(?P<severity>[1-5])$")


def per_severity(metrics: dict) -> dict[str, dict[int, float]]:
    """name -> severity -> accuracy from flat ``corruption_acc/<name>/<severity>`` keys (file order)."""
    table: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        match = KEY.match(str(key))
        if match and value is not None:
            table.setdefault(match["name"], {})[int(match["severity"])] = float(value)
    return table


def corruption_heatmap(metrics: dict, out_png: Path) -> Path | None:
    """Accuracy (%) of one run per corruption (rows) and severity (columns), with the clean accuracy on
    the same points and each corruption's mean in the labels. None (no file) without corruption keys."""
    table = per_severity(metrics)
    if not table:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    severities = sorted({s for row in table.values() for s in row})
    names = list(table)
    grid = [[100 * table[n].get(s, math.nan) for s in severities] for n in names]
    fig = Figure(figsize=(1.2 + 0.9 * len(severities), 1.2 + 0.32 * len(names)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if value < 60 else "black")
    mean = {n: metrics.get(f"corruption_acc/{n}") for n in names}
    ax.set_yticks(range(len(names)), [f"{n} ({100 * mean[n]:.1f})" if mean[n] is not None else n for n in names],
                  fontsize=8)
    ax.set_xticks(range(len(severities)), [str(s) for s in severities])
    ax.set_xlabel("severity")
    clean, avg = metrics.get("clean_acc/corruptions"), metrics.get("corruption_acc/mean")
    ax.set_title(f"accuracy (%) under corruption: mean {_pct(avg)}, clean {_pct(clean)}, "
                 f"R_C {metrics.get('corruption_rc') or math.nan:.3f}", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _save_png(fig, Path(out_png))


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def severity_curves(runs: pd.DataFrame, rows: list[str], out_png: Path) -> Path | None:
    """Compare runs: per group of ``rows`` (means over its runs, typically seeds), accuracy against
    severity: 0 = clean (on the corruption subset), s = mean over the corruptions at severity s.
    None (no file) when no run has corruption metrics."""
    columns = {s: [c for c in runs.columns if (m := KEY.match(str(c))) and int(m["severity"]) == s] for s in range(1, 6)}
    if not any(columns.values()):
        return None
    series: dict[str, list[tuple[float, float, str]]] = {}
    for key, group in runs.groupby(rows, dropna=False, sort=False):
        label = ", ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        points = []
        if "clean_acc/corruptions" in group:
            points.append((0.0, float(pd.to_numeric(group["clean_acc/corruptions"], errors="coerce").mean()), ""))
        for severity, cols in columns.items():
            if cols:
                values = group[cols].apply(pd.to_numeric, errors="coerce").mean(axis=1)
                points.append((float(severity), float(values.mean()), ""))
        series[label] = points
    return line_plot(series, out_png, title="accuracy under corruption (0 = clean)", xlabel="severity",
                     ylabel="accuracy (mean over corruptions)")
