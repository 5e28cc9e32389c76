"""Results tables: read every run's ``config.yaml`` + ``metrics.json`` under a directory, group the runs
by config keys and show each metric as mean ± std over the runs of a group (typically the seeds).

Tables are computed from the files the runner writes, never from console output, so a table can be
rebuilt at any time from ``outputs/`` (see docs/style.md, "Results are data").
"""
from __future__ import annotations

import difflib
import json
import math
import re
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from robprune.errors import ConfigError, DataError
from robprune.results import read_metrics
from robprune.io import atomic_write_text

MISSING = "—"  # shown where a group has no value for a metric
CHECKS = "checks"  # pseudo-column: passed, or FAILED with the reasons from checks.failed, per group
DEFAULT_TAIL = ("sparsity", "params", "macs", "latency_ms")  # default cols after the accuracies
CORRUPTION_COLS = ("corruption_acc/mean", "corruption_rc")  # default cols of runs with eval.corruptions
TEXT_COLS = ("/asr", "/avg_queries")  # default cols per text attack (Aua is robust_acc/<attack>)
# Config leaves that differ between runs without being an experimental factor.
_NOT_A_FACTOR = re.compile(r"(^|[._])(dir|path|file|root)$|seed")


class Table(NamedTuple):
    """display: strings for people (md, terminal); numeric: row keys, ``n``, ``<m>``, ``<m>/std``, ``<m>/n``."""

    display: pd.DataFrame
    numeric: pd.DataFrame


def load_runs(root: Path) -> pd.DataFrame:
    """One row per run directory under ``root`` (a run, a sweep, or any tree), found by its metrics.json.

    Columns: ``run_dir``, every metrics key (nested dicts flattened: ``choices.prune``, ``checks.x``),
    then every config.yaml leaf as a dotted key (``prune.channel_ratio``). Lists become JSON strings.
    Where both files hold a key (``seed``) metrics.json wins. Hidden folders (``.hydra/``) are skipped.
    ``df.attrs["config_keys"]`` lists the keys that came from config.yaml.
    Raises DataError if ``root`` is not a directory or holds no metrics.json.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"no run directory at {root}; pass a run or sweep directory under outputs/")
    # Hidden folders (.hydra/, caches) hold copies and bookkeeping, not runs.
    files = sorted(p for p in root.rglob("metrics.json")
                   if not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(f"no metrics.json under {root}; runs write it when they finish, so check the run logs")
    records, config_keys = [], {}
    for path in files:
        metrics = _flatten(read_metrics(path))  # first: it checks config.yaml against the digest it recorded
        config = _flatten(_read_config(path.parent / "config.yaml"))
        config_keys.update(dict.fromkeys(config))
        records.append({"run_dir": str(path.parent), **config, **metrics})
    df = pd.DataFrame.from_records(records)
    metric_first = [c for c in df.columns if c not in config_keys]  # people look for metrics first
    df = df[["run_dir"] + [c for c in metric_first if c != "run_dir"] + [c for c in df.columns if c in config_keys]]
    df.attrs["config_keys"] = list(config_keys)
    return df


def _read_config(path: Path) -> dict:
    """The run's config as plain containers; {} when the run has no config.yaml."""
    if not path.is_file():
        return {}
    try:
        cfg = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read {path}: {reason}; re-run that run, or delete its directory") from None
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:  # e.g. ${hydra:...} only resolves inside a Hydra job: keep it as text
        container = OmegaConf.to_container(cfg, resolve=False)
    return container if isinstance(container, dict) else {}


def _flatten(node: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": "[1, 2]"}; non-scalars become JSON text."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, (dict, list, tuple)):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = value
    return out


def default_rows(df: pd.DataFrame, seed_key: str = "seed") -> list[str]:
    """The keys that tell the runs' settings apart, seeds excluded: varying ``choices.*`` first, then
    varying config keys, each kept only if it splits the runs further than the keys before it (so
    ``prune.method`` is dropped when ``choices.prune`` already separates the same runs).
    Falls back to ``choices.prune`` (or ``run_dir``) when nothing varies.
    """
    choices = [c for c in df.columns if c.startswith("choices.") and not c.startswith("choices.hydra")]
    config = [c for c in _config_keys(df) if not c.startswith("hydra")]
    # _target_ keys name code, which a reader identifies better by the option or value next to it.
    config.sort(key=lambda c: c.endswith("_target_"))
    rows: list[str] = []
    for key in choices + config:
        if key == seed_key or _NOT_A_FACTOR.search(key.rsplit(".", 1)[-1]):
            continue
        if _n_groups(df, rows + [key]) > _n_groups(df, rows):
            rows.append(key)
    if rows:
        return rows
    return ["choices.prune"] if "choices.prune" in df.columns else ["run_dir"]


