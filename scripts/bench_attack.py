"""Throughput of robprune's PGD against a textbook PGD loop, on the same model, batches and steps.

Three runs, interleaved within each repeat so that load on the machine hits all of them alike:
  textbook      the usual loop: random start, loss.backward() on x, sign step, project, clamp
                (backward() also computes every weight gradient, which the attack never uses)
  robprune      robprune.attacks.pgd, early_stop=False: the same algorithm through the library
  robprune_es   robprune.attacks.pgd, early_stop=True (evaluation settings): examples already
                misclassified leave the batch, so later steps cost less

Model: ``--model`` built for sklearn's bundled 8x8 digits, bilinearly upscaled to the model's input
size (small_cnn 8x8x1, cnn8 28x28x1, resnet18 32x32x3 with the grey channel repeated), trained with
Adam for ``--train-epochs`` epochs on 1000 images (a standard, non-robust model, as at the start of
every pruning pipeline); the attacked images are the held-out rest (up to 797). Early stopping gains
most on such models, where most points fall within a few steps, and least on robust models.

    python scripts/bench_attack.py --model cnn8 --batch 128 --steps 10 --n 512 --repeats 3 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from robprune.attacks import pgd
from robprune.io import atomic_write_json
from robprune.models import cnn8, resnet18, small_cnn

SHAPES = {"small_cnn": (1, 8), "cnn8": (1, 28), "resnet18": (3, 32)}  # (channels, image size)
BUILDERS = {"small_cnn": small_cnn, "cnn8": cnn8, "resnet18": resnet18}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(BUILDERS), default="cnn8")
    p.add_argument("--batch", type=int, default=128, help="images per attack batch")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--eps", type=float, default=0.1, help="L∞ budget in pixels")
    p.add_argument("--n", type=int, default=512, help="images attacked per repeat (<= 797)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--train-epochs", type=int, default=2, help="Adam epochs on 1000 digits before benchmarking")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("outputs/bench/bench_attack.json"))
    return p.parse_args()


def digits_at(channels: int, size: int):
    """sklearn digits as (1797, channels, size, size) pixels in [0, 1] (bilinear upscale), labels."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x.repeat(1, channels, 1, 1)[perm], torch.tensor(raw.target, dtype=torch.int64)[perm]


def train(model, x, y, epochs: int, batch: int = 64):
    """Plain cross-entropy training with Adam; returns the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(x), batch):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[i:i + batch]), y[i:i + batch]).backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def textbook_pgd(model, x, y, *, eps: float, steps: int):
    """The textbook L∞ PGD loop (Madry et al. 2018), step 2.5·eps/steps, no early stop."""
    alpha = 2.5 * eps / steps
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        loss.backward()
        with torch.no_grad():
            x_adv = x_adv + alpha * x_adv.grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    model.zero_grad(set_to_none=True)  # the loop above filled weight gradients as a side effect
    return x_adv.detach()


def run_once(attack, model, x, y, batch: int) -> tuple[float, float]:
    """(seconds, robust accuracy) for attacking all of x in batches."""
    correct, start = 0, time.perf_counter()
    for i in range(0, len(x), batch):
        x_adv = attack(model, x[i:i + batch], y[i:i + batch])
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == y[i:i + batch]).sum())
    return time.perf_counter() - start, correct / len(x)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    channels, size = SHAPES[args.model]
    x, y = digits_at(channels, size)
    model = BUILDERS[args.model](in_channels=channels, image_size=size, num_classes=10,
                                 mean=[0.5] * channels, std=[0.5] * channels)
    t0 = time.perf_counter()
    train(model, x[:1000], y[:1000], args.train_epochs)
    train_s = time.perf_counter() - t0
    x_test, y_test = x[1000:1000 + args.n], y[1000:1000 + args.n]
    with torch.no_grad():
        clean_acc = (model(x_test).argmax(1) == y_test).float().mean().item()

    attacks = {
        "textbook": lambda m, xb, yb: textbook_pgd(m, xb, yb, eps=args.eps, steps=args.steps),
        "robprune": lambda m, xb, yb: pgd(m, xb, yb, eps=args.eps, steps=args.steps),
        "robprune_es": lambda m, xb, yb: pgd(m, xb, yb, eps=args.eps, steps=args.steps, early_stop=True),
    }
    run_once(attacks["robprune"], model, x_test[:args.batch], y_test[:args.batch], args.batch)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in attacks}
    robust: dict[str, float] = {}
    names = list(attacks)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order each repeat
            seconds, robust[name] = run_once(attacks[name], model, x_test, y_test, args.batch)
            times[name].append(seconds)
    report(args, clean_acc, train_s, len(x_test), times, robust)


def report(args, clean_acc: float, train_s: float, n: int, times: dict, robust: dict) -> None:
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    ratios = {"robprune_es_vs_textbook": rate["robprune_es"] / rate["textbook"],
              "robprune_vs_textbook": rate["robprune"] / rate["textbook"],
              "robprune_es_vs_robprune": rate["robprune_es"] / rate["robprune"]}
    table = Table(title=f"PGD-{args.steps} throughput: {args.model}, batch {args.batch}, eps {args.eps}, "
                        f"{args.threads} threads, clean acc {clean_acc:.1%}")
    for col in ("attack", "images/s", "vs textbook", "robust acc", "median s"):
        table.add_column(col, justify="right" if col != "attack" else "left")
    for k in times:
        table.add_row(k, f"{rate[k]:.1f}", f"{rate[k] / rate['textbook']:.2f}x", f"{robust[k]:.1%}",
                      f"{statistics.median(times[k]):.2f}")
    Console().print(table)
    payload = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "torch": torch.__version__, "n_images": n, "clean_acc": clean_acc, "train_s": train_s,
               "images_per_s": rate, "robust_acc": robust, "seconds": times, "ratios": ratios}
    atomic_write_json(args.out, payload)
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
