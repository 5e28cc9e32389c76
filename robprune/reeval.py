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

from robprune.checkpoint import is_checkpoint, load_checkpoint
from robprune.compose import compose, compose_saved
from robprune.data import build_data
from robprune.errors import CheckpointError, ConfigError
from robprune.evaluate.model import evaluate_model
from robprune.graph import Precheck
from robprune.io import atomic_write_text
from robprune.results import write_metrics
from robprune.stages.common import example_inputs
from robprune.stages.evaluate import STAGE as EVAL_STAGE
from robprune.summary import print_summary
from robprune.validate import validate

log = logging.getLogger("robprune")


def reevaluate(path: Path | None, overrides: list[str]) -> dict:
    """Evaluate the checkpoint at ``path`` (None: the model ``overrides`` start from) with ``overrides``."""
    if path is not None and not Path(path).exists():
        raise CheckpointError(f"{path}: no such run directory, checkpoint or weights file; pass a run directory "
                              "(outputs/runs/<run>), a folder holding model.safetensors + model.json, or a weights file")
    if path is None or not is_checkpoint(path):
        return _evaluate_start(path, overrides)
    path = Path(path)
    cfg = compose_saved(path if path.is_dir() else path.parent, overrides)
    validate(cfg)
    model, meta = load_checkpoint(path)
    data = build_data(cfg.dataset, cache_dir=cfg.data.cache_dir, loading=cfg.data)
    _check_shape(meta["arch"], data, path)
    extra = {"checkpoint": str(path.resolve()), "sparsity": float((meta.get("prune") or {}).get("sparsity", 0.0))}
    return _evaluate(cfg, data, model, meta, extra, f"robprune eval {path}")


def _evaluate_start(path: Path | None, overrides: list[str]) -> dict:
    """A model built from the command line's model config and filled from ``path`` (model.init=path) or
    from the model.init the overrides give (e.g. a zoo model's pretrained weights)."""
    from robprune.measure import dense_model
    from robprune.stages.common import architecture
    from robprune.start import load_start

    if path is not None:
        overrides = [*overrides, f"model.init={Path(path)}"]
    cfg = compose(overrides)
    validate(cfg)
    if cfg.model.get("init") is None:
        raise ConfigError("robprune eval needs a model: a run directory, checkpoint or weights file first, or "
                          "model.init=... (e.g. robprune eval model=robustbench model.name=Carmon2019Unlabeled dataset=cifar10)")
    if cfg.model.get("head") == "new":
        raise ConfigError("robprune eval with model.head=new would evaluate an untrained classifier; set model.head=keep, "
                          "or train it first: robprune run model.init=... model.head=new train.epochs=...")
    data = build_data(cfg.dataset, cache_dir=cfg.data.cache_dir, loading=cfg.data)
    arch = architecture(cfg.model, data)
    model = dense_model(arch)
    data.check_model(model)
    start = load_start(model, cfg.model, num_classes=arch.get("num_classes"))
    meta = {"arch": arch, "pruning_history": [], "quant": None, "start": start}
    extra = {"checkpoint": str(cfg.model.init), "start": start, "sparsity": 0.0}
    return _evaluate(cfg, data, model, meta, extra, f"robprune eval model.init={cfg.model.init}")


def _evaluate(cfg, data, model, meta: dict, extra: dict, title: str) -> dict:
    """The eval stage's checks, then evaluation, cost and size of ``model`` into a new folder (eval_out):
    config.yaml and metrics.json (``extra`` added), the same keys as a run's."""
    from robprune.measure import measure
    from robprune.pipeline import add_data_checks, add_int8_check, resolve_device

    EVAL_STAGE.precheck(Precheck(cfg, data, model, example_inputs(data)))  # the eval stage's own checks
    for note in data.audit.warnings:  # faults the evaluation accepts (robprune.data.faults), also in metrics.json
        log.warning(note)
    device = resolve_device(cfg.device)
    out = Path(cfg.eval_out or f"outputs/evals/{time.strftime('%Y-%m-%d_%H-%M-%S')}-{time.time_ns() % 10**6:06d}")
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    metrics = evaluate_model(model.to(device).eval(), data, cfg.eval, seed=int(cfg.seed),
                             test_split=str(cfg.dataset.test_split), device=device, progress=not cfg.quiet, out=out)
    metrics.update(measure(model, meta, data, cfg, device))
    add_int8_check(metrics)
    add_data_checks(metrics, data)
    metrics.update({**extra, "seed": int(cfg.seed)})
    write_metrics(out, metrics)
    if not cfg.quiet:
        print_summary(metrics, title=f"{title} → {out}")
    return metrics


def _check_shape(arch: dict, data, path: Path) -> None:
    keys = [k for k in data.arch_record() if k not in ("mean", "std")]  # images: channels, size, classes; text: classes, pad id, vocabulary
    want, have = tuple(arch.get(k) for k in keys), tuple(data.arch_record()[k] for k in keys)
    if want != have:
        raise CheckpointError(f"{path}: the model expects ({', '.join(keys)}) = {want} but dataset "
                              f"'{data.name}' gives {have}; pass the dataset it was trained on, e.g. dataset=<name>")