def pooled_keys(df: pd.DataFrame, rows: list[str], seed_key: str = "seed") -> list[str]:
    """Config keys other than seeds and paths that vary inside a group of ``rows``: the table averages
    over them, which is usually a missing row key."""
    candidates = [c for c in _config_keys(df) if c not in rows and c != seed_key
                  and not c.startswith("hydra") and not _NOT_A_FACTOR.search(c.rsplit(".", 1)[-1])]
    if not candidates:
        return []
    spread = df.groupby(_check_keys(df, rows, "rows"), dropna=False)[candidates].nunique(dropna=False)
    return [c for c in candidates if (spread[c] > 1).any()]


def default_cols(df: pd.DataFrame) -> list[str]:
    """clean_acc, every robust_acc/<attack> (in file order; not AutoAttack's per-sub-attack
    robust_acc/<attack>/<sub-attack>), each text attack's asr and avg_queries, corruption_acc/mean and
    corruption_rc, then sparsity, params, macs, latency_ms, if present."""
    cols = [c for c in df.columns if c == "clean_acc" or (c.startswith("robust_acc/") and c.count("/") == 1)]
    cols += [c for c in df.columns if c.startswith("text_attack/") and c.endswith(TEXT_COLS)]
    cols += [c for c in CORRUPTION_COLS if c in df.columns]
    cols += [c for c in DEFAULT_TAIL if c in df.columns]
    if not cols:
        raise DataError("the runs hold none of clean_acc, robust_acc/*, " + ", ".join(DEFAULT_TAIL)
                        + "; name the metrics to show with cols")
    return cols


def _config_keys(df: pd.DataFrame) -> list[str]:
    """Columns load_runs read from config.yaml (none for a frame built otherwise: then only choices.*)."""
    return [c for c in df.attrs.get("config_keys", []) if c in df.columns]


def _n_groups(df: pd.DataFrame, keys: list[str]) -> int:
    return len(df[keys].drop_duplicates()) if keys else 1


def _check_keys(df: pd.DataFrame, keys: list[str], what: str) -> list[str]:
    """keys unchanged, or ConfigError naming the unknown one and the closest available keys first."""
    available = [str(c) for c in df.columns]
    for key in keys:
        if key in df.columns:
            continue
        suffix = [c for c in available if c.endswith(f".{key}") or c.endswith(f"/{key}")]
        close = difflib.get_close_matches(key, available, n=5, cutoff=0.5)
        first = list(dict.fromkeys(suffix + close))
        rest = sorted(c for c in available if c not in first)
        shown = first + rest[: max(0, 30 - len(first))]
        more = f" (+{len(available) - len(shown)} more)" if len(available) > len(shown) else ""
        hint = f"did you mean {first[0]}? " if first else ""
        raise ConfigError(f"{what}: unknown key {key!r}; {hint}available: {', '.join(shown)}{more}")
    return keys


