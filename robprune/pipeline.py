"""``run(cfg)``: the recipe. Build data, train, prune, fine-tune, evaluate, write results.

Each stage is a function of its config slice and its input artifact, cached under
hash(config slice, input key) by :class:`robprune.store.StageCache`. Every stage seeds itself from
(seed, stage, key), so a cached stage and a freshly built one lead to the same downstream numbers.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

import robprune
from robprune.checkpoint import RESERVED_KEYS, load_checkpoint, save_checkpoint
from robprune.config import config_hash, to_container
from robprune.data import BatchLoader, DataBundle, build_data
from robprune.attacks.compat import attack_compat
from robprune.evaluate import evaluate_robustness
from robprune.io import atomic_write_json, atomic_write_text
from robprune.measure import checkpoint_size_bytes, dense_model, measure
from robprune.prune import PruneContext, prune_model
from robprune.prune.scores import PUBLISHED_FILES as SCORES_FILES, compute_scores, log_layer_table
from robprune.quant import quantize_and_calibrate, spec_from_config
from robprune.store import StageCache, StageResult, publish_files
from robprune.train import build_training, fit, schedule_factor
from robprune.train.masks import finetune_hooks
from robprune.validate import validate

log = logging.getLogger("robprune")
CHECKPOINT_FILES = ["model.safetensors", "model.json"]


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda when available, else cpu. Called once per run; the result is passed down."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def without(node: DictConfig, *keys: str) -> dict:
    """A config slice minus keys that do not change a stage's output (for cache keys)."""
    return {k: v for k, v in to_container(node).items() if k not in keys}


def stage_seed(seed: int, key: str) -> int:
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16)


def seed_stage(seed: int, key: str) -> torch.Generator:
    """Seed torch's global RNG for a stage and return the loader's generator (saved in epoch checkpoints)."""
    s = stage_seed(seed, key)
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s + 1)


def architecture(cfg: DictConfig, data: DataBundle) -> dict:
    """Everything needed to rebuild the dense model; stored in model.json."""
    return {"model": to_container(cfg.model), "in_channels": data.in_channels, "image_size": data.image_size,
            "num_classes": data.num_classes, "mean": list(data.mean), "std": list(data.std)}


def train_model(model, cfg_train: DictConfig, key: str, data: DataBundle, cfg: DictConfig, *, device, work: Path,
                generator: torch.Generator, stage: str, hooks=()) -> list[dict]:
    """Run the one loop with a train/finetune config; epoch checkpoints go to work/epochs (for resume)."""
    objective, optimizer = build_training(cfg_train, model, key)
    loader = BatchLoader(data.train_x, data.train_y, cfg.data.batch_size, shuffle=True, generator=generator,
                         augment=cfg.dataset.augment, device=device)
    epochs = int(cfg_train.epochs)
    return fit(model, loader, objective, optimizer, epochs=epochs, generator=generator,
               lr_factor=lambda e: schedule_factor(cfg_train.schedule, e, epochs),
               checkpoint_dir=work / "epochs", progress=not cfg.quiet, description=stage, hooks=hooks)


def train_stage(cfg, data, arch, key, device):
    def build(work: Path) -> None:
        generator = seed_stage(cfg.train_seed, key)
        model = dense_model(arch).to(device)
        history = train_model(model, cfg.train, "train", data, cfg, device=device, work=work, generator=generator, stage="train")
        save_checkpoint(model, work, arch=arch, history=[], extra={"train_log": history})
        shutil.rmtree(work / "epochs", ignore_errors=True)
    return build


def scores_stage(cfg, data, upstream: StageResult, key, device):
    """Per-layer scores (MRPF's MRS) and the calibration adversarial set, once per (dense model, prune.scores)."""
    def build(work: Path) -> None:
        seed_stage(int(cfg.prune.scores.get("seed", 0)), key)
        model, _ = load_checkpoint(upstream.path)
        example = torch.zeros(1, data.in_channels, data.image_size, data.image_size)
        compute_scores(model, cfg.prune.scores, data.train_x, data.train_y, device=device, example_inputs=example, out_dir=work)
    return build


