"""``robprune plot``: curves and Pareto fronts from run directories (config.yaml + metrics.json only).

A *setting* is one combination of the keys that tell runs apart, seeds excluded (the rows
``robprune table`` would pick, :func:`robprune.report.table.default_rows`, plus the hue keys and a config
x key); its runs are its seeds. Each setting becomes one point: mean of x and y over its runs, with the
sample standard deviation (ddof 1, as the table) as error bars when it has two or more runs. Points of
one hue value are joined in x order. x and y may be metrics (``sparsity``, ``robust_acc/autoattack``)
or config keys (``prune.sparsity``); hue is config keys (``prune.method``).

``--pareto COST`` plots y against a cost metric (``macs``, ``latency_ms``, ``storage_bytes``,
``params``; aliases ``latency``, ``storage``, ``size``) with every setting as a point and the Pareto
front — settings no other setting beats on both lower cost and higher y — joined and ringed.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from robprune.errors import ConfigError
from robprune.report.table import _check_keys, _config_keys, _kind, _numeric, default_rows, load_runs

PARETO_ALIASES = {"latency": "latency_ms", "storage": "storage_bytes", "size": "size_bytes"}
FORMATS = ("png", "svg")


def settings(runs: pd.DataFrame, x: str, y: str, hue: list[str]) -> pd.DataFrame:
    """One row per setting: ``hue`` (its label), ``x``, ``x_std``, ``y``, ``y_std``, ``n`` (runs with a
    finite y), sorted by hue then x. ConfigError on an unknown key or a non-numeric x / y."""
    _check_keys(runs, [x, y, *hue], "plot")
    config = set(_config_keys(runs))
    if y in config:
        raise ConfigError(f"--y {y} is a config key; y must be a metric, e.g. robust_acc/autoattack")
    keys = list(dict.fromkeys([*hue, *(k for k in default_rows(runs) if k not in (x, y)), *([x] if x in config else [])]))
    frame = pd.DataFrame({"x": _numeric(runs, x), "y": _numeric(runs, y)}, index=runs.index)
    frame = frame[frame["y"].notna() & frame["x"].notna()]
    if frame.empty:
        raise ConfigError(f"no run reports both {x} and {y}; check the names with robprune table {x}")
    groups = pd.concat([runs.loc[frame.index, keys].astype(str), frame], axis=1).groupby(keys, sort=False)
    out = groups.agg(x=("x", "mean"), x_std=("x", "std"), y=("y", "mean"), y_std=("y", "std"), n=("y", "count"))
    out = out.reset_index()
    out["hue"] = [", ".join(f"{k}={row[k]}" for k in hue) if hue else y for _, row in out.iterrows()]
    return out.sort_values(["hue", "x"]).reset_index(drop=True)[["hue", "x", "x_std", "y", "y_std", "n"]]


def pareto_front(cost: list[float], value: list[float]) -> list[int]:
    """Indices of the points no other point dominates (cost ≤ and value ≥, one strictly), by cost."""
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -value[i]))
    front, best = [], -math.inf
    for i in order:
        if value[i] > best:
            front.append(i)
            best = value[i]
    return front


def _scale(key: str) -> tuple[float, str]:
    """(multiplier, axis label) — fractions shown in percent, counts in M, bytes in MiB."""
    kind = _kind(key)
    return {"percent": (100.0, f"{key} (%)"), "count": (1e-6, f"{key} (M)"),
            "bytes": (1 / 2**20, f"{key} (MiB)")}.get(kind, (1.0, key))


def _figure(title: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    return fig, ax


def curve_figure(points: pd.DataFrame, x: str, y: str, title: str):
    """Mean ± std of y against x, one line per hue label (from :func:`settings`)."""
    (sx, xlabel), (sy, ylabel) = _scale(x), _scale(y)
    fig, ax = _figure(title)
    for label, part in points.groupby("hue", sort=False):
        yerr = (part["y_std"].fillna(0) * sy).tolist() if (part["n"] > 1).any() else None
        xerr = (part["x_std"].fillna(0) * sx).tolist() if (part["x_std"].fillna(0) > 0).any() else None
        ax.errorbar(part["x"] * sx, part["y"] * sy, yerr=yerr, xerr=xerr, marker="o", capsize=3, label=str(label))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return fig


def pareto_figure(points: pd.DataFrame, cost: str, y: str, title: str):
    """Every setting as a point (marker per hue), the Pareto front (lower cost, higher y) joined and ringed."""
    (sx, xlabel), (sy, ylabel) = _scale(cost), _scale(y)
    fig, ax = _figure(title)
    for label, part in points.groupby("hue", sort=False):
        yerr = (part["y_std"].fillna(0) * sy).tolist() if (part["n"] > 1).any() else None
        ax.errorbar(part["x"] * sx, part["y"] * sy, yerr=yerr, fmt="o", capsize=3, label=str(label))
    front = pareto_front(points["x"].tolist(), points["y"].tolist())
    fx, fy = [points["x"].iloc[i] * sx for i in front], [points["y"].iloc[i] * sy for i in front]
    ax.plot(fx, fy, color="black", linestyle="--", linewidth=1, label="Pareto front")
    ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="black", linewidths=1.2)
    if all(v > 0 for v in points["x"]) and points["x"].max() > 10 * points["x"].min():
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return fig


def save(fig, stem: Path, formats=FORMATS) -> list[Path]:
    """Write ``stem.<format>`` for each format, each atomically (readers never see half a file)."""
    from robprune.io import atomic_write

    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        atomic_write(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=120))
        paths.append(path)
    return paths


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in key).strip("-")


def plot_command(root: str, *, x: str | None, ys: list[str], hue: list[str] | None = None, pareto: str | None = None,
                 out: str | None = None, quiet: bool = False) -> list[Path]:
    """Load the runs under root, draw one figure per y (PNG and SVG into out, default root), return the
    paths. ``pareto`` replaces x with a cost metric and marks the front."""
    if (x is None) == (pareto is None):
        raise ConfigError("robprune plot needs exactly one of --x KEY (curves) and --pareto COST (e.g. --pareto macs)")
    runs = load_runs(Path(root))
    hue = list(hue or [])
    config = set(_config_keys(runs))
    bad = [k for k in hue if k not in config]
    if bad and all(k in runs.columns for k in bad):
        raise ConfigError(f"--hue {bad[0]} is a metric; hue takes config keys (e.g. prune.method)")
    folder = Path(out) if out else Path(root)
    paths = []
    for y in ys:
        if pareto is not None:
            cost = PARETO_ALIASES.get(pareto, pareto)
            points = settings(runs, cost, y, hue)
            fig = pareto_figure(points, cost, y, f"{y} against {cost} ({len(runs)} runs)")
            stem = folder / f"pareto_{_slug(y)}_{_slug(cost)}"
        else:
            points = settings(runs, x, y, hue)
            fig = curve_figure(points, x, y, f"{y} against {x} ({len(runs)} runs, mean ± std over seeds)")
            stem = folder / f"plot_{_slug(y)}_{_slug(x)}"
        paths += save(fig, stem)
        if not quiet:
            from robprune.ui import console

            console().print(f"wrote {stem}.png and .svg ({len(points)} settings)")
    return paths
