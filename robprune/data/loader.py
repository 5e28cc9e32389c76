"""BatchLoader: mini-batches straight from uint8 tensors, with vectorised crop/flip augmentation.

Reproducibility contract: every random draw (shuffle order, crop offsets, flips) comes from the
``generator`` given, and all of an epoch's draws happen when iteration starts (``iter(loader)``), so
the generator's state after an epoch has begun does not depend on how many batches were consumed.
A training loop that saves the generator state between epochs resumes bit-identically.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from robprune.errors import ConfigError

_AUGMENT_KEYS = {"crop_padding", "hflip", "resized_crop"}


def augment_options(augment: dict | DictConfig | None) -> tuple[int, bool, tuple[float, float] | None]:
    """(crop padding in pixels, hflip, RandomResizedCrop scale range or None) from a ``dataset.augment``
    node; (0, False, None) when None."""
    if augment is None:
        return 0, False, None
    opts: Any = OmegaConf.to_container(augment, resolve=True) if OmegaConf.is_config(augment) else dict(augment)
    unknown = set(opts) - _AUGMENT_KEYS
    if unknown:
        raise ConfigError(f"dataset.augment has unknown key(s) {sorted(unknown)}; allowed: {sorted(_AUGMENT_KEYS)}")
    pad = opts.get("crop_padding") or 0
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ConfigError(f"dataset.augment.crop_padding must be an integer >= 0 (pixels), got {pad!r}")
    scale = opts.get("resized_crop")
    if scale is not None:
        if (not isinstance(scale, (list, tuple)) or len(scale) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
                or not 0 < scale[0] <= scale[1] <= 1):
            raise ConfigError(f"dataset.augment.resized_crop must be [min, max] area fractions with "
                              f"0 < min <= max <= 1, e.g. [0.08, 1.0], or null; got {scale!r}")
        scale = (float(scale[0]), float(scale[1]))
    return pad, bool(opts.get("hflip") or False), scale


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-sample random crop (after zero padding) and horizontal flip, as one gather.

    x: (B, C, H, W) any dtype; offsets: (B, 2) int64 (dy, dx) in [0, 2*pad]; flips: (B,) bool.
    Returns (B, C, H, W): output pixel (i, j) of sample b is padded[b, :, dy+i, dx+j'] with
    j' = W-1-j when flipped, else j. No loop over samples.
    """
    batch, channels, height, width = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad)) if pad else x
    dev = x.device
    rows = offsets[:, :1] + torch.arange(height, device=dev)                  # (B, H)
    cols = torch.arange(width, device=dev).expand(batch, width)               # (B, W)
    cols = torch.where(flips[:, None], width - 1 - cols, cols) + offsets[:, 1:]
    b = torch.arange(batch, device=dev)[:, None, None, None]
    c = torch.arange(channels, device=dev)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


class BatchLoader:
    """Iterate ``(x, y)`` batches: x (B, C, H, W) float32 in [0, 1] and y (B,) int64, both on ``device``.

    x: (N, C, H, W) uint8 pixels; y: (N,) labels. The uint8 tensor is moved to ``device`` once (4x
    smaller than float), and each batch is gathered, augmented and divided by 255 there.
    augment: ``{crop_padding: int, hflip: bool}`` (e.g. ``dataset.augment``); None or both off: none.
    generator: CPU torch.Generator for every random draw; None uses torch's global RNG.
    alternate_flip: airbench's alternating flip (Jordan 2024, §3.6) instead of random flips: a fixed half of the
    images (seeded, independent of the run) is flipped in even epochs and the other half in odd ones, so every
    image is seen both ways every two epochs; the epoch comes from :meth:`set_epoch` (the training loop calls it).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool,
                 generator: torch.Generator | None = None, augment: dict | DictConfig | None = None,
                 device: str | torch.device = "cpu", drop_last: bool = False, alternate_flip: bool = False):
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise TypeError(f"BatchLoader needs (N, C, H, W) uint8 images, got {x.dtype} {tuple(x.shape)}")
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"BatchLoader needs (N,) labels for {len(x)} images, got shape {tuple(y.shape)}")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device, torch.int64)
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last, self.generator = shuffle, drop_last, generator
        self.pad, self.hflip, scale = augment_options(augment)
        self.alternate, self.epoch = bool(alternate_flip), 0
        if scale is not None:
            raise ConfigError("dataset.augment.resized_crop needs a streamed dataset (it crops the original images); "
                              "set dataset.storage=stream or dataset.augment.resized_crop=null")

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def alternate_flips(self, order: torch.Tensor) -> torch.Tensor:
        """(n,) bool by batch position: image i is flipped iff (i in the fixed half) XOR (epoch is odd)."""
        n = len(self.x)
        half = torch.randperm(n, generator=torch.Generator().manual_seed(0)) < n // 2
        return half[order] ^ bool(self.epoch % 2)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, gen = len(self.x), self.generator
        # All draws happen here, eagerly, on the CPU generator (see module docstring).
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=gen) if self.pad else None
        flips = torch.rand(n, generator=gen) < 0.5 if self.hflip and not self.alternate else None
        if self.alternate:
            flips = self.alternate_flips(order)
        return self._batches(order, offsets, flips)

    def _batches(self, order: torch.Tensor, offsets: torch.Tensor | None,
                 flips: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = order.to(self.device)
        augment = offsets is not None or flips is not None
        if augment:  # offsets/flips are indexed by batch position, so permutation order is kept
            n = len(order)
            offsets = (offsets if offsets is not None else torch.full((n, 2), self.pad, dtype=torch.int64)).to(self.device)
            flips = (flips if flips is not None else torch.zeros(n, dtype=torch.bool)).to(self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = self.x[idx]
            if augment:
                part = slice(i * self.batch_size, i * self.batch_size + len(idx))
                xb = crop_flip(xb, offsets[part], flips[part], self.pad)
            yield xb.float().div_(255.0), self.y[idx]