def cached_scores(cfg, data, trained: StageResult, cache: StageCache, device) -> StageResult | None:
    """The scores stage when the prune config has a ``scores`` node: built once per (dense model, scores
    config), so shared by every sparsity and run seed."""
    if not cfg.prune.get("scores"):
        return None
    key = config_hash("scores", trained.key, cfg.prune.scores)
    return cache.get("scores", key, scores_stage(cfg, data, trained, key, device))


def prune_stage(cfg, data, upstream: StageResult, key, device=None, scores: StageResult | None = None):
    def build(work: Path) -> None:
        seed_stage(cfg.seed, key)
        model, meta = load_checkpoint(upstream.path)
        example = torch.zeros(1, data.in_channels, data.image_size, data.image_size)
        context = PruneContext.from_stage(example, scores_dir=scores.path if scores else None,
                                          device=device or torch.device("cpu"), seed=stage_seed(cfg.seed, key))
        info = prune_model(model, cfg.prune, context)
        log_layer_table(info)
        save_checkpoint(model, work, arch=meta["arch"], history=info.get("history", []),
                        extra={"prune": {k: v for k, v in info.items() if k != "history"}})
    return build


def finetune_stage(cfg, data, upstream: StageResult, key, device):
    def build(work: Path) -> None:
        generator = seed_stage(cfg.seed, key)
        model, meta = load_checkpoint(upstream.path)
        model.to(device)
        history = train_model(model, cfg.finetune, "finetune", data, cfg, device=device, work=work,
                              generator=generator, stage="finetune", hooks=finetune_hooks(model, meta))
        save_derived(model, work, meta, finetune_log=history)
    return build


def save_derived(model: torch.nn.Module, work: Path, meta: dict, **records) -> None:
    """Save a stage's model with its upstream checkpoint's metadata (arch, pruning history, records
    such as ``prune``) plus this stage's ``records``; drop the epoch checkpoints kept for resume."""
    kept = {k: v for k, v in meta.items() if k not in RESERVED_KEYS}
    save_checkpoint(model.cpu(), work, arch=meta["arch"], history=meta["pruning_history"], extra={**kept, **records})
    shutil.rmtree(work / "epochs", ignore_errors=True)


def quant_stage(cfg, data, upstream: StageResult, key, device):
    """Fake-quantise the (pruned) model, calibrate on training images; QAT then trains it with the one loop."""
    def build(work: Path) -> None:
        generator = seed_stage(cfg.seed, key)
        model, meta = load_checkpoint(upstream.path)
        model.to(device)
        calibration = quantize_and_calibrate(model, cfg.quant, data.train_x, seed=cfg.seed, device=device)
        qat_log = []
        if cfg.quant.method == "qat" and int(cfg.quant.train.epochs) > 0:
            qat_log = train_model(model, cfg.quant.train, "quant.train", data, cfg, device=device, work=work,
                                  generator=generator, stage="qat", hooks=finetune_hooks(model, meta))
        save_derived(model, work, meta, quant_calibration=calibration, qat_log=qat_log)
    return build


def eval_stage(cfg, data, upstream: StageResult, key, device):
    def build(work: Path) -> None:
        seed_stage(cfg.seed, key)
        model, _ = load_checkpoint(upstream.path)
        model.to(device).eval()
        metrics = evaluate_robustness(model, data.test_x, data.test_y, cfg.eval, device=device,
                                      seed=cfg.seed, progress=not cfg.quiet)
        atomic_write_json(work / "eval.json", metrics)
    return build


