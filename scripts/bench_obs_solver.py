"""Speed of robprune's batched OBS row solver against the plain per-row loop, and of SparseGPT, on
MiniLM-L6-shaped Linear layers (hidden 384, intermediate 1536), float64.

Per layer shape and thread count:
  obs_batched   robprune.prune.layerwise.obs.obs_prune: rows in batches, blocked downdates (block 64) on the active
                columns only (removed ones dropped at every block end, compact=True), whole layer
  obs_full      the same with compact=False: every downdate on the full (d_in, d_in) copies
  obs_loop      robprune.prune.layerwise.obs.obs_prune_loop: one row at a time, explicit rank-1 downdate of a
                (d_in, d_in) H⁻¹ copy (the textbook OBS loop); timed on the first ``--loop-rows`` rows
                and reported per row (rows are independent, so whole-layer time = rows x per-row time)
  sparsegpt     robprune.prune.layerwise.sparsegpt.sparsegpt_prune, blocksize 128, whole layer
The ratio batched/loop compares rows per second measured in the same run, interleaved per repeat;
obs_batched is also checked against obs_loop on the rows both pruned (same masks, max |ΔW|), and
against obs_full on the whole layer (same masks); "compact vs full" is obs_full's time / obs_batched's.
Inputs: X = Z A with Z, A standard normal (correlated features), n tokens; W standard normal.
The relative output error ‖(W' − W) X‖ / ‖W X‖ of each method (and of magnitude pruning) is reported.

    python scripts/bench_obs_solver.py --sparsity 0.5 --threads 1 2 --loop-rows 16 --repeats 1
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from robprune.io import atomic_write_json
from robprune.prune.layerwise.magnitude import weight_magnitude_masks
from robprune.prune.layerwise.obs import HessianAccumulator, damped_cholesky, obs_prune, obs_prune_loop, relative_error
from robprune.prune.layerwise.sparsegpt import sparsegpt_prune

F64 = torch.float64
METHODS = ("obs_batched", "obs_full", "obs_loop", "sparsegpt")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["384x384", "1536x384"], help="layers as d_outxd_in")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of each row's weights removed")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op thread counts")
    p.add_argument("--tokens", type=int, default=4096, help="calibration rows n of X")
    p.add_argument("--loop-rows", type=int, default=16, help="rows the per-row loop reference is timed on")
    p.add_argument("--rows-per-batch", type=int, default=None, help="obs_prune batch; default: its own choice")
    p.add_argument("--repeats", type=int, default=1, help="timed repeats; the median is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("outputs/bench/obs_solver.json"))
    return p.parse_args()


def make_layer(shape: str, tokens: int, seed: int):
    """(W (d_out, d_in), H = Σ x xᵀ (d_in, d_in), H⁻¹ damped by 0.01·mean diag), float64."""
    d_out, d_in = (int(v) for v in shape.split("x"))
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, d_in, generator=g, dtype=F64) @ torch.randn(d_in, d_in, generator=g, dtype=F64)
    acc = HessianAccumulator(d_in)
    acc.add(X)
    L, _ = damped_cholesky(acc.H)
    return torch.randn(d_out, d_in, generator=g, dtype=F64), acc.H, torch.cholesky_inverse(L)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_layer(args, shape: str, threads: int) -> dict:
    """Seconds per row of each method (median over repeats, order rotated), errors and the agreement check."""
    torch.set_num_threads(threads)
    W, H, H_inv = make_layer(shape, args.tokens, args.seed)
    rows = min(args.loop_rows, len(W))
    runs = {"obs_batched": lambda: obs_prune(W, H_inv, sparsity=args.sparsity, rows_per_batch=args.rows_per_batch),
            "obs_full": lambda: obs_prune(W, H_inv, sparsity=args.sparsity, rows_per_batch=args.rows_per_batch,
                                          compact=False),
            "obs_loop": lambda: obs_prune_loop(W[:rows], H_inv, sparsity=args.sparsity),
            "sparsegpt": lambda: sparsegpt_prune(W, H, sparsity=args.sparsity)}
    n_rows = {"obs_batched": len(W), "obs_full": len(W), "obs_loop": rows, "sparsegpt": len(W)}
    per_row: dict[str, list[float]] = {m: [] for m in METHODS}
    results = {}
    for r in range(args.repeats):
        for name in METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)]:
            seconds, results[name] = timed(runs[name])
            per_row[name].append(seconds / n_rows[name])
    (W_b, m_b), (W_l, m_l) = results["obs_batched"], results["obs_loop"]
    magnitude = W * weight_magnitude_masks({"w": W}, sparsity=args.sparsity)["w"]
    return {"shape": shape, "threads": threads, "loop_rows": rows,
            "s_per_row": {m: statistics.median(v) for m, v in per_row.items()}, "s_per_row_all": per_row,
            "layer_s": {m: statistics.median(v) * len(W) for m, v in per_row.items()},
            "batched_vs_loop": statistics.median(per_row["obs_loop"]) / statistics.median(per_row["obs_batched"]),
            "compact_vs_full": statistics.median(per_row["obs_full"]) / statistics.median(per_row["obs_batched"]),
            "same_masks": bool(torch.equal(m_b[:rows], m_l)),
            "same_masks_full": bool(torch.equal(m_b, results["obs_full"][1])), "max_abs_diff": float((W_b[:rows] - W_l).abs().max()),
            "rel_error": {"obs": relative_error(W_b, W, H), "sparsegpt": relative_error(results["sparsegpt"][0], W, H),
                          "magnitude": relative_error(magnitude, W, H)}}


def main() -> None:
    args = parse_args()
    obs_prune(torch.randn(4, 16, dtype=F64), torch.eye(16, dtype=F64), sparsity=0.5)  # warm-up
    rows = [bench_layer(args, shape, threads) for threads in args.threads for shape in args.shapes]
    report(args, rows)


def report(args, rows: list[dict]) -> None:
    table = Table(title=f"Layer-wise solvers at sparsity {args.sparsity}, float64, {args.tokens} tokens "
                        f"(layer seconds; obs_loop extrapolated from {args.loop_rows} rows)")
    for col in ("layer", "threads", "obs_batched s", "obs_full s", "compact vs full", "obs_loop s",
                "batched vs loop", "sparsegpt s", "same masks", "max |ΔW|", "err obs", "err sparsegpt", "err magnitude"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in rows:
        s, e = r["layer_s"], r["rel_error"]
        table.add_row(r["shape"], str(r["threads"]), f"{s['obs_batched']:.2f}", f"{s['obs_full']:.2f}",
                      f"{r['compact_vs_full']:.2f}x", f"{s['obs_loop']:.1f}", f"{r['batched_vs_loop']:.1f}x",
                      f"{s['sparsegpt']:.2f}", str(r["same_masks"] and r["same_masks_full"]),
                      f"{r['max_abs_diff']:.1e}", f"{e['obs']:.4f}", f"{e['sparsegpt']:.4f}", f"{e['magnitude']:.4f}")
    Console(width=max(180, Console().width)).print(table)  # 13 columns: do not squeeze them
    payload = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "torch": torch.__version__, "results": rows}
    atomic_write_json(args.out, payload)
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
