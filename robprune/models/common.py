from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel, as the model's first layer (buffers, so they move with .to()).

    x: (N, C, H, W) pixels in [0, 1].
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_model(model_cfg, **shape) -> nn.Module:
    """Instantiate ``model_cfg`` (a ``conf/model`` node) for a dataset's shape; architecture is fully
    determined by (model_cfg, shape), which is what checkpoints record as ``arch``. shape: for images
    ``in_channels, image_size, num_classes, mean, std``; for text ``num_classes, pad_id, vocab_size``
    (and ``hf_config`` when a checkpoint is rebuilt): whatever the data bundle's ``arch_record`` gives."""
    from robprune.config import instantiate

    shape = {k: (list(v) if isinstance(v, tuple) else v) for k, v in shape.items()}
    return instantiate(model_cfg, "model", **shape)


def flat_features(features: nn.Module, in_channels: int, image_size: int) -> int:
    """Number of features ``features`` produces for one (in_channels, image_size, image_size) input."""
    with torch.no_grad():
        return int(features(torch.zeros(1, in_channels, image_size, image_size)).flatten(1).shape[1])
