"""The GPU check's measurements (scripts/gpu_check.sh runs the ``gpu`` tests first, then this), sized to finish
within about 6 minutes on one H100/H200. Every section prints one line and goes into one JSON file:

1. PGD-AT training of robprune's CIFAR ResNet-18 (PGD-10, eps 8/255) through robprune's training loop, fp32 and
   bf16 autocast + channels_last: images/s of each (synthetic CIFAR-shaped data: nothing is downloaded).
2. AutoAttack ``standard`` (Linf 8/255) on 1,000 points with the model of (1): seconds and robust accuracy.
3. A generated 224-px JPEG tree streamed through ResNet-50 training steps (robprune's StreamLoader with
   DataLoader workers, RandomResizedCrop + flip): images/s with GPU JPEG decoding on and off.
4. Two-process data-parallel evaluation (trainer.devices=2) against one process, where two GPUs exist.

``--smoke`` runs every section tiny on whatever device there is (this machine's CPU in CI-like checks), so the
script is known to run before a GPU is lent. Timings depend on the card, driver and load.

    python scripts/gpu_check.py --out outputs/bench/gpu_check.json
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any device (checks the script runs)")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/gpu_check.json"))
    return p.parse_args()


def sizes(smoke: bool) -> dict:
    if smoke:
        return {"train_n": 64, "batch": 32, "aa_n": 16, "tree": 48, "steps": 2, "rn_batch": 16, "workers": 2}
    return {"train_n": 10_000, "batch": 256, "aa_n": 1_000, "tree": 2_048, "steps": 30, "rn_batch": 64, "workers": 8}


def cifar_data(n: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=gen)
    return x, y


def pgd_at_epoch(device: torch.device, size: dict, precision: str, channels_last: bool):
    """(images/s, trained model) of one PGD-AT epoch through robprune.train.loop.fit."""
    import functools

    from robprune.attacks import pgd
    from robprune.data.loader import BatchLoader
    from robprune.models.resnet import resnet18
    from robprune.train.loop import fit
    from robprune.train.objectives import pgd_at

    torch.manual_seed(0)
    model = resnet18(in_channels=3, image_size=32, num_classes=10, mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26]).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x, y = cifar_data(size["train_n"], device)
    gen = torch.Generator().manual_seed(0)
    loader = BatchLoader(x, y, size["batch"], shuffle=True, generator=gen, device=device,
                         augment={"crop_padding": 4, "hflip": True})
    objective = pgd_at(attack=functools.partial(pgd, eps=8 / 255, steps=10, step_size=2 / 255))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fit(model, loader, objective, optimizer, epochs=1, lr_factor=lambda e: 1.0, generator=gen, progress=False,
        autocast_dtype=torch.bfloat16 if precision == "bf16" and device.type == "cuda" else None,
        channels_last=channels_last)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(y) / (time.perf_counter() - start), model.to(memory_format=torch.contiguous_format)


def autoattack_check(model, device: torch.device, size: dict) -> dict:
    from robprune.attacks.autoattack import run_autoattack

    x, y = cifar_data(size["aa_n"], device)
    model.eval()
    start = time.perf_counter()
    result = run_autoattack(model, (x.float() / 255).to(device), y.to(device), eps=8 / 255, version="standard",
                            batch_size=500, n_iter=2 if size["aa_n"] < 100 else None,
                            n_queries=10 if size["aa_n"] < 100 else None)
    last = list(result.robust_after.values())[-1]
    return {"seconds": time.perf_counter() - start, "robust_acc": float(last.float().mean()), "n": size["aa_n"]}


def streamed_resnet50(device: torch.device, size: dict, work: Path) -> dict:
    import torchvision
    from omegaconf import OmegaConf

    from robprune.data import build_data
    from scripts.bench_data import photo_tree

    photo_tree(work / "tree", size["tree"])
    cfg = OmegaConf.create({"name": "imagefolder", "root": str(work / "tree"), "storage": "stream", "image_size": 224,
                            "resize": 256, "train_split": "train", "test_split": "train[:8]", "num_classes": None})
    out = {}
    for gpu_decode in ([True, False] if device.type == "cuda" else [False]):
        data = build_data(cfg, cache_dir=str(work / "cache"),
                          loading={"num_workers": size["workers"], "gpu_decode": gpu_decode})
        model = torchvision.models.resnet50(num_classes=int(data.num_classes)).to(device).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loader = data.loader(data.train_x, data.train_y, size["rn_batch"], shuffle=True, device=device,
                             generator=torch.Generator().manual_seed(0), augment={"hflip": True, "resized_crop": [0.08, 1.0]})
        seen, start, steps = 0, None, 0
        while steps < size["steps"] + 3:
            for x, y in loader:
                if steps == 3:  # three warm-up steps (workers, cuDNN autotune)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start, seen = time.perf_counter(), 0
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seen, steps = seen + len(y), steps + 1
                if steps >= size["steps"] + 3:
                    break
        if device.type == "cuda":
            torch.cuda.synchronize()
        out["gpu_decode" if gpu_decode else "cpu_decode"] = seen / (time.perf_counter() - start)
    return out


def ddp_eval(work: Path, smoke: bool) -> dict:
    """One run, then its evaluation with trainer.devices=2: the eval metrics must be equal."""
    if torch.cuda.device_count() < 2 and not smoke:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s); needs 2"}
    base = ["dataset=synthetic", "dataset.num_train=256", "dataset.num_test=128", "dataset.image_size=16",
            "model=cnn8", "model.width=8", "model.hidden=32", "train.epochs=1", "eval=pgd", "eval.attacks.pgd20.steps=3",
            "quiet=true", f"cache_dir={work / 'ddp-cache'}"]
    out = {}
    for devices in (1, 2):
        run = work / f"ddp{devices}"
        res = subprocess.run([sys.executable, "-m", "robprune.cli", "run", *base, f"trainer.devices={devices}",
                              "cache=false", f"hydra.run.dir={run}"], capture_output=True, text=True, cwd=work)
        if res.returncode != 0:
            return {"failed": res.stderr[-500:]}
        metrics = json.loads((run / "metrics.json").read_text())
        out[devices] = {k: metrics[k] for k in ("clean_acc", "robust_acc/pgd20")}
    out["equal"] = out[1] == out[2]
    return out


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = sizes(args.smoke)
    report = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "smoke": args.smoke}
    print(f"gpu_check on {report['device']} (torch {torch.__version__}){' [smoke sizes]' if args.smoke else ''}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32, _ = pgd_at_epoch(device, size, "fp32", False)
        bf16, model = pgd_at_epoch(device, size, "bf16", True)
        report["pgd_at_images_per_s"] = {"fp32": fp32, "bf16_channels_last": bf16}
        print(f"1. CIFAR ResNet-18 PGD-10 AT epoch ({size['train_n']} images): fp32 {fp32:.0f} img/s, "
              f"bf16 + channels_last {bf16:.0f} img/s ({bf16 / fp32:.2f}x)")
        report["autoattack"] = aa = autoattack_check(model.to(device), device, size)
        print(f"2. AutoAttack standard on {aa['n']} points: {aa['seconds']:.1f} s, robust accuracy {aa['robust_acc']:.3f}")
        report["streamed_resnet50_images_per_s"] = rn = streamed_resnet50(device, size, work)
        print("3. streamed 224-px JPEGs through ResNet-50 training steps: "
              + ", ".join(f"{k.replace('_', ' ')} {v:.0f} img/s" for k, v in rn.items()))
        report["ddp_eval"] = ddp = ddp_eval(work, args.smoke)
        print(f"4. data-parallel evaluation (2 processes vs 1): {ddp}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
