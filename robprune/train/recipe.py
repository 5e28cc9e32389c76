"""Build (objective, optimizer) from a ``conf/train`` or ``conf/finetune`` node, and the lr schedule."""
from __future__ import annotations

import math
from typing import Callable

from omegaconf import DictConfig
from torch import nn

from robprune.config import instantiate, require_positive
from robprune.errors import ConfigError
from robprune.train.sharpness import wrap

SCHEDULES = ("constant", "cosine", "step", "linear", "triangle")
TRIANGLE = {"start": 0.2, "peak": 0.23, "end": 0.07}  # airbench94's lr_schedule = triangle(start=0.2, end=0.07, peak=0.23)


def build_training(cfg: DictConfig, model: nn.Module, key: str) -> tuple[Callable, object]:
    """cfg: a train/finetune node; key: its config path for messages ('train' or 'finetune')."""
    require_positive(cfg.epochs, f"{key}.epochs", allow_zero=True)
    for part in ("objective", "optimizer", "schedule"):
        if part not in cfg:
            raise ConfigError(f"{key}.{part} is not set but {key}.epochs={cfg.epochs}; pick a recipe with "
                              f"{key}=pgd_at or {key}=standard, or set {key}.epochs=0")
    objective = instantiate(cfg.objective, f"{key}.objective")
    make_optimizer = instantiate(cfg.optimizer, f"{key}.optimizer")
    require_positive(cfg.optimizer.lr, f"{key}.optimizer.lr")
    optimizer = wrap(cfg, model, make_optimizer(param_groups(cfg, model, key)), key)  # SAM / ASAM / AdaSAP when asked
    if cfg.schedule.name not in SCHEDULES:
        raise ConfigError(f"{key}.schedule.name must be one of {', '.join(SCHEDULES)}, got {cfg.schedule.name!r}")
    return objective, optimizer


def param_groups(cfg: DictConfig, model: nn.Module, key: str):
    """What the optimizer is built with: ``model.parameters()``, or with ``norm_bias_lr_scale`` = s two groups —
    the normalisation layers' biases at lr·s and weight decay wd/s (so their decay per step, lr·wd, is unchanged),
    and everything else as configured (airbench's ``bias_scaler``, docs/methods/recipes.md#fast-recipes)."""
    scale = cfg.get("norm_bias_lr_scale")
    if scale is None:
        return model.parameters()
    require_positive(scale, f"{key}.norm_bias_lr_scale")
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    norm_biases = {id(m.bias) for m in model.modules() if isinstance(m, norm_types) and getattr(m, "bias", None) is not None}
    biases = [p for p in model.parameters() if id(p) in norm_biases]
    others = [p for p in model.parameters() if id(p) not in norm_biases]
    if not biases:  # a model without normalisation layers: nothing to scale
        return model.parameters()
    lr, wd = float(cfg.optimizer.lr) * float(scale), float(cfg.optimizer.get("weight_decay") or 0.0) / float(scale)
    return [{"params": others}, {"params": biases, "lr": lr, "weight_decay": wd}]  # logs show group 0's lr


def per_step(schedule: DictConfig) -> bool:
    """Does the schedule change the lr within an epoch (``linear``, ``triangle``) rather than once per epoch?"""
    return str(schedule.name) in ("linear", "triangle")


def schedule_factor(schedule: DictConfig, epoch: float, epochs: int) -> float:
    """Multiplier on the base lr for 0-based ``epoch`` (set once per epoch; ``linear`` takes the
    fractional epoch of each step)."""
    if schedule.name == "linear":  # BERT's schedule (Devlin et al. 2019): linear warm-up, then linear decay to 0
        t, warmup = float(epoch) / max(1, epochs), float(schedule.get("warmup", 0.0))
        if t < warmup:
            return t / warmup  # 0 at the first step, as transformers' get_linear_schedule_with_warmup
        return max(0.0, (1.0 - t) / (1.0 - warmup)) if warmup < 1 else 1.0
    if schedule.name == "triangle":  # airbench (Jordan 2024): linear from `start` up to 1 at `peak`, then down to `end`
        t = min(1.0, float(epoch) / max(1, epochs))
        start, peak, end = (float(schedule.get(k, v)) for k, v in TRIANGLE.items())
        if t < peak:
            return start + (1.0 - start) * t / peak
        return 1.0 + (end - 1.0) * (t - peak) / (1.0 - peak) if peak < 1 else 1.0
    if schedule.name == "cosine":  # Loshchilov & Hutter 2017 (SGDR), Eq. 5 without restarts, per epoch
        return 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, epochs)))
    if schedule.name == "step":
        return float(schedule.gamma) ** sum(1 for m in schedule.milestones if epoch >= int(m))
    return 1.0


def merge_recipe(base, entry: dict) -> DictConfig:
    """A train node with ``entry``'s keys over ``base`` (a weight-average ingredient's recipe): nested nodes
    merge key by key, except a node with its own ``_target_`` (another objective or optimizer), which
    replaces the base node whole so none of the old callable's parameters linger."""
    from omegaconf import OmegaConf

    def merge(into: dict, update: dict) -> dict:
        out = dict(into)
        for key, value in update.items():
            if isinstance(value, dict) and "_target_" not in value and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    plain = OmegaConf.to_container(base, resolve=True) if OmegaConf.is_config(base) else dict(base)
    return OmegaConf.create(merge(plain, entry))
