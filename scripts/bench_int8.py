"""CPU latency of one model as FP32, as robprune's fake-quantised simulation, and on INT8 kernels.

The model comes from conf/model/<name>.yaml at MNIST shape 1x28x28 (cnn8 by default), random-init
(latency does not depend on the values), PTQ-quantised at 8 bits by robprune's own
``quantize_and_calibrate`` on random calibration images, then converted by
``robprune.quant.int8.convert_int8`` on the preferred quantised engine. The three are timed in
alternating rounds so that a change in machine load hits all of them; ratios are against FP32 in
the same run. ``agreement`` is the fraction of equal predictions INT8 vs fake-quant on the
calibration images (random model and data: a plumbing check, not an accuracy).

    python scripts/bench_int8.py --model cnn8 --batch 64 --repeats 20 --threads 2
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
from robprune.measure import measure_latency
from robprune.models import build_model
from robprune.quant import quantize_and_calibrate
from robprune.quant.int8 import convert_int8, pick_engine, quantized_engine

MNIST = {"in_channels": 1, "image_size": 28, "num_classes": 10, "mean": [0.1307], "std": [0.3081]}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn8", help="conf/model/<name>.yaml, built for MNIST shape 1x28x28")
    p.add_argument("--batch", type=int, default=64, help="images per timed forward pass")
    p.add_argument("--repeats", type=int, default=20, help="timed passes per model (median reported)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--engine", default=None, help="quantised engine (default: the first of x86, fbgemm, onednn, qnnpack)")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/bench_int8.json"), help="JSON result")
    return p.parse_args()


def models(name: str, calib: torch.Tensor) -> dict[str, torch.nn.Module]:
    """{fp32, fake_quant (PTQ 8-bit, per-tensor), int8} in eval mode; call inside quantized_engine."""
    torch.manual_seed(0)
    fp32 = build_model(OmegaConf.load(config_dir() / "model" / f"{name}.yaml"), **MNIST).eval()
    fake = copy.deepcopy(fp32)
    cfg = OmegaConf.create({"method": "ptq", "bits": 8, "calibration": {"n_examples": None, "batch_size": 256}})
    quantize_and_calibrate(fake, cfg, calib, seed=0, device="cpu")
    return {"fp32": fp32, "fake_quant": fake.eval(), "int8": convert_int8(fake, calib)}


def timed(nets: dict, x: torch.Tensor, repeats: int) -> dict:
    """{name: {latency_ms (median), latency_min_ms}} over ``repeats`` alternating single-pass rounds."""
    runs = {k: [] for k in nets}
    for net in nets.values():
        measure_latency(net, x, repeats=1, warmup=3)
    for _ in range(repeats):
        for key, net in nets.items():
            runs[key].append(measure_latency(net, x, repeats=1, warmup=0)["latency_ms"])
    return {k: {"latency_ms": statistics.median(v), "latency_min_ms": min(v)} for k, v in runs.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    engine = args.engine or pick_engine()
    gen = torch.Generator().manual_seed(0)
    shape = (MNIST["in_channels"], MNIST["image_size"], MNIST["image_size"])
    calib, x = torch.rand(256, *shape, generator=gen), torch.rand(args.batch, *shape, generator=gen)
    with quantized_engine(engine):
        nets = models(args.model, calib)
        lat = timed(nets, x, args.repeats)
        with torch.no_grad():
            agreement = (nets["int8"](calib).argmax(1) == nets["fake_quant"](calib).argmax(1)).float().mean().item()
    fp32 = lat["fp32"]["latency_ms"]
    result = {"model": args.model, "batch": args.batch, "repeats": args.repeats, "threads": torch.get_num_threads(),
              "engine": engine, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              **{k: {**v, "ratio_vs_fp32": v["latency_ms"] / fp32} for k, v in lat.items()},
              "agreement_int8_vs_fake": agreement}
    show(result)
    atomic_write_json(args.out, result)
    Console(stderr=True).print(f"wrote {args.out}")


def show(r: dict) -> None:
    table = Table(title=f"{r['model']} 1x28x28, batch {r['batch']}, {r['threads']} threads, engine {r['engine']} "
                        f"(INT8 = fake-quant on {r['agreement_int8_vs_fake']:.1%} of predictions)")
    for col in ("", "latency ms (median)", "latency ms (min)", "median / FP32"):
        table.add_column(col, justify="right")
    for key, label in (("fp32", "FP32"), ("fake_quant", "fake-quant (simulation)"), ("int8", "INT8 kernels")):
        v = r[key]
        table.add_row(label, f"{v['latency_ms']:.2f}", f"{v['latency_min_ms']:.2f}", f"{v['ratio_vs_fp32']:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
