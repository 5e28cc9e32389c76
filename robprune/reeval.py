"""``robprune eval``: evaluate a saved model (pruned or not) under any eval config, or any model a run
could start from (docs/how-to/start-from-a-model.md).

A robprune run or checkpoint: the run's own config.yaml supplies the dataset, model and seed unless the
command line overrides them. Anything else ``model.init`` takes (a weights file, a folder of one, or
``model.init=pretrained`` with no path, e.g. a RobustBench zoo model) is built from the command line's
model config and loaded by :func:`robprune.start.load_start`, with the same checks as a run's train
stage. Results go to a new directory (never into the run directory being evaluated).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import OmegaConf

from robprune.checkpoint import load_checkpoint
from robprune.compose import compose, compose_saved
from robprune.data import build_data
from robprune.errors import CheckpointError, ConfigError
from robprune.evaluate.model import evaluate_model
from robprune.graph import Precheck
from robprune.io import atomic_write_json, atomic_write_text
from robprune.stages.common import example_inputs
from robprune.stages.evaluate import STAGE as EVAL_STAGE
from robprune.summary import print_summary
from robprune.validate import validate

log = logging.getLogger("robprune")


def _robprune_checkpoint(path: Path) -> bool:
    weights = path / "model.safetensors" if path.is_dir() else path
    return weights.suffix == ".safetensors" and weights.with_suffix(".json").is_file()


def reevaluate(path: Path | None, overrides: list[str]) -> dict:
    """Evaluate the checkpoint at ``path`` (None: the model ``overrides`` start from) with ``overrides``."""
    from robprune.measure import measure
    from robprune.pipeline import add_int8_check, resolve_device

    if path is not None and not Path(path).exists():
        raise CheckpointError(f"{path}: no such run directory, checkpoint or weights file; pass a run directory "
                              "(outputs/runs/<run>), a folder holding model.safetensors + model.json, or a weights file")
    if path is None or not _robprune_checkpoint(Path(path)):
        return _evaluate_start(path, overrides)
    path = Path(path)
    ckpt_dir = path if path.is_dir() else path.parent
    cfg = compose_saved(ckpt_dir, overrides)
    validate(cfg)
    model, meta = load_checkpoint(path)
    data = build_data(cfg.dataset, cache_dir=cfg.data.cache_dir)
    _check_shape(meta["arch"], data, path)
    EVAL_STAGE.precheck(Precheck(cfg, data, model, example_inputs(data)))  # the eval stage's own checks
    device = resolve_device(cfg.device)
    out = _out_dir(cfg)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    metrics = evaluate_model(model.to(device).eval(), data, cfg.eval, seed=int(cfg.seed),
                             test_split=str(cfg.dataset.test_split), device=device, progress=not cfg.quiet, out=out)
    metrics.update(measure(model, meta, data, cfg, device))
    add_int8_check(metrics)
    metrics.update({"checkpoint": str(path.resolve()), "seed": int(cfg.seed),
                    "sparsity": float((meta.get("prune") or {}).get("sparsity", 0.0))})
    return _write(out, metrics, cfg, f"robprune eval {path} → {out}")


def _evaluate_start(path: Path | None, overrides: list[str]) -> dict:
    """A model built from the command line's model config and filled from ``path`` (model.init=path) or
    from the model.init the overrides give (e.g. a zoo model's pretrained weights)."""
    from robprune.measure import dense_model, measure
    from robprune.pipeline import add_int8_check, resolve_device
    from robprune.stages.common import architecture
    from robprune.start import load_start

    if path is not None:
        overrides = [*overrides, f"model.init={Path(path)}"]
    cfg = compose(overrides)
    validate(cfg)
    if cfg.model.get("init") is None:
        raise ConfigError("robprune eval needs a model: a run directory, checkpoint or weights file first, or "
                          "model.init=... (e.g. robprune eval model=robustbench model.name=Carmon2019Unlabeled dataset=cifar10)")
    data = build_data(cfg.dataset, cache_dir=cfg.data.cache_dir)
    arch = architecture(cfg.model, data)
    model = dense_model(arch)
    data.check_model(model)
    start = load_start(model, cfg.model, num_classes=arch.get("num_classes"))
    if start["head"] == "new":
        raise ConfigError("robprune eval with model.head=new would evaluate an untrained classifier; set model.head=keep, "
                          "or train it first: robprune run model.init=... model.head=new train.epochs=...")
    meta = {"arch": arch, "pruning_history": [], "quant": None, "start": start}
    EVAL_STAGE.precheck(Precheck(cfg, data, model, example_inputs(data)))
    device = resolve_device(cfg.device)
    out = _out_dir(cfg)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    metrics = evaluate_model(model.to(device).eval(), data, cfg.eval, seed=int(cfg.seed),
                             test_split=str(cfg.dataset.test_split), device=device, progress=not cfg.quiet, out=out)
    metrics.update(measure(model.cpu(), meta, data, cfg, device))
    add_int8_check(metrics)
    metrics.update({"checkpoint": str(cfg.model.init), "start": start, "seed": int(cfg.seed), "sparsity": 0.0})
    return _write(out, metrics, cfg, f"robprune eval model.init={cfg.model.init} → {out}")


def _out_dir(cfg) -> Path:
    return Path(cfg.eval_out or f"outputs/evals/{time.strftime('%Y-%m-%d_%H-%M-%S')}-{time.time_ns() % 10**6:06d}")


def _write(out: Path, metrics: dict, cfg, title: str) -> dict:
    atomic_write_json(out / "metrics.json", metrics)
    if not cfg.quiet:
        print_summary(metrics, title=title)
    return metrics


def _check_shape(arch: dict, data, path: Path) -> None:
    keys = [k for k in data.arch_record() if k not in ("mean", "std")]  # images: channels, size, classes; text: classes, pad id, vocabulary
    want, have = tuple(arch.get(k) for k in keys), tuple(data.arch_record()[k] for k in keys)
    if want != have:
        raise CheckpointError(f"{path}: the model expects ({', '.join(keys)}) = {want} but dataset "
                              f"'{data.name}' gives {have}; pass the dataset it was trained on, e.g. dataset=<name>")
