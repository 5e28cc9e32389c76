"""CPU latency before and after structured L1 channel pruning, next to the MACs and params ratios.

Random-init weights (latency does not depend on the values). The model comes from conf/model/<name>.yaml
and the pruning from conf/prune/l1_filter.yaml with ``channel_ratio`` overridden, so the benchmark
measures exactly what the pipeline runs. Dense and pruned are timed in alternating rounds so that
a change in machine load hits both.

    python scripts/bench_prune_latency.py --model resnet18 --batch 64 --ratio 0.5 --repeats 10 --threads 2
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from robprune.config import config_dir
from robprune.io import atomic_write_json
from robprune.measure import count_macs, measure_latency
from robprune.models import build_model
from robprune.prune import prune_model
from robprune.prune.stats import count_params

CIFAR = {"in_channels": 3, "image_size": 32, "num_classes": 10,
         "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", help="conf/model/<name>.yaml, built for CIFAR shape 3x32x32")
    p.add_argument("--batch", type=int, default=64, help="images per timed forward pass")
    p.add_argument("--ratio", type=float, default=0.5, help="prune.channel_ratio (fraction of channels removed)")
    p.add_argument("--repeats", type=int, default=10, help="timed passes per model (median reported)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/bench_prune_latency.json"), help="JSON result")
    return p.parse_args()


def models(name: str, ratio: float) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """(dense, pruned, prune info), both in eval mode."""
    torch.manual_seed(0)
    dense = build_model(OmegaConf.load(config_dir() / "model" / f"{name}.yaml"), **CIFAR).eval()
    pruned = copy.deepcopy(dense)
    cfg = OmegaConf.merge(OmegaConf.load(config_dir() / "prune" / "l1_filter.yaml"), {"channel_ratio": ratio})
    one = torch.zeros(1, CIFAR["in_channels"], CIFAR["image_size"], CIFAR["image_size"])
    info = prune_model(pruned, cfg, example_inputs=one)
    return dense, pruned.eval(), info


def timed(dense, pruned, x, repeats: int) -> tuple[dict, dict]:
    """Median ms per batch over ``repeats`` alternating rounds of one timed pass each (after warm-up)."""
    runs = {"dense": [], "pruned": []}
    for model in (dense, pruned):
        measure_latency(model, x, repeats=1, warmup=2)
    for _ in range(repeats):
        for key, model in (("dense", dense), ("pruned", pruned)):
            runs[key].append(measure_latency(model, x, repeats=1, warmup=0)["latency_ms"])
    return tuple({"latency_ms": statistics.median(v), "latency_min_ms": min(v)} for v in runs.values())


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    dense, pruned, info = models(args.model, args.ratio)
    one = torch.zeros(1, CIFAR["in_channels"], CIFAR["image_size"], CIFAR["image_size"])
    x = torch.rand(args.batch, CIFAR["in_channels"], CIFAR["image_size"], CIFAR["image_size"])
    lat_dense, lat_pruned = timed(dense, pruned, x, args.repeats)
    result = {
        "model": args.model, "batch": args.batch, "channel_ratio": args.ratio, "repeats": args.repeats,
        "threads": torch.get_num_threads(), "device": "cpu", "torch": torch.__version__, "cpu": platform.processor(),
        "dense": {"params": count_params(dense), "macs": count_macs(dense, one), **lat_dense},
        "pruned": {"params": count_params(pruned), "macs": count_macs(pruned, one), **lat_pruned},
        "sparsity": info["sparsity"],
    }
    d, p = result["dense"], result["pruned"]
    result.update(params_ratio=p["params"] / d["params"], macs_ratio=p["macs"] / d["macs"],
                  speedup=d["latency_ms"] / p["latency_ms"],
                  speedup_min=d["latency_min_ms"] / p["latency_min_ms"])  # less sensitive to other processes
    show(result)
    atomic_write_json(args.out, result)
    Console(stderr=True).print(f"wrote {args.out}")


def show(r: dict) -> None:
    table = Table(title=f"{r['model']} 3x32x32, batch {r['batch']}, {r['threads']} threads, "
                        f"channel_ratio {r['channel_ratio']} (parameter sparsity {r['sparsity']:.3f})")
    for col in ("", "dense", "pruned", "pruned / dense"):
        table.add_column(col, justify="right")
    d, p = r["dense"], r["pruned"]
    table.add_row("params", f"{d['params']:,}", f"{p['params']:,}", f"{r['params_ratio']:.3f}")
    table.add_row("MACs (batch 1)", f"{d['macs']:,}", f"{p['macs']:,}", f"{r['macs_ratio']:.3f}")
    table.add_row(f"latency ms (median of {r['repeats']})", f"{d['latency_ms']:.1f}", f"{p['latency_ms']:.1f}",
                  f"{p['latency_ms'] / d['latency_ms']:.3f}")
    table.add_row("latency ms (min)", f"{d['latency_min_ms']:.1f}", f"{p['latency_min_ms']:.1f}",
                  f"{p['latency_min_ms'] / d['latency_min_ms']:.3f}")
    table.add_row("speedup (median; min)", "", "", f"{r['speedup']:.2f}x; {r['speedup_min']:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
