"""ONNX Runtime and TorchScript against PyTorch eager on the CPU, for models robprune exports, and what an
export with its check costs.

Two models: (a) a trained digits run (``robprune run model=cnn8`` shrunk to a few epochs, pruned by the
default l1_filter; checked on its real test points), and (b) robprune's CIFAR ResNet-18 (3x32x32, 10
classes) with 50% of its channels removed by conf/prune/l1_filter.yaml, random-init (latency does not
depend on the values; checked on 512 random images). Each model is exported with robprune's own
writers (robprune.export), then PyTorch eager, ONNX Runtime (CPUExecutionProvider) and the TorchScript
file are timed in alternating rounds at each batch size, so that a change in machine load hits all
three (ONNX Runtime without spin-waiting threads, robprune.export.onnx_file.ort_session); ratios are
against PyTorch eager in the same run. Float results (agreement, max logit
difference) and latencies differ between CPUs and thread counts.

    python scripts/bench_export.py --threads 2 --repeats 20
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from robprune.export.check import CHECK_BATCH, Exported, compare
from robprune.export.onnx_file import ort_runner, ort_session, write_onnx
from robprune.export.torchscript_file import load, trace
from robprune.io import atomic_write_json
from robprune.models import build_model
from robprune.prune import prune_model

CIFAR = {"in_channels": 3, "image_size": 32, "num_classes": 10,
         "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="images per timed forward pass")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds per runtime and batch (median reported)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads and ONNX Runtime's intra-op threads")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the digits run (a)")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/bench_export.json"), help="JSON result")
    return p.parse_args()


def digits_run(work: Path, epochs: int, threads: int) -> tuple[Path, list[str]]:
    """(run directory, overrides) of a shrunk default run with model=cnn8 on the embedded digits."""
    from robprune.compose import compose
    from robprune.pipeline import run

    overrides = [f"cache_dir={work / 'cache'}", f"threads={threads}", "quiet=true"]
    run(compose([*overrides, "model=cnn8", f"train.epochs={epochs}", "finetune.epochs=1", "eval=clean"]), work / "run")
    return work / "run", overrides


def digits_case(work: Path, epochs: int, threads: int) -> dict:
    """(a): the run's model and its test points, plus the wall time of the whole `robprune export` command."""
    from robprune.checkpoint import load_checkpoint
    from robprune.data import build_data
    from robprune.export import export_run

    run_dir, overrides = digits_run(work, epochs, threads)
    commands = {}
    for fmt in ("onnx", "torchscript"):
        start = time.perf_counter()
        export_run(run_dir, fmt, out=work / f"export_{fmt}", overrides=overrides, quiet=True)
        commands[fmt] = time.perf_counter() - start
    model, _ = load_checkpoint(run_dir)
    data = build_data(OmegaConf.load(run_dir / "config.yaml").dataset, cache_dir=None)
    batches = list(data.loader(data.test_x[:512], data.test_y[:512], CHECK_BATCH, shuffle=False))
    return {"name": "cnn8 digits (trained, pruned)", "model": model, "batches": batches,
            "shape": tuple(data.example_inputs(1).shape[1:]), "command_s": commands}


def resnet_case() -> dict:
    """(b): ResNet-18 at CIFAR shape, 50% of the channels removed, random-init; random check images."""
    from robprune.compose import compose

    torch.manual_seed(0)
    cfg = compose(["model=resnet18", "prune=l1_filter", "prune.channel_ratio=0.5"])  # the conf files as a run composes them
    model = build_model(cfg.model, **CIFAR).eval()
    prune_model(model, cfg.prune, example_inputs=torch.zeros(1, 3, 32, 32))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(512, 3, 32, 32, generator=gen)
    batches = [(x[i:i + CHECK_BATCH], torch.zeros(len(x[i:i + CHECK_BATCH]), dtype=torch.long))
               for i in range(0, 512, CHECK_BATCH)]
    return {"name": "resnet18 CIFAR, 50% pruned", "model": model.eval(),
            "batches": batches, "shape": (3, 32, 32), "command_s": None}


