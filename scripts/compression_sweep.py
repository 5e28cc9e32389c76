"""Compression-level matching (Adver-Fine, arXiv 2403.09441; docs/methods/adverfine.md): sweep L1 filter pruning over
channel ratios and post-training quantisation over bit widths, each followed by adversarial fine-tuning,
and plot test accuracy against the compression ratio, so that pruned and quantised models of matched
size can be picked (the paper matched 80% pruning with INT8 on Fashion-MNIST).

    python scripts/compression_sweep.py --experiment adverfine_mnist --out outputs/compression_sweep
    python scripts/compression_sweep.py --plot-only outputs/compression_sweep     # re-plot finished runs

Runs the real ``robprune run -m`` twice (pruning ratios, then bit widths) with the experiment's
configs, the adversarial fine-tuning recipe and the dense model given by --train; the stage cache
trains the dense model once. Writes <out>/compression_sweep.png (clean and robust accuracy vs
compression ratio = dense FP32 bytes / bytes at the bit width, log scale) and compression_sweep.csv
(mean ± std over seeds per level). Extra arguments after ``--`` go to every ``robprune run``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robprune.report import line_plot, load_runs  # noqa: E402
from robprune.io import atomic_write_text  # noqa: E402

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
BITS = (16, 8, 4, 2)
METRICS = ("clean_acc", "robust_acc/pgd20", "compression_ratio")


def experiment_axis(experiment: str, key: str) -> list[str]:
    """The values an experiment's hydra.sweeper.params give ``key`` (e.g. its train recipes, f_s first)."""
    from omegaconf import OmegaConf

    params = OmegaConf.load(REPO / "conf" / "experiment" / f"{experiment}.yaml").hydra.sweeper.params
    return [v.strip() for v in str(params[key]).split(",")]


def sweep(out: Path, experiment: str, train: str, finetune: str, seeds: str, ratios, bits, extra: list[str]) -> None:
    """Two multiruns into out/prune and out/quant (robprune's own CLI, so every run is a normal run dir)."""
    common = [f"+experiment={experiment}", f"train={train}", f"finetune={finetune}", f"seed={seeds}", *extra]
    axes = {"prune": ["compress=prune", "prune.channel_ratio=" + ",".join(map(str, ratios))],
            "quant": ["compress=ptq", "adverfine.bits=" + ",".join(map(str, bits))]}
    for name, axis in axes.items():
        cmd = [sys.executable, "-m", "robprune.cli", "run", "-m", *common, *axis, f"hydra.sweep.dir={out / name}"]
        print("$", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def summarise(out: Path) -> pd.DataFrame:
    """One row per (method, level): mean and std over seeds of clean/robust accuracy and compression ratio."""
    frames = []
    for name, level in (("prune", "prune.channel_ratio"), ("quant", "quant.bits")):
        if (out / name).is_dir():
            runs = load_runs(out / name)
            frames.append(pd.DataFrame({"method": name, "level": runs[level],
                                        **{m: pd.to_numeric(runs[m], errors="coerce") for m in METRICS}}))
    if not frames:
        raise SystemExit(f"no finished runs under {out}/prune or {out}/quant")
    runs = pd.concat(frames, ignore_index=True)
    return runs.groupby(["method", "level"]).agg(["mean", "std", "count"]).reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="adverfine_mnist", help="experiment giving data, model and recipes")
    parser.add_argument("--train", default=None, help="dense model recipe; default: the experiment's first (f_s)")
    parser.add_argument("--finetune", default=None, help="fine-tuning recipe; default: the experiment's last (adversarial)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="channel ratios to prune")
    parser.add_argument("--bits", default=",".join(map(str, BITS)), help="bit widths to quantise to")
    parser.add_argument("--out", default="outputs/compression_sweep", help="sweep and plot directory")
    parser.add_argument("--plot-only", default=None, metavar="DIR", help="only summarise and plot finished runs in DIR")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    out = Path(args.plot_only or args.out).resolve()
    if not args.plot_only:
        train = args.train or experiment_axis(args.experiment, "train")[0]
        finetune = args.finetune or experiment_axis(args.experiment, "finetune")[-1]
        sweep(out, args.experiment, train, finetune, args.seeds,
              args.ratios.split(","), args.bits.split(","), extra)
    table = summarise(out)
    table.columns = ["/".join(c for c in col if c) if isinstance(col, tuple) else col for col in table.columns]
    atomic_write_text(out / "compression_sweep.csv", table.to_csv(index=False))
    print(table.to_string(index=False))
    print("wrote", plot_flat(table, out / "compression_sweep.png"), "and", out / "compression_sweep.csv")


def plot_flat(table: pd.DataFrame, out_png: Path) -> Path:
    """Plot from the flattened summary (columns ``<metric>/mean``)."""
    series = {}
    for method, name, fmt in (("prune", "L1 filter pruning", "r={:g}"), ("quant", "PTQ", "{:g} bit")):
        part = table[table["method"] == method]
        for metric, what in (("clean_acc", "clean"), ("robust_acc/pgd20", "PGD-20")):
            series[f"{name}, {what}"] = [(r["compression_ratio/mean"], 100 * r[f"{metric}/mean"], fmt.format(float(r["level"])))
                                         for _, r in part.iterrows()]
    return line_plot(series, out_png, title="Adversarially fine-tuned: accuracy vs compression",
                     xlabel="compression ratio (dense FP32 bytes / bytes at the bit width)", ylabel="accuracy (%)", log_x=True,
                     notes_below=tuple(label for label in series if label.startswith("PTQ")))


if __name__ == "__main__":
    main()
