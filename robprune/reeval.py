"""``robprune eval``: re-evaluate a saved model (pruned or not) under any eval config.

The run's own config.yaml supplies the dataset, model and seed unless the command line overrides them;
results go to a new directory (never into the run directory being evaluated).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import OmegaConf

from robprune.checkpoint import load_checkpoint
from robprune.compose import compose_saved
from robprune.data import build_data
from robprune.errors import CheckpointError
from robprune.evaluate.model import evaluate_model
from robprune.graph import Precheck
from robprune.io import atomic_write_json, atomic_write_text
from robprune.stages.common import example_inputs
from robprune.stages.evaluate import STAGE as EVAL_STAGE
from robprune.summary import print_summary
from robprune.validate import validate

log = logging.getLogger("robprune")


def reevaluate(path: Path, overrides: list[str]) -> dict:
    from robprune.measure import measure
    from robprune.pipeline import add_int8_check, resolve_device

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint; pass a run directory "
                              "(outputs/runs/<run>) or a folder holding model.safetensors + model.json")
    ckpt_dir = path if path.is_dir() else path.parent
    cfg = compose_saved(ckpt_dir, overrides)
    validate(cfg)
    model, meta = load_checkpoint(path)
    data = build_data(cfg.dataset, cache_dir=cfg.data.cache_dir)
    _check_shape(meta["arch"], data, path)
    EVAL_STAGE.precheck(Precheck(cfg, data, model, example_inputs(data)))  # the eval stage's own checks
    device = resolve_device(cfg.device)
    out = Path(cfg.eval_out or f"outputs/evals/{time.strftime('%Y-%m-%d_%H-%M-%S')}-{time.time_ns() % 10**6:06d}")
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    metrics = evaluate_model(model.to(device).eval(), data, cfg.eval, seed=int(cfg.seed),
                             test_split=str(cfg.dataset.test_split), device=device, progress=not cfg.quiet, out=out)
    metrics.update(measure(model, meta, data, cfg))
    add_int8_check(metrics)
    metrics.update({"checkpoint": str(path.resolve()), "seed": int(cfg.seed),
                    "sparsity": float((meta.get("prune") or {}).get("sparsity", 0.0))})
    atomic_write_json(out / "metrics.json", metrics)
    if not cfg.quiet:
        print_summary(metrics, title=f"robprune eval {path} → {out}")
    return metrics


def _check_shape(arch: dict, data, path: Path) -> None:
    keys = [k for k in data.arch_record() if k not in ("mean", "std")]  # images: channels, size, classes; text: classes, pad id, vocabulary
    want, have = tuple(arch.get(k) for k in keys), tuple(data.arch_record()[k] for k in keys)
    if want != have:
        raise CheckpointError(f"{path}: the model expects ({', '.join(keys)}) = {want} but dataset "
                              f"'{data.name}' gives {have}; pass the dataset it was trained on, e.g. dataset=<name>")
