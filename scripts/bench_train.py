"""Training and PGD-10 throughput (images/s) for fp32, bf16, channels_last and torch.compile on the device at hand.

Each variant runs robprune's own training loop (robprune.train.fit: the closure, autocast, NHWC inputs and
the compiled forward exactly as ``trainer.*`` sets them up) for 2 epochs of --steps batches and reports
the second epoch (the first one pays for compilation and allocator warm-up), then times PGD-10 (the
attack of PGD-AT and of evaluation) on --pgd-batches batches with the same forward. Ratios are against
fp32 measured in the same process.

  GPU: ResNet-18 at CIFAR shapes (3×32×32, batch 128).  CPU: cnn8 at MNIST shapes (1×28×28, batch 128).

On a CPU the runner itself falls back to fp32 / eager for bf16 and compile (robprune.train.trainer);
this script calls torch directly so the table still says what they would cost here.

    python scripts/bench_train.py --steps 20 --threads 2          # CPU
    python scripts/bench_train.py --steps 100                     # on a GPU: ResNet-18
"""
from __future__ import annotations

import argparse
import functools
import platform
import time
import traceback
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from robprune.attacks.pgd import pgd
from robprune.data.loader import BatchLoader
from robprune.io import atomic_write_json
from robprune.models.cnn import cnn8
from robprune.models.resnet import resnet18
from robprune.train.loop import fit
from robprune.train.objectives import Standard

VARIANTS = ("fp32", "bf16", "channels_last", "compile", "bf16+channels_last+compile")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--model", default=None, choices=("cnn8", "resnet18"), help="default: resnet18 on CUDA, cnn8 on a CPU")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="batches per timed epoch")
    p.add_argument("--pgd-batches", type=int, default=3, help="batches attacked by PGD-10")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--out", type=Path, default=Path("outputs/bench/bench_train.json"))
    return p.parse_args()


def build(name: str, device: torch.device) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    torch.manual_seed(0)
    if name == "resnet18":
        shape = (3, 32, 32)
        model = resnet18(in_channels=3, image_size=32, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3)
    else:
        shape = (1, 28, 28)
        model = cnn8(in_channels=1, image_size=28, num_classes=10, mean=[0.13], std=[0.31])
    return model.to(device), shape


def options(variant: str) -> dict:
    parts = set(variant.split("+"))
    return {"bf16": "bf16" in parts, "channels_last": "channels_last" in parts, "compile": "compile" in parts}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(variant: str, args, device: torch.device) -> dict:
    opt = options(variant)
    model, shape = build(args.model, device)
    if opt["channels_last"]:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if opt["compile"] else model
    dtype = torch.bfloat16 if opt["bf16"] else None
    n = args.batch * args.steps
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    generator = torch.Generator().manual_seed(2)
    loader = BatchLoader(x, y, args.batch, shuffle=True, generator=generator, device=device, drop_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sync(device)
    history = fit(model, loader, Standard(), optimizer, epochs=2, lr_factor=lambda e: 1.0, generator=generator,
                  progress=False, forward_model=forward, autocast_dtype=dtype, channels_last=opt["channels_last"])
    sync(device)
    train_ips = n / history[1]["seconds"]
    model.eval()
    attack = functools.partial(pgd, eps=0.3 if shape[0] == 1 else 8 / 255, steps=10, norm="linf")
    batches = [(x[i * args.batch:(i + 1) * args.batch].to(device).float() / 255, y[i * args.batch:(i + 1) * args.batch].to(device))
               for i in range(args.pgd_batches + 1)]
    rates = []
    for i, (xb, yb) in enumerate(batches):  # the first batch warms up (compilation for the attack's shapes)
        if opt["channels_last"]:
            xb = xb.contiguous(memory_format=torch.channels_last)
        sync(device)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            attack(forward, xb, yb)
        sync(device)
        if i:
            rates.append(len(yb) / (time.perf_counter() - started))
    return {"train_img_s": train_ips, "pgd10_img_s": sum(rates) / len(rates), "first_epoch_s": history[0]["seconds"],
            "loss": history[1]["loss"]}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    args.model = args.model or ("resnet18" if device.type == "cuda" else "cnn8")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    results = {}
    for variant in args.variants:
        try:
            results[variant] = measure(variant, args, device)
        except Exception as err:  # e.g. compile without a C++ compiler: say so, keep the others
            results[variant] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
            traceback.print_exc(limit=2)
    base = results.get("fp32", {})
    table = Table(title=f"{args.model}, batch {args.batch}, {device.type} ({name}), torch {torch.__version__}")
    for col in ("variant", "train img/s", "× fp32", "PGD-10 img/s", "× fp32", "1st epoch s"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for variant, r in results.items():
        if "error" in r:
            table.add_row(variant, r["error"], "", "", "", "")
            continue
        ratio = (lambda k: f"{r[k] / base[k]:.2f}×" if base.get(k) else "")
        table.add_row(variant, f"{r['train_img_s']:.0f}", ratio("train_img_s"), f"{r['pgd10_img_s']:.0f}",
                      ratio("pgd10_img_s"), f"{r['first_epoch_s']:.1f}")
    Console().print(table)
    atomic_write_json(args.out, {"device": device.type, "device_name": name, "model": args.model, "batch": args.batch,
                                 "steps": args.steps, "torch": torch.__version__, "threads": torch.get_num_threads(),
                                 "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
