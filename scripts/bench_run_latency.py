"""CPU latency of the saved models of finished runs, re-measured together in alternating rounds.

A sweep's runs measure latency inside their own eval stage, each at its own moment of machine load; this
re-times their checkpoints (``model.safetensors`` + ``model.json`` in each run directory) in one process,
one forward pass per model per round, the models in turn, so that a change in load hits all of them. Runs
are grouped by the config keys given (e.g. ``prune.method prune.sparsity``); one run per group is timed
(the one with the lowest seed: the architecture does not depend on the seed for a fixed config, and its
weights do not change the time). Image models only (inputs: ``arch.in_channels`` × ``arch.image_size``²).

    python scripts/bench_run_latency.py outputs/sweeps/mrpf_c10_seeds --keys prune.method prune.sparsity \
        --batch 64 --threads 1 --rounds 15
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from robprune.checkpoint import load_checkpoint
from robprune.io import atomic_write_json
from robprune.measure import measure_latency
from robprune.prune.stats import count_params


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="a sweep directory (searched recursively for metrics.json)")
    p.add_argument("--keys", nargs="+", default=["prune.method", "prune.sparsity"], help="config keys naming a group")
    p.add_argument("--batch", type=int, default=64, help="images per timed forward pass")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--rounds", type=int, default=15, help="timed passes per model (median reported)")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/run_latency.json"), help="JSON result")
    return p.parse_args()


def pick_runs(root: Path, keys: list[str]) -> dict[tuple, Path]:
    """{group (values of keys): run dir with the lowest seed} over root's finished runs with a checkpoint."""
    best: dict[tuple, tuple[int, Path]] = {}
    for metrics in sorted(root.rglob("metrics.json")):
        run = metrics.parent
        if not (run / "model.safetensors").is_file() or not (run / "config.yaml").is_file():
            continue
        cfg = OmegaConf.load(run / "config.yaml")
        group = tuple(OmegaConf.select(cfg, k) for k in keys)
        seed = int(json.loads(metrics.read_text()).get("seed", 0))
        if group not in best or seed < best[group][0]:
            best[group] = (seed, run)
    return {g: run for g, (_, run) in sorted(best.items(), key=lambda kv: str(kv[0]))}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    runs = pick_runs(args.root, args.keys)
    if not runs:
        raise SystemExit(f"no finished run with model.safetensors under {args.root}")
    models, inputs = {}, {}
    for group, run in runs.items():
        model, meta = load_checkpoint(run / "model.safetensors")
        arch = meta["arch"]
        models[group] = model.eval()
        inputs[group] = torch.randn(args.batch, arch["in_channels"], arch["image_size"], arch["image_size"],
                                    generator=torch.Generator().manual_seed(0))
    times: dict[tuple, list[float]] = {g: [] for g in models}
    for rnd in range(args.rounds):
        for g, model in models.items():
            times[g].append(measure_latency(model, inputs[g], repeats=1, warmup=2 if rnd == 0 else 0)["latency_ms"])
    table = Table(title=f"Latency of saved run models: batch {args.batch}, {args.threads} thread(s), "
                        f"{args.rounds} alternating rounds ({platform.processor() or platform.machine()})")
    for col in (*args.keys, "run", "params", "median ms", "min ms"):
        table.add_column(col, justify="right" if col in ("params", "median ms", "min ms") else "left")
    rows = []
    for g, run in runs.items():
        row = {"group": dict(zip(args.keys, g)), "run": str(run), "params": count_params(models[g]),
               "median_ms": statistics.median(times[g]), "min_ms": min(times[g]), "ms": times[g]}
        rows.append(row)
        table.add_row(*(str(v) for v in g), str(run.relative_to(args.root)), f"{row['params']:,}",
                      f"{row['median_ms']:.1f}", f"{row['min_ms']:.1f}")
    Console(width=max(120, Console().width)).print(table)
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    atomic_write_json(args.out, {"args": args_json, "torch": torch.__version__, "threads": args.threads,
                                 "results": rows})
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
