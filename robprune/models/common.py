from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from robprune.options import Choice, Value, option

PRETRAINED = "pretrained"  # model.init=pretrained: the architecture's published weights
HEADS = ("keep", "new")


@dataclass(frozen=True)
class StartOptions:
    """Options every model node takes besides its builder's own (``MODELS.common``), declared once; what they
    do is :func:`robprune.start.load_start` (docs/how-to/start-from-a-model.md)."""

    init: str | None = option(None, Value("str", null=True, example="outputs/runs/<run>"),
                              help="starting weights: null = the builder's initialisation | a robprune run or checkpoint "
                              "folder | a .safetensors or .pt/.pth state dict (weights_only) | pretrained = the "
                              "architecture's published weights (timm, torchvision, robustbench)")
    head: str = option("keep", Choice(*HEADS), help="keep = load the classifier from model.init (class counts must match) "
                       "| new = a fresh classifier for this dataset (train it with train.epochs>0)")


START_KEYS = tuple(f.name for f in fields(StartOptions))


@dataclass(frozen=True)
class Published:
    """Published weights of an architecture (a model registration's ``pretrained`` hook returns one).

    path: the local weights file (in the package's cache; downloaded by the hook when online). mean, std:
    the normalisation they were trained with (None: the model normalises inside, e.g. RobustBench's).
    info: what to record beside robprune's own results (e.g. the zoo's published accuracies). wrappers,
    strip: dict keys and key prefixes of the file's own layout to look under and remove (besides the usual
    ones of robprune.start)."""

    path: Path
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    info: dict | None = None
    wrappers: tuple[str, ...] = ()
    strip: tuple[str, ...] = ()


def online() -> bool:
    """Whether downloads are allowed: robprune is offline unless HF_HUB_OFFLINE=0 (the same switch as the hub)."""
    return os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() in ("0", "false", "no", "")


def download(url: str, path: Path) -> Path | None:
    """``url`` to ``path`` with torch.hub's downloader (a partial file never stays); None when it fails."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except Exception:  # noqa: BLE001 - network errors come in many types
        path.unlink(missing_ok=True)
        return None
    return path


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


class NormalizedNet(nn.Module):
    """Normalize -> a network from a model package (timm, torchvision), kept as ``.net`` so that the
    package's own weights load into it by their own names (robprune.start).
    x: (N, C, H, W) pixels in [0, 1] -> (N, num_classes) logits."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x):
        return self.net(self.normalize(x))


def build_model(model_cfg, **shape) -> nn.Module:
    """Instantiate ``model_cfg`` (a ``conf/model`` node) for a dataset's shape; architecture is fully
    determined by (model_cfg, shape), which is what checkpoints record as ``arch``. shape: for images
    ``in_channels, image_size, num_classes, mean, std``; for text ``num_classes, pad_id, vocab_size``
    (and ``hf_config`` when a checkpoint is rebuilt): whatever the data bundle's ``arch_record`` gives."""
    from omegaconf import OmegaConf

    from robprune.config import instantiate

    shape = {k: (list(v) if isinstance(v, tuple) else v) for k, v in shape.items()}
    builder = {k: v for k, v in OmegaConf.to_container(OmegaConf.create(model_cfg) if isinstance(model_cfg, dict)
               else model_cfg, resolve=True).items() if k not in START_KEYS}  # init/head: robprune.start, not the builder
    return instantiate(OmegaConf.create(builder), "model", **shape)


def flat_features(features: nn.Module, in_channels: int, image_size: int) -> int:
    """Number of features ``features`` produces for one (in_channels, image_size, image_size) input."""
    with torch.no_grad():
        return int(features(torch.zeros(1, in_channels, image_size, image_size)).flatten(1).shape[1])
