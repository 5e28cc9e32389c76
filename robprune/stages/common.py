"""What several stages share: seeding, the one training loop with a train/finetune node, saving a
derived checkpoint, and the dense model's architecture record."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from robprune.checkpoint import RESERVED_KEYS, save_checkpoint
from robprune.config import to_container
from robprune.graph import StageContext, seed_from
from robprune.train import build_training, fit, per_step, schedule_factor


def seed_stage(seed: int, ctx: StageContext) -> torch.Generator:
    """Seed torch's global RNG for a stage and return the loader's generator (saved in epoch checkpoints).
    Derived from ``seed`` and the stage's semantic key, so a cached and a rebuilt stage draw the same."""
    s = seed_from(seed, ctx.seed_key)
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s + 1)


def architecture(model_cfg, data) -> dict:
    """Everything needed to rebuild the dense model; stored in model.json (the data's ``arch_record``:
    image shape and statistics, or a tokenizer's pad id and vocabulary size)."""
    return {"model": to_container(model_cfg), **data.arch_record()}


def example_inputs(data) -> torch.Tensor:
    """One example input of the data's shape: what pruning traces the dependency graph with."""
    return data.example_inputs(1)


def train_model(model, cfg_train, key: str, ctx: StageContext, generator: torch.Generator, *, hooks=()) -> list[dict]:
    """Run the one loop with a train/finetune node (``key`` names it in messages); the stage must
    declare ``data.batch_size`` and ``dataset.augment``. Epoch checkpoints go to work/epochs (resume)."""
    objective, optimizer = build_training(cfg_train, model, key)
    for hook in hooks:  # hooks that need the optimizer (masks a two-pass optimizer must not perturb)
        if hasattr(hook, "bind"):
            hook.bind(optimizer, model)
    loader = ctx.data.loader(ctx.data.train_x, ctx.data.train_y, int(ctx.cfg.data.batch_size), shuffle=True,
                             generator=generator, augment=ctx.cfg.dataset.get("augment"), device=ctx.device)
    epochs = int(cfg_train.epochs)
    return fit(model, loader, objective, optimizer, epochs=epochs, generator=generator,
               lr_factor=lambda e: schedule_factor(cfg_train.schedule, e, epochs),
               per_step=per_step(cfg_train.schedule), clip_grad_norm=cfg_train.get("clip_grad_norm"),
               checkpoint_dir=ctx.work / "epochs", progress=ctx.progress, description=ctx.stage, hooks=hooks)


def save_derived(model: torch.nn.Module, work: Path, meta: dict, **records) -> None:
    """Save a stage's model with its upstream checkpoint's metadata (arch, pruning history, records
    such as ``prune``) plus this stage's ``records``; drop the epoch checkpoints kept for resume."""
    kept = {k: v for k, v in meta.items() if k not in RESERVED_KEYS}
    save_checkpoint(model.cpu(), work, arch=meta["arch"], history=meta["pruning_history"], extra={**kept, **records})
    shutil.rmtree(work / "epochs", ignore_errors=True)
