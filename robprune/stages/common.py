"""What several stages share: seeding, the one training loop with a train/finetune node, saving a
derived checkpoint, and the dense model's architecture record."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from robprune.checkpoint import RESERVED_KEYS, save_checkpoint
from robprune.config import to_container
from robprune.errors import ConfigError
from robprune.graph import StageContext, seed_from
from robprune.io import DamagedFile, read_sealed_json
from robprune.train import build_training, fit, per_step, schedule_factor
from robprune.train.trainer import broadcast_fit, check_objective, launched, resolve, spawn_fit, wrap_forward


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
    declare ``data.batch_size``, ``dataset.augment`` and ``trainer``. Epoch checkpoints go to work/epochs
    (resume). ``trainer`` (robprune.train.trainer) says how: data-parallel processes, bf16, channels_last,
    compile; the model comes back trained, contiguous and on ``ctx.device`` either way."""
    trainer = resolve(ctx.cfg.get("trainer"), ctx.device)
    check_objective(cfg_train, key, trainer)
    objective, optimizer = build_training(cfg_train, model, key)  # checks the recipe here, before any process starts
    epochs = int(cfg_train.epochs)
    hooks = [*hooks, *fast_hooks(model, cfg_train, key, ctx, epochs)]
    if trainer.devices > 1 and epochs > 0:
        history = _train_parallel(model, cfg_train, key, ctx, generator, list(hooks), trainer)
        for row in history if ctx.on_epoch else ():  # the ranks send their rows back at the end
            ctx.on_epoch(ctx.stage, row)
        return history
    if ctx.on_epoch is not None:
        hooks = [*hooks, EpochReport(ctx.stage, ctx.on_epoch)]
    for hook in hooks:  # hooks that need the optimizer (masks a two-pass optimizer must not perturb)
        if hasattr(hook, "bind"):
            hook.bind(optimizer, model)
    loader = ctx.data.loader(ctx.data.train_x, ctx.data.train_y, int(ctx.cfg.data.batch_size), shuffle=True,
                             generator=generator, augment=ctx.cfg.dataset.get("augment"), device=ctx.device,
                             **loader_options(cfg_train, key))
    if trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        return fit(model, loader, objective, optimizer, epochs=epochs, generator=generator,
                   lr_factor=lambda e: schedule_factor(cfg_train.schedule, e, epochs),
                   per_step=per_step(cfg_train.schedule), clip_grad_norm=cfg_train.get("clip_grad_norm"),
                   checkpoint_dir=ctx.work / "epochs", progress=ctx.progress, description=ctx.stage, hooks=hooks,
                   forward_model=wrap_forward(model, trainer, ctx.device, None),
                   autocast_dtype=trainer.autocast_dtype, channels_last=trainer.channels_last)
    finally:
        if trainer.channels_last:
            model.to(memory_format=torch.contiguous_format)


def loader_options(cfg_train, key: str) -> dict:
    """Keywords for the training loader from the recipe: ``alternate_flip`` (airbench's flips) when set."""
    return {"alternate_flip": True} if cfg_train.get("alternate_flip") else {}


