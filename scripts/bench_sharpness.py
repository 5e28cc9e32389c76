"""Training-step cost of the sharpness-aware optimizers against plain SGD on the same model and batches.

SGD, SAM, ASAM and AdaSAP (robprune.train.sharpness) wrap the same SGD; each timed round runs one step of
every optimizer on the same batch, in alternating order, so a change in machine load hits all of them;
the ratio is each optimizer's median step time over SGD's in the same run (docs/methods/adasap.md: AdaSAP costs
about 2× plain SGD). Models from conf/model at MNIST (1×28×28) or CIFAR (3×32×32) shape, random data.

    python scripts/bench_sharpness.py --model cnn8 --shape mnist --batch 128 --steps 20 --threads 1
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table
from torch import nn

from robprune.config import config_dir
from robprune.io import atomic_write_json
from robprune.models import build_model
from robprune.prune.channel.structured import build_groups
from robprune.train.sharpness import SharpnessAware, neuron_map

SHAPES = {"mnist": {"in_channels": 1, "image_size": 28, "num_classes": 10, "mean": [0.1307], "std": [0.3081]},
          "cifar": {"in_channels": 3, "image_size": 32, "num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3}}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn8", help="conf/model/<name>.yaml")
    p.add_argument("--width-mult", type=float, default=None, help="model.width_mult override (vgg16_bn)")
    p.add_argument("--shape", default="mnist", choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=128, help="images per training step")
    p.add_argument("--steps", type=int, default=20, help="timed steps per optimizer (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/bench_sharpness.json"), help="JSON result")
    return p.parse_args()


def optimizers(model: nn.Module, example: torch.Tensor) -> dict:
    """{name: (model copy, optimizer)}: each optimizer trains its own copy of the same initial model."""
    out = {}
    for name in ("sgd", "sam", "asam", "adasap"):
        m = copy.deepcopy(model).train()
        base = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        if name == "sgd":
            out[name] = (m, base)
            continue
        neurons = None
        if name == "adasap":
            _, groups = build_groups(m, example, exclude_stem=True, exclude_linear=True)
            m.train()
            neurons = neuron_map(m, groups)
        out[name] = (m, SharpnessAware(m, base, method=name, rho=0.05 if name == "sam" else 0.5, neurons=neurons))
    return out


def step(model, opt, x, y) -> float:
    def closure():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    started = time.perf_counter()
    opt.step(closure)
    return time.perf_counter() - started


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = OmegaConf.load(config_dir() / "model" / f"{args.model}.yaml")
    if args.width_mult is not None:
        cfg.width_mult = args.width_mult
    shape = SHAPES[args.shape]
    model = build_model(cfg, **shape)
    x = torch.rand(args.batch, shape["in_channels"], shape["image_size"], shape["image_size"])
    y = torch.randint(0, 10, (args.batch,))
    nets = optimizers(model, x[:1])
    for m, opt in nets.values():  # warm-up step each
        step(m, opt, x, y)
    times = {k: [] for k in nets}
    for r in range(args.steps):
        order = list(nets) if r % 2 == 0 else list(reversed(nets))
        for name in order:
            times[name].append(step(*nets[name], x, y))
    sgd = statistics.median(times["sgd"])
    rows = {k: {"step_ms": 1e3 * statistics.median(v), "images_per_s": args.batch / statistics.median(v),
                "ratio_vs_sgd": statistics.median(v) / sgd} for k, v in times.items()}
    table = Table(title=f"training step, {args.model} {args.shape} batch {args.batch}, {args.threads} thread(s)")
    for col in ("optimizer", "step (ms)", "images/s", "× SGD"):
        table.add_column(col, justify="right")
    for k, r in rows.items():
        table.add_row(k, f"{r['step_ms']:.1f}", f"{r['images_per_s']:.0f}", f"{r['ratio_vs_sgd']:.2f}")
    Console().print(table)
    atomic_write_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "results": rows,
                                 "torch": torch.__version__, "platform": platform.platform()})


if __name__ == "__main__":
    main()
