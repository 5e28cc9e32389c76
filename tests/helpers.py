"""Shared test helpers: shrink overrides that keep the real configs but make runs take seconds."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Same pipeline, tiny budget: 2+1 epochs of an 8-channel CNN, PGD-3 evaluation on 120 test points.
SHRINK = [
    "train.epochs=2", "finetune.epochs=1", "model.width=8", "model.hidden=32", "train.optimizer.lr=0.005",
    "eval=pgd", "eval.attacks.pgd20.steps=3", "eval.n_examples.pgd20=120",
    "eval.latency.repeats=2", "eval.latency.warmup=1", "eval.latency.batch_size=8",
]

VOLATILE = ("seconds", "latency_ms", "stages", "size_bytes", "latency_threads", "device")


def stable(metrics: dict) -> dict:
    """Metrics without timings and paths (what must repeat exactly for a seed)."""
    return {k: v for k, v in metrics.items() if k not in VOLATILE and not k.startswith("latency")}


def robprune(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """The real command, as a user types it (python -m robprune.cli == the robprune entry point)."""
    full_env = {**os.environ, "ROBPRUNE_QUIET": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "robprune.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def read_metrics(run_dir: Path) -> dict:
    """A run's metrics.json as robprune table reads it: checked against its integrity record, which is dropped."""
    from robprune.results import read_metrics as read_checked

    return read_checked(Path(run_dir) / "metrics.json")
