"""Dev-set agreement of pruned language models with their dense model, and the head-refit ablation.

The runs' own reconstruction reports (``reconstruction.md``) measure ‖Ŷ − Y‖/‖Y‖ on the calib stage's
64 held-out training sentences: per layer that is thousands of token rows, but the final logits are
only 64 × 2 numbers. This script measures the logits error on the whole test split (SST-2 dev, 872
sentences) for finished runs, next to their accuracy there, and optionally the same with the dense
model's pooler and classifier put back (``--dense-head``; pruned runs only): for a ``kr_obs`` run that is exactly
``prune.refit_head=false``, because the head is refit after every encoder layer is pruned
(tests/test_prune_language.py::test_refit_head_false_leaves_the_dense_head_and_the_same_encoder).

    python scripts/kr_logits_error.py --dense outputs/sweeps/kr_study/dense_avg/0 \\
        outputs/sweeps/kr_study/s50/* --dense-head

Each run directory needs ``model.safetensors``/``model.json`` and ``config.yaml`` (its dataset node
is rebuilt from it); the dense run must share the dataset. Prints a table, writes JSON (``--out``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from robprune.io import atomic_write_json

HEAD = ("hf.bert.pooler.", "hf.classifier.")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories of pruned text models")
    p.add_argument("--dense", type=Path, required=True, help="the run directory of their dense (averaged) model")
    p.add_argument("--data-root", type=Path, default=None, help="dataset folder (default: each run's data.root)")
    p.add_argument("--dense-head", action="store_true", help="also evaluate with the dense pooler and classifier")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("outputs/bench/kr_logits_error.json"))
    return p.parse_args()


@torch.no_grad()
def logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def label(cfg) -> str:
    prune = cfg.prune
    pattern, sparsity = prune.get("n_m"), prune.get("sparsity")
    if sparsity is None and not pattern:
        return str(prune.get("method", "none")) + ("" if cfg.get("average") is not None else " (no average)")
    return f"{prune.get('method')} {pattern if pattern else format(float(sparsity), '.3g')}"


def main() -> None:
    from robprune.checkpoint import load_checkpoint
    from robprune.data.build import build_data

    args = parse_args()
    torch.set_num_threads(args.threads)
    dataset = OmegaConf.load(args.dense / "config.yaml").dataset  # a run's config.yaml is resolved
    if args.data_root is not None:
        dataset.root = str(args.data_root.resolve())
    data = build_data(dataset, cache_dir=None)
    dense, _ = load_checkpoint(args.dense)
    y = data.test_y
    ref = logits(dense, data.test_x, args.batch_size)

    def measure(model) -> dict:
        out = logits(model, data.test_x, args.batch_size)
        return {"acc": float((out.argmax(1) == y).float().mean()),
                "logits_error": float((out - ref).norm() / ref.norm())}

    rows = [{"run": str(args.dense), "model": "dense", **measure(dense)}]
    for run in (r for r in args.runs if (r / "config.yaml").is_file()):  # a shell glob also lists multirun.yaml
        cfg = OmegaConf.load(run / "config.yaml")
        model, _ = load_checkpoint(run)
        row = {"run": str(run), "model": label(cfg), **measure(model)}
        if args.dense_head and label(cfg).split()[0] != "none":  # an unpruned run's head is its own model's
            state = dense.state_dict()
            model.load_state_dict({k: state[k] if k.startswith(HEAD) else v for k, v in model.state_dict().items()})
            row["dense_head"] = measure(model)
        rows.append(row)
        print(json.dumps(row), flush=True)

    table = Table(title=f"{len(y)} test sentences: accuracy and ‖logits − dense logits‖ / ‖dense logits‖")
    cols = ["model", "run", "Acc %", "logits error"] + (["Acc % (dense head)", "logits error (dense head)"]
                                                          if args.dense_head else [])
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "run") else "right")
    for r in rows:
        extra = [f"{100 * r['dense_head']['acc']:.2f}", f"{r['dense_head']['logits_error']:.4f}"] \
            if "dense_head" in r else ([""] * 2 if args.dense_head else [])
        table.add_row(r["model"], "/".join(Path(r["run"]).parts[-2:]), f"{100 * r['acc']:.2f}",
                      f"{r['logits_error']:.4f}", *extra)
    Console(width=140).print(table)
    atomic_write_json(args.out, {"dense": str(args.dense), "n_test": len(y), "rows": rows, "torch": torch.__version__})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
