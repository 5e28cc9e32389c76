"""Training objectives: ``objective(model, x, y) -> scalar loss``.

x: (N, C, H, W) in [0, 1]; y: (N,) int64. Objectives that need the epoch (ε ramp) expose
``on_epoch_start(epoch)``, which :func:`robprune.train.fit` calls.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def eval_mode(model: nn.Module):
    """Run the attack with BN in eval mode (TRADES/MART convention), restore the previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass
class Standard:
    """Clean cross-entropy."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)


@dataclass
class PGDAT:
    """PGD adversarial training (Madry et al. 2018, Eq. 2.1: min_θ E max_{‖δ‖≤ε} L(θ, x+δ, y)).

    attack: a bound attack ``(model, x, y) -> x_adv`` (e.g. PGD-10 at the dataset's ε).
    eps_ramp_epochs: ε grows linearly from ε/R to ε over the first R epochs (methods.md §6: without a
    ramp, PGD-AT of cnn8 on MNIST stalls at chance). 0 = no ramp.
    """

    attack: Callable
    eps_ramp_epochs: float = 0.0
    _epoch: int = 0

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch

    def current_attack(self) -> Callable:
        scale = min(1.0, (self._epoch + 1) / self.eps_ramp_epochs) if self.eps_ramp_epochs > 0 else 1.0
        if scale >= 1.0 or not isinstance(self.attack, functools.partial):
            return self.attack
        kw = dict(self.attack.keywords)
        kw["eps"] = kw["eps"] * scale
        if kw.get("step_size") is not None:
            kw["step_size"] = kw["step_size"] * scale
        return functools.partial(self.attack.func, *self.attack.args, **kw)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with eval_mode(model):
            x_adv = self.current_attack()(model, x, y)
        return F.cross_entropy(model(x_adv), y)


def standard() -> Standard:
    return Standard()


def pgd_at(*, attack: Callable, eps_ramp_epochs: float = 0.0) -> PGDAT:
    return PGDAT(attack=attack, eps_ramp_epochs=eps_ramp_epochs)
