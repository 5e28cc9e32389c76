"""Sweep wall time: Hydra's joblib launcher (jobs side by side, 1 thread each) against the default
sequential launcher (one job at a time with every thread), same sweep, same results.

Runs ``robprune run -m <sweep>`` twice as a user would, each into a fresh cache and sweep folder:
  sequential   hydra/launcher=basic, threads=<cores>
  joblib       hydra/launcher=joblib, n_jobs=<jobs>, threads=<cores // jobs>
and reports each wall time, the ratio sequential / joblib, and the largest difference of clean and
robust accuracy between the two sweeps' runs of the same setting (thread counts differ, so float
reductions may round differently). Default sweep: 4 jobs (2 pruning ratios × 2 seeds, each seed its
own dense model) of the default pipeline on the embedded digits data, shrunk to seconds per stage.

    python scripts/bench_sweep.py --jobs 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from robprune.io import atomic_write_json
from robprune.launch import available_cores

SWEEP = ["prune.channel_ratio=0.3,0.5", "seed=0,1", "train.epochs=4", "finetune.epochs=2", "eval=pgd",
         "eval.n_examples.pgd20=200", "eval.latency.repeats=3"]
METRICS = ("clean_acc", "robust_acc/pgd20")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2, help="joblib jobs side by side")
    p.add_argument("--cores", type=int, default=None, help="cores to share (default: this process's affinity)")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/sweep.json"))
    p.add_argument("overrides", nargs="*", default=SWEEP, help="the sweep (Hydra overrides)")
    return p.parse_args()


def sweep(root: Path, name: str, launcher: list[str], threads: int, overrides: list[str]) -> tuple[float, dict]:
    """Wall seconds of one `robprune run -m`, and {setting: metrics} of its runs."""
    env = {**os.environ, "ROBPRUNE_QUIET": "1"}
    cmd = [sys.executable, "-m", "robprune.cli", "run", "-m", *launcher, f"threads={threads}", *overrides,
           f"cache_dir={root / name / 'cache'}", f"hydra.sweep.dir={root / name / 'sweep'}"]
    started = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if res.returncode != 0:
        raise SystemExit(f"{name} sweep failed ({res.returncode}): {res.stderr[-2000:]}")
    runs = {}
    for path in sorted((root / name / "sweep").glob("*/metrics.json")):
        m = json.loads(path.read_text())
        runs[(m["channel_ratio"], m["seed"])] = {k: m[k] for k in METRICS}
    return seconds, runs


def main() -> None:
    args = parse_args()
    cores = args.cores or available_cores()
    threads = max(1, cores // args.jobs)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        root = Path(tmp)
        seq_s, seq = sweep(root, "sequential", [], cores, args.overrides)
        par_s, par = sweep(root, "joblib", ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"], threads,
                           args.overrides)
    if sorted(seq) != sorted(par):
        raise SystemExit(f"the sweeps ran different settings: {sorted(seq)} vs {sorted(par)}")
    diff = max(abs(seq[k][m] - par[k][m]) for k in seq for m in METRICS)
    table = Table(title=f"{len(seq)} jobs on {cores} cores")
    for col in ("launcher", "jobs × threads", "wall s", "speed-up"):
        table.add_column(col, justify="left" if col == "launcher" else "right")
    table.add_row("sequential (basic)", f"1 × {cores}", f"{seq_s:.1f}", "1.00×")
    table.add_row("joblib", f"{args.jobs} × {threads}", f"{par_s:.1f}", f"{seq_s / par_s:.2f}×")
    Console().print(table)
    print(f"largest |difference| of {', '.join(METRICS)} between the sweeps' runs: {diff:.4f}")
    atomic_write_json(args.out, {"cores": cores, "jobs": args.jobs, "threads": threads, "overrides": args.overrides,
                                 "sequential_s": seq_s, "joblib_s": par_s, "speedup": seq_s / par_s,
                                 "max_metric_diff": diff, "sequential": {str(k): v for k, v in seq.items()},
                                 "joblib": {str(k): v for k, v in par.items()}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
