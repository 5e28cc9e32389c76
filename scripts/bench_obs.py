"""Whole-model cost of the language-model pruners on MiniLM-L6: wall time and peak memory of
``kr_obs`` (knowledge-retention OBS), ``sparsegpt`` and ``magnitude`` at one sparsity, with the same
calibration sentences, each in a fresh process (so each peak is its own).

Per method: the wall time of ``robprune.prune.layerwise.language.prune_language_model`` (the pruning alone; the
model load and the tokenisation are not timed), the process's peak resident memory (ru_maxrss) and
its growth over the resident memory just before pruning, the measured encoder sparsity, and the
relative error ‖logits − dense logits‖ / ‖dense logits‖ on held-out training sentences.
The model is the packaged MiniLM-L6 with a seeded new 2-class head, or a robprune checkpoint
(``--checkpoint <run dir | model.safetensors>``, e.g. a kr_sst2 run's averaged model); the calibration
sentences are a seeded draw of SST-2's training split (the calib stage's rule, robprune/stages/calib.py).
The speed of the OBS row solver against a per-weight loop on one layer is scripts/bench_obs_solver.py.

    python scripts/bench_obs.py --data-root path/to/sst2 --sparsity 0.5 --threads 2
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from robprune.io import atomic_write_json

METHODS = ("kr_obs", "sparsegpt", "magnitude")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, required=True, help="folder with SST-2's train.tsv")
    p.add_argument("--checkpoint", type=Path, default=None, help="a robprune text checkpoint; default: packaged MiniLM-L6")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=["kr_obs", "obs_independent", "sparsegpt", "magnitude"])
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of encoder Linear weights removed")
    p.add_argument("--n-calib", type=int, default=512, help="calibration sentences (kr_sst2: 512)")
    p.add_argument("--n-heldout", type=int, default=64, help="held-out sentences for the logits error")
    p.add_argument("--max-length", type=int, default=64, help="tokens per sentence (the sst2 dataset's default)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("outputs/bench/obs.json"))
    return p.parse_args()


def rss_mib() -> float:
    """Current resident set size in MiB (Linux /proc; ru_maxrss is the peak, not the current)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def load(args) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """(model in eval mode, calibration ids (n, L), held-out ids (h, L)) — the same in every process."""
    from robprune.compose import compose
    from robprune.data.build import build_data
    from robprune.stages.calib import draw

    overrides = ["dataset=sst2", "model=minilm", f"data.root={args.data_root.resolve()}",
                 f"dataset.max_length={args.max_length}", "dataset.train_split='train[:8000]'"]  # kr_sst2's split
    cfg = compose(overrides)
    data = build_data(cfg.dataset, cache_dir=None)
    calib, heldout = draw(len(data.train_y), args.n_calib, args.n_heldout, args.seed)
    if args.checkpoint is not None:
        from robprune.checkpoint import load_checkpoint

        model, _ = load_checkpoint(args.checkpoint)
    else:
        from robprune.models.text import text_classifier

        torch.manual_seed(args.seed)  # the new head
        model = text_classifier(**data.arch_record())
    return model.eval(), data.train_x[calib].contiguous(), data.train_x[heldout].contiguous()


def one_method(args, method: str, queue) -> None:
    """Child process: prune a fresh copy with ``method``; put the measurements on the queue."""
    try:
        from robprune.prune.layerwise.language import prune_language_model

        torch.set_num_threads(args.threads)
        model, calib, heldout = load(args)
        before = rss_mib()
        started = time.perf_counter()
        info = prune_language_model(model, None if method == "magnitude" else calib, method=method,
                                    sparsity=args.sparsity, heldout_ids=heldout)
        seconds = time.perf_counter() - started  # includes the report's held-out forward passes (seconds)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        queue.put({"method": method, "seconds": seconds, "peak_rss_mib": peak, "rss_before_mib": before,
                   "sparsity": info["sparsity"], "logits_error": info["logit_rel_error"]})
    except BaseException as err:  # the parent prints it; a child's traceback would interleave
        queue.put({"method": method, "error": f"{type(err).__name__}: {err}"})


def main() -> None:
    args = parse_args()
    ctx = mp.get_context("spawn")
    results = []
    for method in args.methods:
        queue = ctx.Queue()
        proc = ctx.Process(target=one_method, args=(args, method, queue))
        proc.start()
        result = queue.get()
        proc.join()
        if "error" in result:
            raise SystemExit(f"{method}: {result['error']}")
        results.append(result)
        print(f"{method}: {result['seconds']:.1f} s", flush=True)
    fastest = min(r["seconds"] for r in results)
    table = Table(title=f"MiniLM-L6 pruned to {args.sparsity:.0%} ({args.n_calib} calibration sentences, "
                        f"{args.threads} threads)")
    for col in ("method", "wall s", "vs fastest", "peak RSS MiB", "growth MiB", "sparsity", "logits error"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in results:
        table.add_row(r["method"], f"{r['seconds']:.1f}", f"{r['seconds'] / fastest:.1f}×", f"{r['peak_rss_mib']:.0f}",
                      f"{r['peak_rss_mib'] - r['rss_before_mib']:.0f}", f"{r['sparsity']:.4f}", f"{r['logits_error']:.4f}")
    Console().print(table)
    atomic_write_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                 "torch": torch.__version__})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