def run(cfg: DictConfig, run_dir: Path, *, choices: dict | None = None) -> dict:
    """Run the whole pipeline for one config; writes config.yaml, metrics.json and the checkpoint to run_dir."""
    started = time.perf_counter()
    validate(cfg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    run_dir = Path(run_dir)
    log.info("run dir %s, device %s", run_dir, device)
    data = build_data(cfg.dataset, cache_dir=cfg.data.cache_dir)
    arch = architecture(cfg, data)
    cache = StageCache(Path(cfg.cache_dir), enabled=bool(cfg.cache), scratch=run_dir / "stages")
    version = robprune.__version__

    k_train = config_hash("train", version, without(cfg.dataset, "download"), cfg.model, cfg.train,
                          cfg.data.batch_size, cfg.train_seed)
    trained = cache.get("train", k_train, train_stage(cfg, data, arch, k_train, device))
    scores = cached_scores(cfg, data, trained, cache, device)
    k_prune = config_hash("prune", trained.key, cfg.prune, cfg.seed, *([scores.key] if scores else []))
    pruned = cache.get("prune", k_prune, prune_stage(cfg, data, trained, k_prune, device, scores))
    stages = [trained, *([scores] if scores else []), pruned]
    if spec_from_config(cfg.get("quant")) is not None:  # quant=none adds no stage
        k_quant = config_hash("quant", pruned.key, cfg.quant, cfg.data.batch_size, cfg.seed)
        stages.append(cache.get("quant", k_quant, quant_stage(cfg, data, pruned, k_quant, device)))
    if int(cfg.finetune.epochs) > 0:
        k_ft = config_hash("finetune", stages[-1].key, cfg.finetune, cfg.data.batch_size, cfg.seed)
        stages.append(cache.get("finetune", k_ft, finetune_stage(cfg, data, stages[-1], k_ft, device)))
    final = stages[-1]
    k_eval = config_hash("eval", final.key, without(cfg.eval, "latency"), cfg.seed)  # latency is measured per run
    evaluated = cache.get("eval", k_eval, eval_stage(cfg, data, final, k_eval, device))
    stages.append(evaluated)
    for s in stages:
        log.info("stage %-8s %s %s", s.name, s.key, "reused from cache" if s.reused else f"built in {s.seconds:.1f} s")

    metrics = assemble_metrics(cfg, data, stages, pruned, final, evaluated, choices, device)
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    # Results are written only now, each file atomically: a run that fails earlier leaves an
    # earlier finished result in the same directory untouched.
    publish_files(final.path, run_dir, CHECKPOINT_FILES)
    if scores:  # scores.json, scores.md, mrs.png: the per-layer MRS behind this run's ratios
        publish_files(scores.path, run_dir, [f for f in SCORES_FILES if (scores.path / f).exists()])
    metrics["size_bytes"] = checkpoint_size_bytes(run_dir)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


def assemble_metrics(cfg, data, stages, pruned: StageResult, final: StageResult, evaluated: StageResult,
                     choices, device) -> dict:
    """metrics.json content: the eval stage's numbers plus size, cost and provenance of the final model."""
    import json

    model, meta = load_checkpoint(final.path)
    prune_info = meta.get("prune") or json.loads((pruned.path / "model.json").read_text()).get("prune", {})
    metrics = json.loads((evaluated.path / "eval.json").read_text())
    metrics.update(measure(model, meta, data, cfg))
    metrics.update({
        "sparsity": float(prune_info.get("sparsity", 0.0)),
        "structured": bool(prune_info.get("structured", True)),
        "channel_ratio": prune_info.get("channel_ratio"),
        "prune_layers": prune_info.get("layers", []),
        "choices": dict(choices or {}), "seed": int(cfg.seed), "train_seed": int(cfg.train_seed), "device": str(device),
        "dataset": {"name": cfg.dataset.name, "n_train": len(data.train_y), "n_test": len(data.test_y)},
        "stages": {s.name: s.record() for s in stages},
        "version": robprune.__version__, "attack_compat": attack_compat(cfg),
    })
    return metrics
