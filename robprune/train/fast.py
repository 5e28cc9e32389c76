"""What the fast recipes add to the one training loop (docs/methods/recipes.md#fast-recipes), as training hooks:

- :class:`Lookahead`: airbench's weight averaging (Jordan 2024, arXiv 2404.00498, "Lookahead"): from epoch
  ``start_epochs`` on, every ``every`` steps the running average θ̄ ← ρθ̄ + (1 − ρ)θ is updated and copied back
  into the model (θ ← θ̄), with ρ = base^every · (t/T)^power warming up over the T steps of training; after each
  epoch the model is set to θ̄. Because θ = θ̄ at every epoch's end, an epoch checkpoint holds the average
  too and a resumed run continues bit-exactly.
- :class:`OverfitMonitor`: Wong, Rice & Kolter 2020 ("Fast is better than free", §5) watch for catastrophic
  overfitting of FGSM training — PGD accuracy collapsing within an epoch while FGSM accuracy rises — on a
  fixed batch of training examples after every epoch. The monitor records ``monitor_fgsm_acc`` and
  ``monitor_pgd_acc`` in each epoch's log row; the check on those rows is
  :func:`robprune.evaluate.checks.overfitting_check` (every run's ``checks``).

Both are declared once here (:class:`LookaheadOptions`, :class:`MonitorOptions`): the ``train.lookahead`` and
``train.monitor`` nodes of any train/finetune recipe, absent or ``every: 0`` / ``n_examples: 0`` = off.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from robprune.errors import ConfigError
from robprune.options import Float, Int, check_fields, option

log = logging.getLogger("robprune")


@dataclass(frozen=True)
class LookaheadOptions:
    """A train node's ``lookahead`` options (airbench94's ``ema`` hyperparameters are the defaults)."""

    every: int = option(0, Int(0, example="5"), help="steps between two averaging steps; 0 = off (airbench: 5)")
    start_epochs: int = option(3, Int(0, example="3"), help="epochs before the average starts (airbench: 3)")
    decay_base: float = option(0.95, Float(0, high=1, example="0.95"), help="per-step decay; ρ = decay_base^every · (t/T)^decay_power")
    decay_power: float = option(3.0, Float(0, example="3"), help="warm-up of ρ over training, (t/T)^decay_power (airbench: 3)")


@dataclass(frozen=True)
class MonitorOptions:
    """A train node's ``monitor`` options: the catastrophic-overfitting watch (Wong et al. 2020, §5)."""

    n_examples: int = option(0, Int(0, example="512"), help="training examples attacked after every epoch (a fixed, "
                             "seeded subset); 0 = off")
    pgd_steps: int = option(10, Int(1, example="10"), help="PGD steps of the monitor's attack (step 2.5·ε/steps, random start)")
    batch_size: int = option(256, Int(1, example="256"), help="examples per attack batch")
    eps: float | None = option(None, Float(0, low_open=True, null=True, example="0.03137"),
                               help="L∞ budget of both attacks in pixels (the recipes set ${dataset.eps})")


def options(cls, node, path: str):
    """``node`` (a DictConfig, dict or None) as ``cls``, every key checked against its declaration."""
    values = dict(node.items()) if node is not None else {}
    unknown = sorted(set(values) - set(cls.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]} is not a key of {path}; keys: {', '.join(cls.__dataclass_fields__)}")
    opts = cls(**values)
    check_fields(opts, path)
    return opts


class Lookahead:
    """The averaging hook (module docstring). steps_per_epoch, epochs: T = ceil(steps_per_epoch · epochs)."""

    def __init__(self, opts: LookaheadOptions, model: nn.Module, steps_per_epoch: int, epochs: int):
        self.opts, self.model = opts, model
        self.steps_per_epoch, self.total = int(steps_per_epoch), max(1, math.ceil(steps_per_epoch * epochs))
        self.step, self.epoch, self.average = 0, 0, None

    def _floats(self):
        return [t for t in self.model.state_dict().values() if t.is_floating_point()]

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch, self.step = epoch, epoch * self.steps_per_epoch
        if self.average is None and epoch > self.opts.start_epochs:  # after a resume: θ = θ̄ at an epoch's end
            self.average = [t.detach().clone() for t in self._floats()]

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        self.step += 1
        if self.epoch < self.opts.start_epochs or self.step % self.opts.every:
            return
        if self.average is None:
            self.average = [t.detach().clone() for t in self._floats()]
            return
        rho = self.opts.decay_base ** self.opts.every * (self.step / self.total) ** self.opts.decay_power
        for avg, current in zip(self.average, self._floats()):
            avg.lerp_(current, 1.0 - rho)
            current.copy_(avg)

    @torch.no_grad()
    def after_epoch(self, model: nn.Module) -> None:
        if self.average is not None:
            for avg, current in zip(self.average, self._floats()):
                current.copy_(avg)


class OverfitMonitor:
    """After every epoch: accuracy of ``model`` (eval mode, no gradient to the weights) on a fixed batch of
    training examples under ``fgsm`` and ``pgd`` (callables ``(model, x, y) -> x_adv``; the stage binds them at
    the dataset's ε). x: (n, C, H, W) in [0, 1], y: (n,). Both attacks draw from their own seeded generator,
    so the training's random stream is the same with the monitor on or off."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, fgsm: Callable, pgd: Callable, batch_size: int):
        self.model, self.x, self.y = model, x, y
        self.fgsm, self.pgd, self.batch_size = fgsm, pgd, int(batch_size)

    def _accuracy(self, attack: Callable, **kwargs) -> float:
        correct = 0
        for xs, ys in zip(self.x.split(self.batch_size), self.y.split(self.batch_size)):
            x_adv = attack(self.model, xs, ys, **kwargs)
            with torch.no_grad():
                correct += int((self.model(x_adv).argmax(1) == ys).sum())
        return correct / max(1, len(self.y))

    def on_epoch_end(self, row: dict) -> None:
        was_training = self.model.training
        self.model.eval()
        grads = [p.requires_grad for p in self.model.parameters()]
        for p in self.model.parameters():
            p.requires_grad_(False)
        try:
            device = next(self.model.parameters()).device
            self.x, self.y = self.x.to(device), self.y.to(device)
            row["monitor_fgsm_acc"] = self._accuracy(self.fgsm)
            # the same random starts every epoch (and after a resume): epochs differ by the weights only
            row["monitor_pgd_acc"] = self._accuracy(self.pgd, generator=torch.Generator(device).manual_seed(0))
            log.info("epoch %d: on %d training examples, FGSM accuracy %.1f%%, PGD-%s accuracy %.1f%%", row.get("epoch", 0),
                     len(self.y), 100 * row["monitor_fgsm_acc"], getattr(self.pgd, "keywords", {}).get("steps", "?"),
                     100 * row["monitor_pgd_acc"])
        finally:
            for p, g in zip(self.model.parameters(), grads):
                p.requires_grad_(g)
            self.model.train(was_training)