def export_and_check(case: dict, work: Path, threads: int) -> tuple[dict, dict]:
    """Write both files with robprune's writers, check each on the case's batches; (runners, results)."""
    model, example = case["model"], torch.rand(2, *case["shape"])
    runners, results = {}, {}
    for fmt in ("onnx", "torchscript"):
        path = work / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")
        start = time.perf_counter()
        if fmt == "onnx":
            write_onnx(model, example, path, opset=18, axes={0: "batch"})
            exported = Exported(path, ort_runner(ort_session(path, threads)))
        else:
            trace(model, example, path)
            exported = Exported(path, load(path))
        written = time.perf_counter() - start
        check = compare(model, exported, case["batches"])
        results[fmt] = {"export_s": written, "check_s": time.perf_counter() - start - written,
                        "size_bytes": path.stat().st_size, **check}
        runners[fmt] = exported.run
    return runners, results


@torch.inference_mode()
def timed(runners: dict, x: torch.Tensor, repeats: int) -> dict:
    """{runtime: median ms} over ``repeats`` alternating rounds of one call each, after 3 warm-up calls
    (TorchScript's profiling executor optimises its graph during its first calls)."""
    times = {k: [] for k in runners}
    for run in runners.values():
        for _ in range(3):
            run(x)
    for _ in range(repeats):
        for key, run in runners.items():
            start = time.perf_counter()
            run(x)
            times[key].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for i, make in enumerate((lambda: digits_case(Path(tmp) / "digits", args.epochs, args.threads), resnet_case)):
            case = make()
            work = Path(tmp) / f"case{i}"
            work.mkdir(parents=True, exist_ok=True)
            runners, results = export_and_check(case, work, args.threads)
            eager = copy.deepcopy(case["model"]).eval()
            latency = {b: timed({"pytorch": eager, **runners}, torch.rand(b, *case["shape"]), args.repeats)
                       for b in args.batches}
            rows.append({"model": case["name"], "command_s": case["command_s"], "formats": results,
                         "latency_ms": {str(b): v for b, v in latency.items()},
                         "ratio_vs_pytorch": {str(b): {k: v[k] / v["pytorch"] for k in v} for b, v in latency.items()}})
    result = {"threads": torch.get_num_threads(), "repeats": args.repeats, "torch": torch.__version__,
              "versions": _versions(), "cpu": platform.processor() or platform.machine(), "rows": rows,
              "note": "float results and latencies differ between CPUs and thread counts"}
    show(result)
    atomic_write_json(args.out, result)
    Console(stderr=True).print(f"wrote {args.out}")


def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("onnx", "onnxscript", "onnxruntime")}


def show(r: dict) -> None:
    table = Table(title=f"CPU latency, median ms per batch ({r['threads']} threads, {r['repeats']} alternating rounds); "
                        f"× = / PyTorch eager in the same run")
    for col in ("model", "batch", "PyTorch", "ONNX Runtime", "TorchScript"):
        table.add_column(col, justify="right")
    for row in r["rows"]:
        for b, lat in row["latency_ms"].items():
            ratio = row["ratio_vs_pytorch"][b]
            table.add_row(row["model"], b, f"{lat['pytorch']:.3f}", f"{lat['onnx']:.3f} ({ratio['onnx']:.2f}×)",
                          f"{lat['torchscript']:.3f} ({ratio['torchscript']:.2f}×)")
    checks = Table(title="export + check (robprune's writers; check = same argmax on the test/random points)")
    for col in ("model", "format", "export s", "check s", "size KiB", "agreement", "max |Δ logit|", "robprune export s"):
        checks.add_column(col, justify="right")
    for row in r["rows"]:
        for fmt, v in row["formats"].items():
            command = row["command_s"][fmt] if row["command_s"] else None
            checks.add_row(row["model"], fmt, f"{v['export_s']:.2f}", f"{v['check_s']:.2f}", f"{v['size_bytes'] / 1024:.0f}",
                           f"{v['agreement']:.4f} ({v['n_checked']})", f"{v['max_logit_diff']:.1e}",
                           "—" if command is None else f"{command:.2f}")
    Console(width=150).print(table)
    Console(width=150).print(checks)


if __name__ == "__main__":
    main()
