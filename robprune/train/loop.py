"""The one training loop, with per-epoch checkpoints that make a killed run resume bit-exactly (CPU)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from robprune.io import (DamagedFile, atomic_save_sealed_tensors, atomic_write_sealed_json, load_sealed_tensors,
                         read_sealed_json, set_aside)
from robprune.ui import track

log = logging.getLogger("robprune")


@dataclass
class TrainState:
    """What an epoch checkpoint restores: the next epoch to run and the per-epoch log so far."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split an optimizer state_dict into tensors (safetensors) and plain JSON."""
    sd = optimizer.state_dict()
    tensors, plain_state = {}, {}
    for idx, slots in sd["state"].items():
        plain_state[str(idx)] = {}
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value.contiguous()  # channels_last buffers: safetensors stores dense rows
            else:
                plain_state[str(idx)][name] = value
    return tensors, {"state": plain_state, "param_groups": sd["param_groups"]}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, plain: dict) -> None:
    state = {}
    for idx, slots in plain["state"].items():
        state[int(idx)] = dict(slots)
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})


def save_epoch_checkpoint(directory: Path, model: nn.Module, optimizer, generator: torch.Generator, state: TrainState) -> None:
    """directory/last.safetensors + last.json, each sealed (its content's sha256 inside, robprune.io); JSON
    written last and naming the epoch, so a crash between the two leaves the previous pair's epoch in JSON
    and a mismatch is detected by the tensors' metadata."""
    tensors, plain = _flatten_optimizer(optimizer)
    tensors.update({f"model.{k}": v.contiguous() for k, v in model.state_dict().items()})
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.loader"] = generator.get_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    atomic_save_sealed_tensors(directory / "last.safetensors", tensors, metadata={"epoch": str(state.epoch)})
    atomic_write_sealed_json(directory / "last.json", {"epoch": state.epoch, "history": state.history, "optimizer": plain})


def load_epoch_checkpoint(directory: Path, model: nn.Module, optimizer, generator: torch.Generator) -> TrainState | None:
    """Restore model, optimizer and RNG from the last epoch checkpoint; None when there is none, it is torn
    (killed between its two files) or damaged (then both files are set aside as ``*.corrupt-<time>``)."""
    st, js = directory / "last.safetensors", directory / "last.json"
    if not (st.exists() and js.exists()):
        return None
    try:
        meta = read_sealed_json(js)
        tensors, header = load_sealed_tensors(st)
    except DamagedFile as err:
        moved = [set_aside(path).name for path in (st, js)]
        log.warning("epoch checkpoint %s is damaged (%s); moved to %s, training from the start", directory, err.reason,
                    " and ".join(moved))
        return None
    if header.get("epoch") != str(meta.get("epoch")):
        log.warning("epoch checkpoint in %s is torn (tensors and JSON disagree); starting over", directory)
        return None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    _restore_optimizer(optimizer, tensors, meta["optimizer"])
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.loader"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return TrainState(epoch=int(meta["epoch"]), history=list(meta["history"]))