def fast_hooks(model, cfg_train, key: str, ctx: StageContext, epochs: int) -> list:
    """The recipe's weight averaging (``lookahead``) and catastrophic-overfitting monitor (``monitor``) as
    training hooks (robprune.train.fast; docs/methods/recipes.md#fast-recipes); [] when both are off."""
    import functools
    import math

    from robprune.attacks import fgsm, pgd
    from robprune.train.fast import Lookahead, LookaheadOptions, MonitorOptions, OverfitMonitor, options

    hooks = []
    ahead = options(LookaheadOptions, cfg_train.get("lookahead"), f"{key}.lookahead")
    if ahead.every > 0:
        steps = math.ceil(len(ctx.data.train_y) / int(ctx.cfg.data.batch_size))
        hooks.append(Lookahead(ahead, model, steps, epochs))
    watch = options(MonitorOptions, cfg_train.get("monitor"), f"{key}.monitor")
    if watch.n_examples > 0:
        if ctx.data.modality != "image":
            raise ConfigError(f"{key}.monitor attacks images (FGSM and PGD); set {key}.monitor.n_examples=0 for text")
        n = len(ctx.data.train_y)
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:watch.n_examples].sort().values
        x = ctx.data.train_x[pick]
        x = (x.float() / 255.0) if x.dtype == torch.uint8 else x.float()
        if watch.eps is None:
            raise ConfigError(f"{key}.monitor.eps is not set; the monitor attacks at it, e.g. {key}.monitor.eps=0.03137")
        eps = float(watch.eps)
        hooks.append(OverfitMonitor(model, x, ctx.data.train_y[pick], functools.partial(fgsm, eps=eps),
                                    functools.partial(pgd, eps=eps, steps=watch.pgd_steps), watch.batch_size))
    return hooks


class EpochReport:
    """A training hook passing each epoch's log row to ``report(stage, row)`` as soon as the epoch ends."""

    def __init__(self, stage: str, report):
        self.stage, self.report = stage, report

    def on_epoch_end(self, row: dict) -> None:
        self.report(self.stage, dict(row))


def _train_parallel(model, cfg_train, key: str, ctx: StageContext, generator: torch.Generator, hooks: list,
                    trainer) -> list[dict]:
    """DistributedDataParallel in ``trainer.devices`` processes (robprune.train.trainer.spawn_fit); this
    process gets rank 0's weights and hook state back and logs its epochs."""
    done = _checkpointed_epoch(ctx.work / "epochs")
    if done:  # rank 0 resumes from it (robprune.train.fit); said here, in the run's log
        logging.getLogger("robprune").info("%s: resuming from the checkpoint after epoch %d", ctx.stage, done)
    model.to("cpu")  # sent to the ranks with the hooks in one pickle (shared parameters stay shared)
    payload = {"model": model, "hooks": hooks, "cfg_train": cfg_train, "key": key, "data": ctx.data,
               "batch_size": int(ctx.cfg.data.batch_size), "augment": ctx.cfg.dataset.get("augment"),
               "loader_options": loader_options(cfg_train, key),
               "generator_state": generator.get_state(), "seed": int(torch.initial_seed()),
               "checkpoint_dir": ctx.work / "epochs", "description": ctx.stage}
    if launched():  # torchrun's processes are the ranks
        result = broadcast_fit(payload, trainer, ctx.device)
    else:
        result = spawn_fit(payload, trainer, ctx.device, torch.get_num_threads())
    model.load_state_dict(result["state"], strict=True)
    model.to(ctx.device)
    for hook, state in zip(hooks, result["hooks"]):
        if state is not None and hasattr(hook, "load_state"):
            hook.load_state(state)
    log = logging.getLogger("robprune")
    for row in result["history"] if not launched() else ():  # under torchrun rank 0 is this process: logged already
        log.info("%s epoch %d/%d (%d ranks): loss %.4f, lr %.3g, %.1f s", ctx.stage, row["epoch"],
                 int(cfg_train.epochs), trainer.devices, row["loss"], row["lr"], row["seconds"])
    return result["history"]


def _checkpointed_epoch(directory: Path) -> int:
    try:
        return int(read_sealed_json(directory / "last.json")["epoch"])
    except (DamagedFile, KeyError, TypeError, ValueError):
        return 0


def save_derived(model: torch.nn.Module, work: Path, meta: dict, **records) -> None:
    """Save a stage's model with its upstream checkpoint's metadata (arch, pruning history, records
    such as ``prune``) plus this stage's ``records``; drop the epoch checkpoints kept for resume."""
    kept = {k: v for k, v in meta.items() if k not in RESERVED_KEYS}
    save_checkpoint(model.cpu(), work, arch=meta["arch"], history=meta["pruning_history"], extra={**kept, **records})
    shutil.rmtree(work / "epochs", ignore_errors=True)
