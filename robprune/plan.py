"""``robprune plan`` (= ``robprune run --dry-run``): check a job and show its stage graph without running it.

Validation, the data and every stage's precheck run as for ``robprune run``, so a config error, a missing
file or an unreachable target is the same one line (exit 2); then each stage's cache key is derived
exactly as the run derives it (:func:`robprune.pipeline.keys_of`) and looked up in the cache: what a run
would reuse, resume or build. Nothing is trained and no run directory or cache entry is written (the
dataset decode cache under ``data.cache_dir`` may be filled, as a run fills it).
"""
from __future__ import annotations

import time

STATES = {"cached": "reused from the cache", "resume": "resumes a partial build", "damaged": "rebuilt (cache entry fails verification)",
          "build": "built"}


def plan_command(args: list[str]) -> list[dict]:
    """Plan the run that ``robprune run <args>`` would start; prints the table and returns its rows."""
    from robprune.compose import check_overrides, compose, fit_experiment, overrides_of
    from robprune.errors import ConfigError
    from robprune.pipeline import plan_run

    if "-m" in args or "--multirun" in args:
        raise ConfigError("robprune plan shows one job; drop -m and pass one value per swept key (e.g. seed=0)")
    overrides = overrides_of(args)
    check_overrides(overrides)
    started = time.perf_counter()
    cfg = compose(overrides)
    fit_experiment(cfg, overrides)  # the keys a run drops or resets for an option swapped into an experiment
    rows = plan_run(cfg)
    if not cfg.quiet:
        _print(rows, time.perf_counter() - started, str(cfg.cache_dir) if cfg.cache else None)
    else:
        for row in rows:
            print(f"{row['stage']}\t{row['key']}\t{row['state']}")
    return rows


def _print(rows: list[dict], seconds: float, cache_dir: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="robprune plan: the stages this run would go through", show_header=True, header_style="bold")
    for column in ("stage", "key", "inputs", "this run"):
        table.add_column(column)
    for row in rows:
        inputs = ", ".join(up if role == up else f"{role.strip('<>')}: {up}" for role, up in row["inputs"].items()) or "—"
        table.add_row(row["stage"], row["key"], inputs, STATES[row["state"]])
    console = Console()
    console.print(table)
    todo = sum(r["state"] != "cached" for r in rows)
    where = f"cache {cache_dir}" if cache_dir else "cache=false: every stage is built in the run directory"
    console.print(f"{len(rows) - todo} of {len(rows)} stages cached, {todo} to build ({where}); checked in {seconds:.1f} s")