def fit(model: nn.Module, loader: Iterable, objective: Callable, optimizer: torch.optim.Optimizer, *,
        epochs: int, lr_factor: Callable[[int], float], generator: torch.Generator,
        checkpoint_dir: Path | None = None, hooks: Iterable = (), progress: bool = True,
        description: str = "train", per_step: bool = False, clip_grad_norm: float | None = None,
        forward_model: nn.Module | None = None, rank=None, autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False) -> list[dict]:
    """Train ``model`` in place for ``epochs`` epochs; returns the per-epoch log.

    loader: yields (x, y) on the model's device, x in [0, 1]; its shuffling/augmentation draws from
    ``generator`` (saved in checkpoints). lr_factor(epoch) multiplies each group's base lr, set once per
    epoch; with ``per_step`` it is set before every step from the fractional epoch ``e + i / len(loader)``
    (linear warm-up and decay). clip_grad_norm: clip the gradient's global L2 norm before each step
    (for a two-pass optimizer, each pass's gradient; the first one only sets ε's direction).
    hooks: objects with optional ``on_epoch_start(epoch)``, ``after_step(model)`` (masks, observers),
    ``after_epoch(model)`` (every rank, before the checkpoint: weight averaging) and ``on_epoch_end(row)``
    (the epoch's log row, on the writing rank only: monitors that add to it, live training curves).
    checkpoint_dir: when given, a checkpoint is written after every epoch and training resumes from it.
    Steps go through ``optimizer.step(closure)`` so two-pass optimizers (SAM, ASAM) need no other loop.

    forward_model: what the objective calls (DistributedDataParallel and/or torch.compile around ``model``;
    :mod:`robprune.train.trainer`); optimizer, hooks and checkpoints keep ``model``. rank: this process's
    :class:`~robprune.train.trainer.Rank` in data-parallel training: it trains on rows rank, rank + N, ... of
    each global batch with its loss scaled by its share of the batch (so the averaged gradient is the
    global batch's), draws from a per-rank stream seeded each epoch, and only rank 0 writes checkpoints.
    autocast_dtype: run the objective under ``torch.autocast`` (bf16); channels_last: NHWC inputs.
    """
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    state = (load_epoch_checkpoint(checkpoint_dir, model, optimizer, generator) if checkpoint_dir else None) or TrainState()
    if state.epoch:
        log.info("%s: resuming from the checkpoint after epoch %d", description, state.epoch)
    hooks = [objective, model, *hooks]  # a model may take part too (airbench freezes its whitening bias after N epochs)
    forward = model if forward_model is None else forward_model
    writes = rank is None or rank.rank == 0
    device_type = next(model.parameters()).device.type
    for epoch in range(state.epoch, epochs):
        started = time.perf_counter()
        if rank is not None:  # per-rank streams for the objective's draws, the same after a resume
            torch.manual_seed(rank.epoch_seed(epoch))
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(epoch)
        _call(hooks, "on_epoch_start", epoch)
        if hasattr(loader, "set_epoch"):  # epoch-dependent augmentation (alternating flips, robprune.data.loader)
            loader.set_epoch(epoch)
        model.train()
        total, count, steps = 0.0, 0, max(1, len(loader))
        for i, (x, y, *sharded) in enumerate(track(loader, f"{description} epoch {epoch + 1}/{epochs}",
                                                   total=len(loader), enabled=progress)):
            if per_step:
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * lr_factor(epoch + i / steps)
            share = 1.0
            if rank is not None and sharded:  # a streamed loader decoded only this rank's rows (rank r::N)
                share = len(y) * rank.world / sharded[0]
            elif rank is not None:  # this rank's shard of the global batch
                n_global = len(y)
                if n_global < rank.world:
                    continue  # every rank skips it alike (each sees the global batch size)
                x, y = x[rank.rank::rank.world], y[rank.rank::rank.world]
                share = len(y) * rank.world / n_global  # DDP averages over ranks: Σ_r share_r·mean_r = global mean
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)

            def closure(x=x, y=y, share=share):
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                    loss = objective(forward, x, y)
                (loss * share if share != 1.0 else loss).backward()
                if clip_grad_norm:
                    nn.utils.clip_grad_norm_(model.parameters(), float(clip_grad_norm))
                return loss

            loss = optimizer.step(closure)
            _call(hooks, "after_step", model)
            total += float(loss.detach()) * len(y)
            count += len(y)
        _call(hooks, "after_epoch", model)  # every rank, before the checkpoint (weight averaging's copy-back)
        if rank is not None:  # the epoch's loss over all ranks' examples, as one process would log it
            import torch.distributed as dist

            sums = torch.tensor([total, float(count)], dtype=torch.float64, device=next(model.parameters()).device)
            dist.all_reduce(sums)
            total, count = float(sums[0]), int(sums[1])
        row = {"epoch": epoch + 1, "loss": total / max(1, count), "lr": optimizer.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - started, 3)}
        state.history.append(row)
        state.epoch = epoch + 1
        log.info("%s epoch %d/%d: loss %.4f, lr %.3g, %.1f s", description, epoch + 1, epochs, row["loss"], row["lr"], row["seconds"])
        if writes:
            _call(hooks, "on_epoch_end", row)
        if checkpoint_dir is not None and writes:
            save_epoch_checkpoint(checkpoint_dir, model, optimizer, generator, state)
    model.eval()
    return state.history


def _call(objects: Iterable, method: str, *args) -> None:
    for obj in objects:
        fn = getattr(obj, method, None)
        if callable(fn):
            fn(*args)
