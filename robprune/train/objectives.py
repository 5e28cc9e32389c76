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

from robprune.errors import ConfigError


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


def check_adv_ratio(adv_ratio: float) -> float:
    """ConfigError unless 0 < adv_ratio <= 1 (MRPF §2 step 6: fraction of each batch made adversarial)."""
    if not 0.0 < float(adv_ratio) <= 1.0:
        raise ConfigError(f"objective.adv_ratio must be in (0, 1], got {adv_ratio}; e.g. finetune.objective.adv_ratio=0.5")
    return float(adv_ratio)


def n_adversarial(batch: int, adv_ratio: float) -> int:
    """How many of a batch's examples are made adversarial: round(adv_ratio · N), at least 1. The loader
    shuffles, so the first n are a random subset."""
    return max(1, min(batch, round(adv_ratio * batch)))


def ramp_scale(epoch: int, ramp_epochs: float) -> float:
    """ε multiplier min(1, (epoch+1)/R) of a linear ε ramp over R epochs (1 when R = 0)."""
    return min(1.0, (epoch + 1) / ramp_epochs) if ramp_epochs > 0 else 1.0


def adversarial_mix(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv_ratio: float,
                    make: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """x with its first round(adv_ratio·N) examples replaced by ``make(x[:k], y[:k])``, run with the model
    in eval mode (MRPF §2 step 6 ``adv_ratio``; the loader shuffles, so the first k are a random subset)."""
    k = n_adversarial(len(y), adv_ratio)
    with eval_mode(model):
        x_adv = make(x[:k], y[:k])
    return x_adv if k == len(y) else torch.cat([x_adv, x[k:]])


def ramped(attack: Callable, epoch: int, ramp_epochs: float) -> Callable:
    """``attack`` with eps (and step_size) scaled by :func:`ramp_scale` (methods.md §6: without a
    ramp, PGD-AT of cnn8 on MNIST stalls at chance). Only partials with an ``eps`` keyword are scaled."""
    scale = ramp_scale(epoch, ramp_epochs)
    if scale >= 1.0 or not isinstance(attack, functools.partial) or "eps" not in attack.keywords:
        return attack
    kw = dict(attack.keywords)
    kw["eps"] = kw["eps"] * scale
    if kw.get("step_size") is not None:
        kw["step_size"] = kw["step_size"] * scale
    return functools.partial(attack.func, *attack.args, **kw)


@dataclass
class PGDAT:
    """PGD adversarial training (Madry et al. 2018, Eq. 2.1: min_θ E max_{‖δ‖≤ε} L(θ, x+δ, y)).

    attack: a bound attack ``(model, x, y) -> x_adv`` (e.g. PGD-10 at the dataset's ε).
    eps_ramp_epochs: ε grows linearly from ε/R to ε over the first R epochs. 0 = no ramp.
    adv_ratio: fraction of each batch replaced by its adversarial examples (1 = all; MRPF §2 step 6).
    """

    attack: Callable
    eps_ramp_epochs: float = 0.0
    adv_ratio: float = 1.0
    _epoch: int = 0

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch

    def current_attack(self) -> Callable:
        return ramped(self.attack, self._epoch, self.eps_ramp_epochs)

    def adversarial_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x with the first round(adv_ratio·N) examples attacked by the (ramped) bound attack."""
        attack = self.current_attack()
        return adversarial_mix(model, x, y, self.adv_ratio, lambda xs, ys: attack(model, xs, ys))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(self.adversarial_batch(model, x, y)), y)


def standard() -> Standard:
    return Standard()


def pgd_at(*, attack: Callable, eps_ramp_epochs: float = 0.0, adv_ratio: float = 1.0) -> PGDAT:
    return PGDAT(attack=attack, eps_ramp_epochs=eps_ramp_epochs, adv_ratio=check_adv_ratio(adv_ratio))


def trades_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """TRADES (Zhang et al. 2019, Eq. 5; their ``trades_loss``): CE(f(x), y) + β · (1/N) Σ_i KL(f(x_i) ‖ f(x'_i)),
    f = softmax of the logits. logits_nat, logits_adv: (N, K); y: (N,)."""
    natural = F.cross_entropy(logits_nat, y)
    robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="sum") / len(y)
    return natural + beta * robust


def mart_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """MART (Wang et al. 2020, Eq. 9; their ``mart_loss``): BCE(p(x'), y) + β · (1/N) Σ_i KL(p(x_i) ‖ p(x'_i)) · (1 − p_y(x_i)),
    BCE(p, y) = −log p_y − log(1 − max_{k≠y} p_k) (the boosted CE of Eq. 6). logits: (N, K); y: (N,).
    The 1e-12 / 1.0001 / 1.0000001 guards are the authors' code's."""
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    other = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])  # most likely wrong class
    bce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), other)
    nat_probs = F.softmax(logits_nat, dim=1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(1)
    return bce + beta * (kl * (1.0000001 - true_probs)).sum() / len(y)


def kl_adversary(model: nn.Module, x: torch.Tensor, *, eps: float, steps: int, step_size: float, norm: str = "linf") -> torch.Tensor:
    """TRADES' inner maximisation (Zhang et al. 2019, Eq. 5, their code): x' = x + 0.001·N(0, I), then
    ``steps`` ascent steps on KL(f(x) ‖ f(x')) with the threat model's step and projection, clamped to
    [0, 1]. x: (N, C, H, W) in [0, 1]; eps, step_size in pixels. Input gradients only
    (torch.autograd.grad), so parameter ``.grad`` is untouched; run it with the model in eval mode."""
    from robprune.attacks.threat import make_ball

    ball = make_ball(norm, eps)
    with torch.no_grad():
        p_nat = F.softmax(model(x), dim=1)
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(int(steps)):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_nat, reduction="sum")
            (grad,) = torch.autograd.grad(kl, [x_adv])
        x_adv = ball.project(ball.step(x_adv.detach(), grad, step_size), x).clamp(0.0, 1.0)
    return x_adv.clamp(0.0, 1.0).detach()


@dataclass
class TRADES:
    """TRADES objective: :func:`trades_loss` on x' from :func:`kl_adversary`. eps/step_size in pixels
    (step_size None = eps/4), ramped like PGD-AT over ``eps_ramp_epochs``; adv_ratio: the first
    round(adv_ratio·N) examples of each (shuffled) batch get x', the rest keep x' = x."""

    beta: float
    eps: float
    steps: int = 10
    step_size: float | None = None
    norm: str = "linf"
    eps_ramp_epochs: float = 0.0
    adv_ratio: float = 1.0
    _epoch: int = 0

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scale = ramp_scale(self._epoch, self.eps_ramp_epochs)
        step = self.eps / 4 if self.step_size is None else self.step_size
        x_mix = adversarial_mix(model, x, y, self.adv_ratio, lambda xs, _: kl_adversary(
            model, xs, eps=self.eps * scale, steps=self.steps, step_size=step * scale, norm=self.norm))
        return trades_loss(model(x), model(x_mix), y, self.beta)


@dataclass
class MART(PGDAT):
    """MART objective: :func:`mart_loss` on x' from the bound CE attack (PGD), with PGD-AT's ε ramp and
    adv_ratio (the first round(adv_ratio·N) examples get x', the rest keep x' = x)."""

    beta: float = 6.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return mart_loss(model(x), model(self.adversarial_batch(model, x, y)), y, self.beta)


def _check_beta(beta: float) -> float:
    if beta < 0:
        raise ConfigError(f"objective.beta must be >= 0, got {beta}; e.g. finetune.objective.beta=6")
    return float(beta)


def trades(*, beta: float, eps: float, steps: int = 10, step_size: float | None = None, norm: str = "linf",
           eps_ramp_epochs: float = 0.0, adv_ratio: float = 1.0) -> TRADES:
    from robprune.attacks.common import check_choice, check_eps, check_min

    check_choice(norm, "objective.norm", ("linf", "l2"))
    return TRADES(beta=_check_beta(beta), eps=check_eps(eps), steps=check_min(int(steps), "objective.steps", 1),
                  step_size=step_size, norm=norm, eps_ramp_epochs=eps_ramp_epochs, adv_ratio=check_adv_ratio(adv_ratio))


def mart(*, attack: Callable, beta: float = 6.0, eps_ramp_epochs: float = 0.0, adv_ratio: float = 1.0) -> MART:
    return MART(attack=attack, eps_ramp_epochs=eps_ramp_epochs, adv_ratio=check_adv_ratio(adv_ratio), beta=_check_beta(beta))