def make_table(df: pd.DataFrame, rows: list[str], cols: list[str] | None = None, *, fmt: str = "{:.2f}") -> Table:
    """Group ``df`` (from load_runs) by ``rows`` and summarise each metric in ``cols`` over each group.

    numeric: the row keys, ``n`` (runs in the group), then per metric ``<m>`` (mean), ``<m>/std``
    (ddof=1, NaN below two values) and ``<m>/n`` (runs that report it). Values in the metric's own units.
    display: ``"mean ± std"`` strings; accuracies (clean_acc*, robust_acc*) and sparsity in percent
    (header ``"<m> (%)"``), params/macs in K/M/G, *bytes in KiB/MiB, other numbers with ``fmt``.
    ``MISSING`` where no run of the group reports the metric; ``"(n=k)"`` where only k of n do.
    cols may include ``checks`` (:data:`CHECKS`): per group ``passed``, or ``FAILED k/n: <reason>; ...``
    from each run's ``checks.passed`` / ``checks.failed`` (text in both frames).
    Raises ConfigError on an unknown key or a non-numeric col.
    """
    rows = _check_keys(df, list(dict.fromkeys(rows)), "rows")
    cols = list(dict.fromkeys(cols)) if cols is not None else default_cols(df)
    want_checks = CHECKS in cols and CHECKS not in df.columns
    metrics = _check_keys(df, [c for c in cols if not (want_checks and c == CHECKS)], "cols")
    if not rows or set(rows) & set(cols):
        raise ConfigError(f"rows must name at least one key to group runs by and none of cols, got rows={rows}")
    values = pd.DataFrame({c: _numeric(df, c) for c in metrics}, index=df.index)
    keys = df[rows]
    status = pd.Series([_run_checks(df, i) for i in df.index], index=df.index, name="_checks")
    groups = pd.concat([keys, values, status], axis=1).groupby(rows, dropna=False, sort=_sortable(keys))
    stats = groups[metrics].agg(["mean", "std", "count"]) if metrics else None
    numeric = groups.size().rename("n").to_frame()
    if want_checks:
        numeric[CHECKS] = groups["_checks"].agg(_group_checks)
    for col in metrics:
        numeric[col] = stats[(col, "mean")]
        numeric[f"{col}/std"] = stats[(col, "std")]
        numeric[f"{col}/n"] = stats[(col, "count")].astype(int)
    numeric = numeric.reset_index()
    return Table(_display(numeric, rows, cols, fmt), numeric)


def _run_checks(df: pd.DataFrame, i) -> list[str] | None:
    """One run's failed checks ([] when passed), None when it reports no checks.passed."""
    passed = df.at[i, "checks.passed"] if "checks.passed" in df.columns else None
    if passed is None or (isinstance(passed, float) and math.isnan(passed)):
        return None
    if passed:
        return []
    failed = df.at[i, "checks.failed"] if "checks.failed" in df.columns else None
    try:
        reasons = json.loads(failed) if isinstance(failed, str) else []
    except json.JSONDecodeError:
        reasons = [failed]
    return [str(r) for r in reasons] or ["see metrics.json 'checks'"]


def _group_checks(runs: pd.Series) -> str:
    """'passed' when every run of the group passed; else 'FAILED k/n: ' and the distinct reasons."""
    known = [r for r in runs if r is not None]
    if not known:
        return MISSING
    failed = [r for r in known if r]
    if not failed:
        return "passed"
    reasons = list(dict.fromkeys(reason for run in failed for reason in run))
    return f"FAILED {len(failed)}/{len(runs)}: " + "; ".join(reasons)


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    converted = pd.to_numeric(df[col], errors="coerce")
    lost = df[col].notna() & converted.isna()
    if lost.any():
        example = df.loc[lost, col].iloc[0]
        raise ConfigError(f"cols: {col!r} holds text (e.g. {example!r}), not a number; put it in rows instead")
    return converted.astype(float)


def _sortable(keys: pd.DataFrame) -> bool:
    """Sort groups by key unless a key column mixes types (e.g. 8 and 'auto'), which cannot be ordered."""
    return all(len({type(v) for v in keys[c].dropna()}) <= 1 for c in keys.columns)


def _display(numeric: pd.DataFrame, rows: list[str], cols: list[str], fmt: str) -> pd.DataFrame:
    out = pd.DataFrame({key: numeric[key].map(_key_text) for key in rows})
    out["n"] = numeric["n"].astype(str)
    for col in cols:
        if col == CHECKS and CHECKS in numeric.columns and f"{CHECKS}/n" not in numeric.columns:
            out[CHECKS] = numeric[CHECKS]
            continue
        header = f"{col} (%)" if _kind(col) == "percent" else col
        out[header] = [_cell(col, m, s, k, n, fmt) for m, s, k, n in
                       zip(numeric[col], numeric[f"{col}/std"], numeric[f"{col}/n"], numeric["n"])]
    return out


def _key_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:g}" if isinstance(value, float) else str(value)


def _kind(metric: str) -> str:
    """How a metric is shown, from its name: percent, count (K/M/G), bytes (KiB/MiB) or float."""
    leaf = metric.rsplit(".", 1)[-1]
    if leaf.startswith(("clean_acc", "robust_acc", "corruption_acc", "corruption_error")) or leaf == "sparsity":
        return "percent"
    if leaf.startswith("text_attack/") and leaf.endswith(("/aua", "/asr", "/words_changed")):
        return "percent"  # fractions like the accuracies (the kr layout shows them the same way)
    if leaf in ("params", "macs", "flops"):
        return "count"
    return "bytes" if leaf.endswith("bytes") else "float"


