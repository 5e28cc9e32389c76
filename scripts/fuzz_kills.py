"""SIGKILL a shrunk multi-stage run at random moments, rerun it, and check the rerun's numbers.

The run is the default pipeline shrunk to seconds on the embedded digits (train → prune → fine-tune →
AutoAttack evaluation, the real ``robprune run`` command). An uninterrupted run is timed first; then,
``--kills`` times, a run with a fresh cache is started and killed with SIGKILL after a delay drawn
(seeded) uniformly over that duration, and the same command is run again into the same folders. Each
rerun must end with the uninterrupted run's metrics (tests/helpers.py ``stable``: everything but
timings and paths), and nothing finished may change: not the uninterrupted run, not an earlier
trial's run, not a cache entry that was finished when the kill came. Prints one row per kill (where it
landed, what the rerun did) and writes the counts as JSON.

    python scripts/fuzz_kills.py --kills 10 --seed 0        # ~3 min on 2 cores
    python -m pytest tests/test_fuzz_kills.py --fuzz-long   # the same, as a test (ROBPRUNE_FUZZ_KILLS=N)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import stable  # noqa: E402  (the comparison the resume tests use)

STAGES = ("train", "prune", "finetune", "eval")
# SHRINK's model and budget, with more epochs and an AutoAttack evaluation, so that kills land in every stage
ARGS = ["run", "train.epochs=8", "finetune.epochs=4", "model.width=8", "model.hidden=32", "train.optimizer.lr=0.005",
        "eval=autoattack", "eval.attacks.autoattack.attacks=[apgd-ce,apgd-t,square]", "eval.attacks.autoattack.n_iter=20",
        "eval.attacks.autoattack.n_queries=300", "eval.n_examples.autoattack=128", "eval.large_eps_n=16",
        "eval.latency.repeats=2", "eval.latency.warmup=1", "eval.latency.batch_size=8"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=10, help="kill-and-rerun trials")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    p.add_argument("--work", type=Path, default=Path("outputs/fuzz_kills"), help="folder for the runs (emptied first)")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/fuzz_kills.json"), help="JSON result")
    return p.parse_args(argv)


def command(work: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "robprune.cli", *ARGS, f"cache_dir={work / name / 'cache'}",
            f"hydra.run.dir={work / name / 'run'}"]


def environment() -> dict:
    return {**os.environ, "ROBPRUNE_QUIET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run(work: Path, name: str) -> float:
    """One uninterrupted run; its wall seconds. SystemExit with its stderr when it fails."""
    started = time.perf_counter()
    done = subprocess.run(command(work, name), cwd=work, env=environment(), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def killed(work: Path, name: str, delay: float) -> bool:
    """Start a run and SIGKILL it after ``delay`` seconds; False when it had already exited."""
    proc = subprocess.Popen(command(work, name), cwd=work, env=environment(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def landed(trial: Path) -> str:
    """Where the kill came, read from what it left: the first unfinished stage (with its epoch or AutoAttack
    progress), before any stage, or after the last one."""
    cache = trial / "cache"
    if (trial / "run" / "metrics.json").exists():
        return "after metrics.json"
    for stage in STAGES:
        finished = [p for p in (cache / stage).glob("*") if p.is_dir() and (p / ".done").exists()] if (cache / stage).is_dir() else []
        if finished:
            continue
        partial = sorted((cache / stage).glob("*.partial")) if (cache / stage).is_dir() else []
        if not partial:
            return "startup" if stage == "train" else f"before {stage}"
        return f"{stage}{_progress(partial[0])}"
    return "publishing"


def _progress(partial: Path) -> str:
    try:
        return f", after epoch {json.loads((partial / 'epochs' / 'last.json').read_text())['epoch']}"
    except (OSError, ValueError, KeyError):
        pass
    states = sorted(partial.glob("autoattack/*/block*.state.json"))
    try:
        return f", {len(json.loads(states[0].read_text())['done'])} sub-attacks done" if states else ""
    except (OSError, ValueError, KeyError):
        return ""


def finished_files(trial: Path) -> dict[str, bytes]:
    """Every file of the trial's finished run and finished cache entries (their .last_used stamps aside)."""
    run = trial / "run"
    files = {str(p): p.read_bytes() for p in run.rglob("*") if p.is_file()} if (run / "metrics.json").exists() else {}
    for done in (trial / "cache").glob("*/*/.done"):
        files.update({str(p): p.read_bytes() for p in done.parent.rglob("*") if p.is_file() and p.name != ".last_used"})
    return files


def fuzz(kills: int, seed: int, work: Path, report=print) -> dict:
    """The whole experiment (see the module docstring); returns its counts and rows."""
    import shutil

    from robprune.results import read_metrics

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    duration = run(work, "reference")
    reference = stable(read_metrics(work / "reference" / "run" / "metrics.json"))
    protected = finished_files(work / "reference")
    rng, rows = random.Random(seed), []
    for k in range(kills):
        name, delay = f"trial{k}", rng.uniform(0.0, duration)
        was_killed = killed(work, name, delay)
        where = landed(work / name) if was_killed else "after exit"
        kept = finished_files(work / name)
        if not (work / name / "run" / "metrics.json").exists():
            run(work, name)
        same = stable(read_metrics(work / name / "run" / "metrics.json")) == reference
        touched = sorted(p for p, data in kept.items() if not Path(p).is_file() or Path(p).read_bytes() != data)
        rows.append({"trial": k, "delay_s": round(delay, 2), "landed": where, "identical": same, "touched": touched})
        protected.update(finished_files(work / name))
        report(f"kill {k + 1}/{kills} at {delay:5.2f} s ({where}): rerun {'identical' if same else 'DIFFERS'}"
               f"{', touched ' + ', '.join(touched) if touched else ''}")
    touched = sorted(p for p, data in protected.items() if not Path(p).is_file() or Path(p).read_bytes() != data)
    return {"kills": kills, "seed": seed, "run_seconds": round(duration, 2), "args": ARGS, "rows": rows,
            "differing": sum(not r["identical"] for r in rows), "touched": touched,
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from robprune.io import atomic_write_json

    args = parse_args(argv)
    result = fuzz(args.kills, args.seed, args.work.resolve(), report=Console(stderr=True).print)
    table = Table(title=f"SIGKILL at random moments of a {result['run_seconds']} s run (seed {args.seed})",
                  caption=f"{result['differing']} of {args.kills} reruns differ, {len(result['touched'])} finished "
                          f"files touched; {result['seconds']} s in all")
    for col in ("trial", "delay s", "killed in", "rerun"):
        table.add_column(col, justify="right" if col in ("trial", "delay s") else "left")
    for row in result["rows"]:
        table.add_row(str(row["trial"]), f"{row['delay_s']:.2f}", row["landed"], "identical" if row["identical"] else "DIFFERS")
    Console(width=max(100, Console().width)).print(table)
    atomic_write_json(args.out, result)
    Console().print(f"wrote {args.out}")
    if result["differing"] or result["touched"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
