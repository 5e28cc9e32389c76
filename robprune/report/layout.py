"""Paper-shaped tables: a layout spec (``conf/table/<name>.yaml``) says which run keys make the rows
and the columns, which metrics fill a cell, how values read, and the published numbers to show
alongside. ``robprune table +table=<name> <dir>`` renders it from the runs' files.

Spec keys: ``rows`` (list of run keys), ``cols`` (one run key), ``cell`` (metrics shown as
"a / b"), ``row_label`` (format string over the row keys' labels), ``labels`` ({key: {value: text}},
which also orders rows and columns; ``'null'`` names a missing value or key, ``'*'`` any value not listed), ``title``, and optionally ``paper`` = {dataset_key, compare:
{our dataset: paper table}, values: {paper table: {row name: {column label: [numbers]}}}}. A cell metric no
run reports, and a paper number given as null (not published), read — (a paper's table can have columns,
such as ImageNet-V2, that neither side has for every row).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from robprune.config import config_dir
from robprune.errors import ConfigError
from robprune.report.table import MISSING, Table, load_runs, make_table, print_table, write_table

REQUIRED = ("rows", "cols", "cell")


def load_layout(name: str) -> dict:
    """The layout spec conf/table/<name>.yaml as plain containers; ConfigError naming the options when absent."""
    folder = config_dir() / "table"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        options = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "(none)"
        raise ConfigError(f"+table={name}: no layout {path}; available: {options}")
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    missing = [k for k in REQUIRED if k not in spec]
    if missing:
        raise ConfigError(f"{path}: layout is missing {', '.join(missing)}")
    return {"name": name, **spec}


def _label(spec: dict, key: str, value) -> str:
    """The text of a key's value: labels[key][value], else labels[key]['*'] (any value not listed), else
    the value; a missing value (null, or the key absent from a run's config) reads labels[key]['null']
    when the layout gives one, else —."""
    labels = (spec.get("labels") or {}).get(key, {})
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return str(labels.get("null", MISSING))
    return str(labels.get(str(value), labels.get("*", value)))


def _order(spec: dict, key: str, value) -> tuple:
    """Sort key: values listed in labels[key] first, in that order (values not listed where '*' is, when
    it is); the others after, by their text."""
    listed = list((spec.get("labels") or {}).get(key, {}))
    text = "null" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    if text in listed:
        return (listed.index(text), "")
    return (listed.index("*"), text) if "*" in listed and text != "null" else (len(listed), text)


def _fill(fmt: str, labels: dict[str, str]) -> str:
    """'{choices.compress} {choices.train}' -> 'pruned f_s' (keys contain dots, so no str.format)."""
    return re.sub(r"\{([^{}]+)\}", lambda m: labels.get(m.group(1), m.group(0)), fmt)


def _paper_values(spec: dict, runs: pd.DataFrame) -> dict | None:
    """{row name: {column label: [numbers]}} of the paper table the runs' dataset is held against, or None."""
    paper = spec.get("paper") or {}
    key = paper.get("dataset_key")
    if not key or key not in runs.columns:
        return None
    datasets = sorted({str(v) for v in runs[key].dropna()})
    if len(datasets) != 1:
        raise ConfigError(f"the runs come from {len(datasets)} datasets ({', '.join(datasets)}); "
                          "tabulate one dataset's sweep at a time")
    table = (paper.get("compare") or {}).get(datasets[0])
    return (paper.get("values") or {}).get(table) if table else None


def _cell_text(row: pd.Series, cell: list[str]) -> str:
    """'90.12 ± 0.31 / 80.00 ± 1.20' (percent); ± only with two or more runs; MISSING without runs."""
    parts = []
    for m in cell:
        mean, std, count = row[m], row[f"{m}/std"], row[f"{m}/n"]
        if count == 0 or math.isnan(mean):
            parts.append(MISSING)
            continue
        text = f"{100 * mean:.2f}"
        parts.append(text + (f" ± {100 * std:.2f}" if count >= 2 and not math.isnan(std) else ""))
    return " / ".join(parts)


def _paper_text(values) -> str:
    return " / ".join(MISSING if v is None else f"{v:.2f}" for v in values) if values else MISSING


def _number(value) -> float:
    """A paper number as a float; NaN for one not published (null)."""
    return math.nan if value is None else float(value)


def layout_table(runs: pd.DataFrame, spec: dict) -> Table:
    """Lay out ``runs`` (from :func:`load_runs`) as ``spec`` says. numeric: one row per (row, column)
    group with the row keys, ``model``, ``column``, ``n``, per metric mean / std / n, and ``paper/<m>``.
    display: ``model``, ``n`` (most runs in a cell), then per column label its cells and, when the
    spec has paper values for these runs' dataset, a ``<label> (paper)`` column."""
    rows, col, cell = list(spec["rows"]), str(spec["cols"]), list(spec["cell"])
    labels = spec.get("labels") or {}
    absent = [k for k in rows if k not in runs.columns and "null" in labels.get(k, {})]
    if absent:  # a labelled optional node no run has (e.g. no run averaged): every run reads its 'null' text
        runs = runs.assign(**{k: None for k in absent})
    unreported = [m for m in cell if m not in runs.columns]
    if unreported:  # a metric of the paper's table that no run measured (e.g. no ImageNet-V2 evaluation): —
        runs = runs.assign(**{m: math.nan for m in unreported})
    numeric = make_table(runs, [*rows, col], cell).numeric  # n, and per metric mean, /std (ddof 1), /n
    fmt = spec.get("row_label") or " ".join("{%s}" % k for k in rows)
    numeric["model"] = [_fill(fmt, {k: _label(spec, k, r[k]) for k in rows}) for _, r in numeric.iterrows()]
    numeric["column"] = [_label(spec, col, v) for v in numeric[col]]
    paper = _paper_values(spec, runs)
    for i, m in enumerate(cell):
        numeric[f"paper/{m}"] = [_number(((paper or {}).get(r["model"], {}).get(r["column"]) or [None] * len(cell))[i])
                                 for _, r in numeric.iterrows()]
    order = sorted(range(len(numeric)), key=lambda i: [_order(spec, k, numeric.loc[i, k]) for k in [*rows, col]])
    numeric = numeric.loc[order].reset_index(drop=True)
    return Table(_display(numeric, rows, col, cell, paper), numeric)


def _display(numeric: pd.DataFrame, rows: list[str], col: str, cell: list[str], paper: dict | None) -> pd.DataFrame:
    models = list(dict.fromkeys(numeric["model"]))
    columns = list(dict.fromkeys(numeric["column"]))
    out = pd.DataFrame({"model": models})
    out["n"] = [str(int(numeric.loc[numeric["model"] == m, "n"].max())) for m in models]
    for c in columns:
        ours, ref = [], []
        for m in models:
            hit = numeric[(numeric["model"] == m) & (numeric["column"] == c)]
            ours.append(_cell_text(hit.iloc[0], cell) if len(hit) else MISSING)
            ref.append(_paper_text((paper or {}).get(m, {}).get(c)))
        out[c] = ours
        if paper is not None:
            out[f"{c} (paper)"] = ref
    return out


def layout_command(root: str, name: str, out: str | None = None, quiet: bool = False) -> pd.DataFrame:
    """``robprune table +table=<name> <root>``: write <name>.md and <name>.csv into out (default root)."""
    spec = load_layout(name)
    runs = load_runs(Path(root))
    display, numeric = layout_table(runs, spec)
    paths = write_table(display, numeric, Path(out) if out else Path(root), name=name)
    if not quiet:
        from robprune.ui import console

        print_table(display, f"{spec.get('title', name)}: {len(runs)} runs under {root}")
        console().print(f"wrote {paths['md']} and {paths['csv']}")
    return display
