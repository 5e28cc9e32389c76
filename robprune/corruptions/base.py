"""What every corruption receives: seeded random draws and the size context (how CIFAR-10-C's 32-pixel
parameters scale to other images)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

CIFAR_SIZE = 32  # make_cifar_c.py's parameters are for 32x32 images


class Draws:
    """Random numbers for one batch from a seeded CPU ``torch.Generator``, moved to ``device``.

    Drawing on the CPU makes the corrupted images the same on every device for a given seed."""

    def __init__(self, seed: int, device: torch.device | str = "cpu"):
        self.generator = torch.Generator().manual_seed(int(seed))
        self.device = torch.device(device)

    def normal(self, shape, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
        return torch.empty(shape).normal_(mean, std, generator=self.generator).to(self.device)

    def uniform(self, shape, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return torch.empty(shape).uniform_(low, high, generator=self.generator).to(self.device)

    def integers(self, low: int, high: int, shape) -> torch.Tensor:
        """Integers in [low, high) (numpy's randint convention)."""
        return torch.randint(low, high, shape, generator=self.generator).to(self.device)

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        return torch.poisson(rates.detach().float().cpu(), generator=self.generator).to(self.device)


@dataclass(frozen=True)
class Context:
    """scale: max(1, min(H, W) / 32), the factor applied to CIFAR-10-C's spatial parameters (blur radii
    and sigmas, motion lengths, glass displacement, spatter and snow blurs, elastic sizes, frost texture
    zoom). Smaller images keep the 32-pixel values: shrunk below a pixel, blurs vanish on the pixel
    grid and the severities lose their order (defocus at 8x8 with a scale of 1/4 was measured weaker
    at severity 5 than at 1). textures: (T, 3, S, S) frost textures in [0, 1], or None (procedural)."""

    scale: float
    textures: torch.Tensor | None = None

    @staticmethod
    def of(x: torch.Tensor, textures: torch.Tensor | None = None) -> "Context":
        return Context(max(1.0, min(x.shape[-2:]) / CIFAR_SIZE), textures)

    def px(self, value: float) -> float:
        """A CIFAR-10-C length in pixels, scaled to these images."""
        return value * self.scale