def _cell(metric: str, mean: float, std: float, count: int, n: int, fmt: str) -> str:
    if count == 0 or math.isnan(mean):
        return MISSING
    kind = _kind(metric)
    scale, unit = _unit(kind, abs(mean))  # std shares the mean's unit so the two read together
    text = _number(kind, mean / scale, scale, fmt) + unit
    # Parameter/MAC counts and sizes are fixed by the config, so "± 0" there is noise, not information.
    if count >= 2 and not math.isnan(std) and not (kind in ("count", "bytes") and std == 0):
        text += f" ± {_number(kind, std / scale, scale, fmt)}{unit}"
    return text + (f" (n={count})" if count < n else "")


def _number(kind: str, value: float, scale: float, fmt: str) -> str:
    if kind in ("percent", "float"):
        return fmt.format(value)
    return f"{value:.0f}" if scale == 1 else f"{value:.2f}"  # whole counts below 1K, else 2 decimals of K/M/G


def _unit(kind: str, magnitude: float) -> tuple[float, str]:
    """(divisor, suffix): percent values are fractions in [0, 1]; counts and bytes pick a readable unit."""
    if kind == "percent":
        return 0.01, ""
    steps = {"count": [(1e9, "G"), (1e6, "M"), (1e3, "K")],
             "bytes": [(2**30, " GiB"), (2**20, " MiB"), (2**10, " KiB")]}.get(kind, [])
    for size, suffix in steps:
        if magnitude >= size:
            return size, suffix
    return 1.0, {"bytes": " B"}.get(kind, "")


def write_table(table: pd.DataFrame, numeric: pd.DataFrame, out_dir: Path, name: str = "table") -> dict[str, Path]:
    """Write ``<name>.md`` (display) and ``<name>.csv`` (numeric, full precision) atomically into out_dir."""
    out_dir = Path(out_dir)
    # disable_numparse: tabulate would otherwise re-format cells that look like numbers ("0.50" -> "0.5")
    text = table.to_markdown(index=False, disable_numparse=True, colalign=_alignment(table))
    md = atomic_write_text(out_dir / f"{name}.md", text + "\n")
    csv = atomic_write_text(out_dir / f"{name}.csv", numeric.to_csv(index=False))
    return {"md": md, "csv": csv}


def _alignment(table: pd.DataFrame) -> list[str]:
    """Row keys left, ``n`` and metrics right (digits line up)."""
    start = list(table.columns).index("n") if "n" in table.columns else 0
    return ["left" if i < start else "right" for i in range(len(table.columns))]


def print_table(table: pd.DataFrame, title: str) -> None:
    """The display table as a rich table on stdout; metric columns right-aligned."""
    from rich.console import Console
    from rich.table import Table as RichTable
    from rich.text import Text

    rich_table = RichTable(title=title)
    for column, justify in zip(table.columns, _alignment(table)):
        rich_table.add_column(str(column), justify=justify)
    for row in table.itertuples(index=False):  # failed checks in red
        rich_table.add_row(*(Text(str(v), style="red") if str(v).startswith("FAILED") else str(v) for v in row))
    console = Console()
    if not console.is_terminal:  # piped or logged: no width to fit, so don't squeeze to rich's default 80
        console = Console(width=max(console.width, 240))
    console.print(rich_table)


def table_command(root: str, rows: list[str] | None = None, cols: list[str] | None = None,
                  out: str | None = None, quiet: bool = False) -> pd.DataFrame:
    """``robprune table``: load the runs under root, summarise, print, write table.md/.csv into out
    (default root). rows=None picks the varying config keys. Returns the display table."""
    runs = load_runs(Path(root))
    rows = list(rows) if rows else default_rows(runs)
    display, numeric = make_table(runs, rows, cols)
    paths = write_table(display, numeric, Path(out) if out else Path(root))
    from robprune.report.corruptions import severity_curves

    plot = severity_curves(runs, rows, (Path(out) if out else Path(root)) / "corruptions.png")
    if not quiet:
        from robprune.ui import console

        print_table(display, f"{root}: {len(runs)} runs")
        if plot:
            console().print(f"wrote {plot} (accuracy against corruption severity per row)")
        pooled = pooled_keys(runs, rows)
        if pooled:
            console().print(f"note: rows average over runs that differ in {', '.join(pooled[:5])}; "
                            "add the ones that matter to rows")
        console().print(f"wrote {paths['md']} and {paths['csv']}")
    return display
