"""SVHN (cropped digits) from the official ``<split>_32x32.mat`` files (MATLAB v5, read by scipy).

Keys: ``X`` (32, 32, 3, N) uint8 and ``y`` (N, 1) with labels 1..10, where 10 stands for the digit 0;
we map 10 -> 0 so labels are the digits 0..9 (as torchvision does). Files are looked for in ``root`` and
``root/svhn``; torchvision's SVHN class is used only for ``download=true``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from robprune.data.source import Arrays, Source, get, missing_files, root_dir, try_download
from robprune.errors import DataError
from robprune.registry import DATASETS

_SPLITS = ("train", "test", "extra")


def _find(root: Path, split: str) -> Path | None:
    for folder in (root, root / "svhn"):
        if (folder / f"{split}_32x32.mat").is_file():
            return folder / f"{split}_32x32.mat"
    return None


def _locate(cfg: DictConfig, split: str) -> list[Path]:
    root = root_dir(cfg)
    found = _find(root, split)
    if found is None and get(cfg, "download", False):
        from torchvision.datasets import SVHN

        try_download("svhn", root, lambda: SVHN(str(root), split=split, download=True))
        found = _find(root, split)
    if found is None:
        raise missing_files("svhn", root, [f"{split}_32x32.mat"])
    return [found]


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images and (N,) int64 digit labels 0..9 of one SVHN .mat file."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), variable_names=["X", "y"])
    except Exception as err:  # noqa: BLE001 - scipy raises ValueError/OSError/MatReadError/zlib errors
        raise DataError(f"{path} is truncated or corrupt ({type(err).__name__}: {err}); "
                        "delete it and download again (data.download=true)") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} lacks the 'X' and 'y' variables of an SVHN .mat file")
    images, labels = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if images.ndim != 4 or images.shape[2] != 3 or images.shape[3] != len(labels):
        raise DataError(f"{path}: 'X' has shape {images.shape} for {len(labels)} labels; "
                        "expected (H, W, 3, N)")
    if labels.size and (labels.min() < 0 or labels.max() > 10):
        raise DataError(f"{path}: labels span {labels.min()}..{labels.max()}; SVHN labels are 1..10")
    labels[labels == 10] = 0  # SVHN writes the digit 0 as class 10
    images = np.ascontiguousarray(images.transpose(3, 2, 0, 1)).astype(np.uint8, copy=False)
    return images, labels


def _decode(cfg: DictConfig, split: str, files: list[Path]) -> Arrays:
    """x (N, 3, 32, 32) uint8, y (N,) int64."""
    images, labels = read_mat(files[0])
    return torch.from_numpy(images), torch.from_numpy(labels)


def _splits(cfg: DictConfig) -> tuple[str, ...]:
    return _SPLITS


SOURCE = Source(splits=_splits, decode=_decode, locate=_locate)

DATASETS.add("svhn", SOURCE, modality="image")
