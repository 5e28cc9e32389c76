"""Small tensor helpers every consumer of a :class:`~robprune.data.DataBundle` shares: uint8 images to
[0, 1] pixels, and seeded index subsets (evaluation subsets, PTQ calibration, MRS calibration)."""
from __future__ import annotations

import torch

from robprune.errors import DataError


def as_pixels(x: torch.Tensor, *, what: str = "images") -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float input is checked to lie in [0, 1] (DataError naming
    ``what`` otherwise: normalisation belongs in the model's first layer, not in the data)."""
    if hasattr(x, "pixels"):  # a streamed split (robprune.data.stream.StreamImages): float batches on indexing
        return x.pixels()
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    x = x.float()
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise DataError(f"{what} must be pixels in [0, 1] (or uint8), got range "
                        f"[{x.min().item():.3g}, {x.max().item():.3g}]; normalisation belongs in the model's first layer")
    return x


def seeded_indices(n: int, k: int | None, seed: int) -> torch.Tensor:
    """The first min(k, n) entries (all n when k is None) of a permutation of range(n) drawn from a
    generator seeded with ``seed`` (int64, CPU). Subsets of one seed nest: k = 100 is a prefix of k = 500."""
    perm = torch.randperm(int(n), generator=torch.Generator().manual_seed(int(seed)))
    return perm if k is None else perm[: min(int(k), int(n))]
