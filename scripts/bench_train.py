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

--recipes: accuracy against wall time of whole training recipes instead (docs/methods/recipes.md#fast-recipes),
each through the real command (``robprune run``, prune=none finetune=none) on the CIFAR-10 image folder
(--root; 10,000 training / 2,000 test images), then clean, PGD-20 (all 2,000) and AutoAttack (--aa-n seeded
test images). The reference is the current ``mrpf_cifar10_cpu`` dense recipe (VGG-16-BN x0.25, PGD-5-AT with
Adam, 10 epochs); ratios are against it, measured in the same invocation. Per recipe the table shows the
training stage's wall time (its stage.json; a stage reused from --cache shows the time it took when built, and
says so) and, for monitored recipes, the monitor's per-epoch FGSM / PGD accuracy on training examples.

    python scripts/bench_train.py --recipes fast_standard fast_at mrpf_cpu --root <cifar10-images> --aa-n 200
"""
from __future__ import annotations

import argparse
import functools
import os
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
# recipe -> (overrides, goal: (min clean, min AutoAttack, max training minutes) from the issue that set them)
RECIPES = {
    "fast_standard": (["+experiment=fast_cifar10_cpu", "train=fast_standard", "model.width=64", "model.whiten_eps=0.0005"], (0.85, None, 15)),
    "fast_at": (["+experiment=fast_cifar10_cpu"], (0.65, 0.30, 45)),
    "mrpf_cpu": (["+experiment=mrpf_cifar10_cpu"], None),
}
REFERENCE = "mrpf_cpu"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--model", default=None, choices=("cnn8", "resnet18"), help="default: resnet18 on CUDA, cnn8 on a CPU")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="batches per timed epoch")
    p.add_argument("--pgd-batches", type=int, default=3, help="batches attacked by PGD-10")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--out", type=Path, default=None, help="JSON result (default outputs/bench/bench_train[_recipes].json)")
    p.add_argument("--recipes", nargs="*", choices=tuple(RECIPES), default=None, help="compare training recipes instead")
    p.add_argument("--root", type=Path, default=Path("../shared/data/cifar10-images"), help="CIFAR-10 image folder")
    p.add_argument("--aa-n", type=int, default=200, help="AutoAttack test images (seeded subset)")
    p.add_argument("--cache", type=Path, default=Path("outputs/bench/recipes-cache"), help="robprune stage cache")
    p.add_argument("--extra", nargs="*", default=[], help="overrides added to every recipe's command")
    args = p.parse_args()
    args.out = args.out or Path("outputs/bench/bench_train_recipes.json" if args.recipes is not None else "outputs/bench/bench_train.json")
    return args


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


def run_recipe(name: str, args) -> dict:
    """One recipe through ``robprune run``: its metrics, the training stage's build time and per-epoch log."""
    import json
    import os
    import subprocess
    import sys

    overrides, _ = RECIPES[name]
    import hashlib

    tag = f"-{hashlib.sha256(' '.join(args.extra).encode()).hexdigest()[:8]}" if args.extra else ""
    run_dir = args.cache.parent / "recipes-runs" / f"{name}{tag}"  # a finished run directory is never overwritten
    cmd = [sys.executable, "-m", "robprune.cli", "run", *overrides, "prune=none", "finetune=none",
           f"data.root={args.root.resolve()}", f"eval.n_examples.autoattack={args.aa_n}", f"cache_dir={args.cache.resolve()}",
           f"hydra.run.dir={run_dir.resolve()}", *args.extra]
    print("$", " ".join(cmd[2:]), flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "ROBPRUNE_QUIET": "1"}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "wall_s": wall}
    m = json.loads((run_dir / "metrics.json").read_text())
    train_dir = Path(m["stages"]["train"]["path"])
    built = json.loads((train_dir / "stage.json").read_text())
    log = json.loads((train_dir / "model.json").read_text()).get("train_log", [])
    return {"command": "robprune " + " ".join(cmd[3:]), "wall_s": wall, "train_s": float(built["seconds"]),
            "train_reused": bool(m["stages"]["train"]["reused"]), "built_at": built.get("built_at"),
            "eval_s": float(m["stages"]["eval"]["seconds"]), "epochs": len(log), "clean_acc": m["clean_acc"],
            "pgd20": m.get("robust_acc/pgd20"), "autoattack": m.get("robust_acc/autoattack"),
            "n_autoattack": m.get("n_eval/autoattack"), "checks_passed": m["checks"].get("passed"),
            "checks_failed": m["checks"].get("failed", []), "params": m["params"], "macs": m["macs"],
            "curve": [{k: r[k] for k in ("epoch", "seconds", "loss", "monitor_fgsm_acc", "monitor_pgd_acc") if k in r}
                      for r in log]}


