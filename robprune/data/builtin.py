"""Datasets that need no files: scikit-learn's 8x8 ``digits`` and seeded ``synthetic`` noise."""
from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

from robprune.config import require_positive
from robprune.data.source import Arrays, Source, get
from robprune.options import Int
from robprune.registry import DATASETS

_DIGITS_TEST_EVERY = 5  # every 5th image of each class is a test image -> an exact, stratified 80/20 split


def _digits_split_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean (N,) mask of test images: positions 4, 9, 14, ... within each class, in file order.

    Deterministic without any RNG (so it cannot change with numpy/torch versions) and stratified:
    each class gives floor(n_c / 5) test images -> 1442 train / 355 test of the 1797 images.
    """
    mask = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        mask[idx[_DIGITS_TEST_EVERY - 1::_DIGITS_TEST_EVERY]] = True
    return mask


def _digits(cfg: DictConfig, split: str, files: list) -> Arrays:
    """x (N, 1, 8, 8) uint8 = round(v * 255 / 16) of the 0..16 pixel counts, y (N,) int64 digits."""
    from sklearn.datasets import load_digits

    bunch = load_digits()  # ships inside scikit-learn: no download
    pixels = np.round(bunch.images * 255.0 / 16.0).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    keep = _digits_split_mask(labels) == (split == "test")
    return torch.from_numpy(pixels[keep].copy()), torch.from_numpy(labels[keep].copy())


def _synthetic(cfg: DictConfig, split: str, files: list) -> Arrays:
    """Uniform random uint8 images and uniform random labels; the same seed gives the same tensors.

    Train and test use different streams (seed*2 and seed*2+1) so they never share images.
    """
    count = int(get(cfg, f"num_{split}"))
    require_positive(count, f"dataset.num_{split}")
    channels = int(require_positive(int(get(cfg, "channels")), "dataset.channels"))
    size = int(require_positive(int(get(cfg, "image_size")), "dataset.image_size"))
    classes = int(require_positive(int(get(cfg, "num_classes")), "dataset.num_classes"))
    gen = torch.Generator().manual_seed((int(get(cfg, "seed", 0)) * 2 + (split == "test")) % 2**63)
    x = torch.randint(0, 256, (count, channels, size, size), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, classes, (count,), generator=gen, dtype=torch.int64)
    return x, y


DIGITS = Source(splits=lambda cfg: ("train", "test"), decode=_digits)
SYNTHETIC = Source(splits=lambda cfg: ("train", "test"), decode=_synthetic)

DATASETS.add("digits", DIGITS, modality="image", files=False)  # scikit-learn's bundled copy: no dataset.root
DATASETS.add("synthetic", SYNTHETIC, modality="image", files=False, keys={  # the keys only it reads
    "num_train": Int(1, example="1024"), "num_test": Int(1, example="256"), "channels": Int(1, example="3"),
    "image_size": Int(1, example="32"), "seed": Int(example="0")})
