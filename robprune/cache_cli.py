"""``robprune cache list | verify | clean``: look into and tidy the stage cache (layout in robprune.store).

``<cache_dir>/<stage>/`` holds ``<key>/`` (finished, with a manifest), ``<key>.partial/`` (being built, or
the resume point of a killed job), ``<key>.corrupt-<time>/`` (set aside by a failed check) and
``<key>.lock``. ``<cache_dir>/datasets/`` holds decoded dataset files, not stages: it is listed, never
verified or removed here.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from robprune.errors import ConfigError
from robprune.store import DONE, check_entry, file_lock, last_used, lock_path, quarantine, read_stage_json, try_lock

DATASETS = "datasets"  # cache_dir/datasets: dataset caches, see robprune.data.source.load_split
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Entry:
    stage: str
    key: str
    path: Path
    state: str  # "done" (has .done), "unfinished" (no .done), "partial", "corrupt"


def default_cache_dir() -> Path:
    """The same default as conf/config.yaml's ``cache_dir``."""
    return Path(os.environ.get("ROBPRUNE_CACHE") or "outputs/cache")


def parse_age(text: str) -> float:
    """'30d' -> seconds (units s, m, h, d); ConfigError naming --older-than otherwise."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not match:
        raise ConfigError(f"--older-than takes a number and a unit s, m, h or d, got {text!r}; e.g. --older-than 30d")
    return float(match.group(1)) * UNITS[match.group(2)]


def _classify(stage: str, path: Path) -> Entry:
    name = path.name
    if name.endswith(".partial"):
        return Entry(stage, name.removesuffix(".partial"), path, "partial")
    if ".corrupt-" in name:
        return Entry(stage, name.split(".corrupt-")[0], path, "corrupt")
    return Entry(stage, name, path, "done" if (path / DONE).exists() else "unfinished")


def scan(root: Path, stage: str | None = None) -> list[Entry]:
    """Every stage folder under ``root`` (sorted), skipping ``datasets/`` and lock files."""
    stages = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name != DATASETS and not d.name.startswith(".")]
    return [_classify(d.name, p) for d in stages if stage in (None, d.name)
            for p in sorted(d.iterdir()) if p.is_dir()]


def dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:  # removed while we walked
            pass
    return total


def fmt_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def fmt_age(seconds: float) -> str:
    for unit, size, above in (("d", 86400, 2 * 86400), ("h", 3600, 2 * 3600), ("m", 60, 120)):
        if seconds >= above:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def _built_at(entry: Entry, meta: dict) -> float | None:
    try:
        return datetime.fromisoformat(meta["built_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        done = entry.path / DONE
        return done.stat().st_mtime if done.exists() else None


def _how_built(meta: dict) -> str:
    if not meta:
        return "unknown (no stage.json)"
    parts = [str(meta["device"])] if meta.get("device") else []
    if isinstance(meta.get("seconds"), (int, float)):
        parts.append(f"{meta['seconds']:.1f} s")
    return ", ".join(parts) or "-"


def _inputs(meta: dict) -> str:
    inputs = meta.get("inputs")
    if isinstance(inputs, dict):
        return ", ".join(f"{k}:{v}" for k, v in inputs.items())
    if isinstance(inputs, (list, tuple)):
        return ", ".join(map(str, inputs))
    return "" if inputs is None else str(inputs)


def _row(entry: Entry, now: float) -> list[str]:
    meta = read_stage_json(entry.path) if entry.state == "done" else {}
    built = _built_at(entry, meta) if entry.state == "done" else None
    used = fmt_age(now - last_used(entry.path)) if entry.state == "done" else "-"
    state = {"done": "ok" if meta else "old format", "unfinished": "no .done"}.get(entry.state, entry.state)
    how = _how_built(meta) if entry.state == "done" else "-"
    return [entry.stage, entry.key, state, fmt_size(dir_size(entry.path)),
            fmt_age(now - built) if built else "-", used, how, _inputs(meta)]


def list_command(root: Path, stage: str | None) -> int:
    """Print a table of every entry (reads stage.json and sizes; hashes nothing)."""
    from rich.console import Console
    from rich.table import Table

    if not root.is_dir():
        print(f"no cache at {root}")
        return 0
    table = Table(title=f"stage cache {root}")
    for col in ("stage", "key", "state", "size", "built", "last used", "how built", "inputs"):
        table.add_column(col, no_wrap=col in ("stage", "key"), overflow="fold")  # keys are for copying whole
    now = time.time()
    for entry in scan(root, stage):
        table.add_row(*_row(entry, now))
    datasets = root / DATASETS
    if stage in (None, DATASETS) and datasets.is_dir():
        n = sum(1 for p in datasets.iterdir() if p.is_file())
        table.add_row(DATASETS, f"{n} files", "not verified", fmt_size(dir_size(datasets)), "-", "-", "-", "")
    # piped into a file or grep: one line per entry rather than rich's 80-column default
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 0


def verify_entry(entry: Entry) -> str | None:
    """None when ``entry`` checks out; else moves it aside (under its lock) and returns a line saying so."""
    if check_entry(entry.path) is None:
        return None
    with file_lock(lock_path(entry.path)):
        if not entry.path.exists():  # a job moved it aside and is rebuilding it
            return None
        problem = check_entry(entry.path)  # again under the lock: a job may have rebuilt it meanwhile
        if problem is None:
            return None
        moved = quarantine(entry.path)
    return f"corrupt: {entry.stage}/{entry.key}: {problem}; moved to {moved} (the next run rebuilds it)"


def verify_command(root: Path) -> int:
    """Check every finished entry's manifest; exit code 1 when any was corrupt (those are moved aside)."""
    if not root.is_dir():
        print(f"no cache at {root}")
        return 0
    entries = [e for e in scan(root) if e.state in ("done", "unfinished")]
    lines = [line for line in map(verify_entry, entries) if line]
    for line in lines:
        print(line)
    print(f"{len(entries)} entries checked, {len(lines)} corrupt")
    return 1 if lines else 0