def goal_text(name: str, r: dict) -> str:
    goal = RECIPES[name][1]
    if goal is None or "error" in r:
        return ""
    clean, aa, minutes = goal
    met = r["clean_acc"] >= clean and r["train_s"] <= 60 * minutes and (aa is None or (r["autoattack"] or 0) >= aa)
    want = f"≥{clean:.0%} clean" + (f", ≥{aa:.0%} AA" if aa else "") + f", ≤{minutes} min"
    return f"{'met' if met else 'NOT met'} ({want})"


def recipes(args) -> None:
    """The --recipes mode (module docstring)."""
    if not args.root.is_dir():
        print(f"skipped: {args.root} is not a folder (the CIFAR-10 image folder, train/<class>/*.jpg and test/...)")
        return
    names = args.recipes or list(RECIPES)
    results = {name: run_recipe(name, args) for name in names}
    ref = results.get(REFERENCE, {})
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}"  # noqa: E731
    table = Table(title=f"training recipes on the CIFAR-10 image folder, {platform.processor() or 'CPU'} "
                        f"({os.cpu_count()} cores; shared machines are noisy; floats differ slightly across CPUs)")
    for col in ("recipe", "epochs", "train min", "× ref time", "clean %", "PGD-20 %", f"AA % (n={args.aa_n})", "goal", "checks"):
        table.add_column(col, justify="left" if col in ("recipe", "goal", "checks") else "right")
    for name, r in results.items():
        if "error" in r:
            table.add_row(name, "", "", "", "", "", "", r["error"], "")
            continue
        ratio = f"{r['train_s'] / ref['train_s']:.2f}×" if ref.get("train_s") else ""
        reused = " (cached)" if r["train_reused"] else ""
        table.add_row(name, str(r["epochs"]), f"{r['train_s'] / 60:.1f}{reused}", ratio, pct(r["clean_acc"]),
                      pct(r["pgd20"]), pct(r["autoattack"]), goal_text(name, r),
                      "passed" if r["checks_passed"] else "; ".join(r["checks_failed"])[:80])
    console = Console(width=max(160, Console().width))
    console.print(table)
    for name, r in results.items():  # accuracy against wall time: the monitor's per-epoch numbers
        rows = [c for c in r.get("curve", []) if "monitor_pgd_acc" in c]
        if rows:
            curve = Table(title=f"{name}: per epoch, cumulative training time and the monitor's accuracy on training examples")
            for col in ("epoch", "minutes", "loss", "FGSM %", "PGD-10 %"):
                curve.add_column(col, justify="right")
            total = 0.0
            for c in r["curve"]:
                total += c["seconds"]
                curve.add_row(str(c["epoch"]), f"{total / 60:.1f}", f"{c['loss']:.3f}", pct(c.get("monitor_fgsm_acc")),
                              pct(c.get("monitor_pgd_acc")))
            console.print(curve)
    atomic_write_json(args.out, {"cpu": platform.processor(), "cores": os.cpu_count(), "torch": torch.__version__,
                                 "reference": REFERENCE, "aa_n": args.aa_n, "results": results})
    print(f"wrote {args.out}")


def main() -> None:
    args = parse_args()
    if args.recipes is not None:
        recipes(args)
        return
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
