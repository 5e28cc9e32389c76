"""Threat models: the ε-ball an attack searches, as a small object (MadryLab ``robustness`` style).

Each ball knows three things: a random start inside it, one ascent step, and the projection back.
One PGD loop (:mod:`robprune.attacks.pgd`) serves every norm through this interface.

Shapes: x, x_adv, grad are (N, C, H, W); ``eps`` and ``step_size`` are floats in pixel units, or
(1, C, 1, 1) tensors when a compatibility mode gives every channel its own budget.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

Budget = float | torch.Tensor  # scalar, or (1, C, 1, 1) per-channel (compat modes only)


def _per_example(t: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, 1, 1, 1)-style view for broadcasting a per-example scalar back over x."""
    return t.view(-1, *([1] * 3))


def l2_norm(delta: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm. delta: (N, C, H, W) -> (N,)."""
    return delta.flatten(1).norm(dim=1)


def linf_norm(delta: torch.Tensor) -> torch.Tensor:
    """Per-example L∞ norm. delta: (N, C, H, W) -> (N,)."""
    return delta.flatten(1).abs().amax(dim=1) if delta.numel() else delta.new_zeros(delta.shape[0])


@dataclass(frozen=True)
class LinfBall:
    """{x' : ‖x' − x‖∞ ≤ eps}; steps along sign(grad) (Madry et al. 2018, eq. 2)."""

    eps: Budget

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Uniform draw from the box around x (not yet clamped to [0, 1])."""
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + (2 * u - 1) * self.eps

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, step_size: Budget) -> torch.Tensor:
        return x_adv + step_size * grad.sign()

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        if isinstance(self.eps, torch.Tensor):  # per-channel budget: clamp() wants scalars
            return x + torch.maximum(torch.minimum(delta, self.eps), -self.eps)
        return x + delta.clamp(-self.eps, self.eps)

    @staticmethod
    def norm(delta: torch.Tensor) -> torch.Tensor:
        return linf_norm(delta)


@dataclass(frozen=True)
class L2Ball:
    """{x' : ‖x' − x‖₂ ≤ eps}; steps along grad/‖grad‖₂ (normalised steepest ascent)."""

    eps: float

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Uniform direction, radius eps·U^(1/d): a uniform draw from the ball, so radius ≤ eps."""
        n, d = x.shape[0], x[0].numel()
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / (_per_example(l2_norm(direction)) + 1e-12)
        u = torch.rand(n, generator=generator, device=x.device, dtype=x.dtype)
        return x + direction * _per_example(self.eps * u.pow(1.0 / d))

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        # 1e-12 keeps a zero gradient (masked or saturated) from producing NaN: it simply does not move
        return x_adv + step_size * grad / (_per_example(l2_norm(grad)) + 1e-12)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        scale = (self.eps / (l2_norm(delta) + 1e-12)).clamp(max=1.0)
        return x + delta * _per_example(scale)

    @staticmethod
    def norm(delta: torch.Tensor) -> torch.Tensor:
        return l2_norm(delta)


NORMS = ("linf", "l2")


def normal_start(x: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    """x + std·N(0, I), TRADES' start (Zhang et al. 2019, their code: 0.001·randn), for every norm.
    Neither projected nor clamped (their code takes the first gradient there); x: (N, C, H, W)."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + std * noise


def make_ball(norm: str, eps: Budget) -> LinfBall | L2Ball:
    """Threat model for a validated norm name ('linf' | 'l2')."""
    return LinfBall(eps) if norm == "linf" else L2Ball(eps)