def _removable(entry: Entry, older_than: float | None, now: float) -> str | None:
    """Why ``entry`` may go (None: keep). Partial folders only once their lock is free (checked at removal)."""
    if entry.state == "corrupt":
        return "set aside as corrupt"
    if entry.state == "partial":
        return "left over by a job that is no longer running"
    if entry.state == "done" and older_than is not None and now - last_used(entry.path) > older_than:
        return f"last used {fmt_age(now - last_used(entry.path))} ago"
    return None


def remove_entry(entry: Entry, older_than: float | None, now: float) -> bool:
    """rmtree ``entry`` unless a job holds its lock (partial, finished) or it was used since (finished)."""
    if entry.state == "corrupt":
        shutil.rmtree(entry.path, ignore_errors=True)
        return True
    with try_lock(lock_path(entry.path)) as held:
        if not held or not entry.path.exists():
            return False
        if entry.state == "done" and now - last_used(entry.path) <= (older_than or 0):
            return False  # reused while we looked
        shutil.rmtree(entry.path)
        return True


def _lock_free(entry: Entry) -> bool:
    with try_lock(lock_path(entry.path)) as held:
        return held


def clean_command(root: Path, older_than: float | None, dry_run: bool) -> int:
    """Remove corrupt and abandoned partial folders, and with ``older_than`` (seconds) finished entries
    not used for that long. ``dry_run`` only lists them."""
    if not root.is_dir():
        print(f"no cache at {root}")
        return 0
    now, freed, count = time.time(), 0, 0
    for entry in scan(root):
        reason = _removable(entry, older_than, now)
        if reason is None:
            continue
        size = dir_size(entry.path)
        if dry_run and (entry.state == "corrupt" or _lock_free(entry)):
            print(f"would remove {entry.path} ({reason}, {fmt_size(size)})")
        elif dry_run:
            print(f"would keep {entry.path}: a running job holds its lock")
            continue
        elif remove_entry(entry, older_than, now):
            print(f"removed {entry.path} ({reason}, {fmt_size(size)})")
        else:
            print(f"kept {entry.path}: a running job holds its lock")
            continue
        freed, count = freed + size, count + 1
    print(f"{'would remove' if dry_run else 'removed'} {count} folders, {fmt_size(freed)}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robprune cache", description="Inspect and tidy the stage cache.")
    sub = parser.add_subparsers(dest="action", required=True)
    for name, text in (("list", "a table of every entry"), ("verify", "check every entry's manifest"),
                       ("clean", "remove corrupt, abandoned and (with --older-than) unused entries")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--cache-dir", type=Path, default=None, help="default: $ROBPRUNE_CACHE or outputs/cache")
    sub.choices["list"].add_argument("--stage", default=None, help="only this stage, e.g. train")
    sub.choices["clean"].add_argument("--older-than", default=None, help="also finished entries unused this long, e.g. 30d")
    sub.choices["clean"].add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    return parser


def cache_command(args: list[str]) -> int:
    ns = _parser().parse_args(args)
    root = ns.cache_dir or default_cache_dir()
    if ns.action == "list":
        return list_command(root, ns.stage)
    if ns.action == "verify":
        return verify_command(root)
    older = parse_age(ns.older_than) if ns.older_than is not None else None
    return clean_command(root, older, ns.dry_run)
