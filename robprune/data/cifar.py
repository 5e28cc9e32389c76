"""CIFAR-10 / CIFAR-100 from the official python-pickle batches.

Why not torchvision's CIFAR10 class for reading: it verifies fixed md5 sums (so any re-packed or test
copy is rejected as "corrupted") and calls plain ``pickle.load``. We locate the batch files ourselves
and read them with :class:`_ArrayUnpickler`, which only lets numpy arrays and builtin containers be
rebuilt - a tampered batch file cannot run code. torchvision is used only for ``download=true``.
Files are looked for in ``root/<archive dir>`` and then ``root`` itself.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from robprune.data.source import Arrays, Source, get, missing_files, root_dir, try_download
from robprune.errors import DataError
from robprune.registry import DATASETS

_LAYOUT = {  # name -> (archive dir, {base split: batch files}, label key, torchvision class)
    "cifar10": ("cifar-10-batches-py",
                {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                "labels", "CIFAR10"),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "fine_labels", "CIFAR100"),
}
# (module, name) pairs a CIFAR batch pickle needs: numpy's array rebuild (old and numpy>=2 module
# paths) and _codecs.encode, which protocol-2 pickles use for raw bytes.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except the few numpy needs to rebuild arrays."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a CIFAR batch)")
        return super().find_class(module, name)


def _find(root: Path, name: str, split: str) -> list[Path] | None:
    """Batch files of ``split`` from the first folder that has all of them."""
    archive, splits, _, _ = _LAYOUT[name]
    for folder in (root / archive, root):
        files = [folder / f for f in splits[split]]
        if all(f.is_file() for f in files):
            return files
    return None


def _locate(cfg: DictConfig, split: str) -> list[Path]:
    name, root = str(cfg.name), root_dir(cfg)
    archive, splits, _, tv_name = _LAYOUT[name]
    files = _find(root, name, split)
    if files is None and get(cfg, "download", False):
        import torchvision.datasets as tvd

        tv_class = getattr(tvd, tv_name)
        try_download(name, root, lambda: tv_class(str(root), train=split == "train", download=True))
        files = _find(root, name, split)
    if files is None:
        raise missing_files(name, root, [f"{archive}/{f}" for f in splits[split]])
    return files


def read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3072) uint8 pixels (R, G, B planes of 32x32) and (N,) labels of one batch file."""
    try:
        with open(path, "rb") as fh:
            entry = _ArrayUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError) as err:
        raise DataError(f"{path} is truncated or corrupt ({type(err).__name__}: {err}); "
                        "delete it and download again (data.download=true)") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path} is not a CIFAR batch (a dict with 'data' and '{label_key}')")
    # Python-2 originals load with str keys, batches written from Python 3 may have bytes keys.
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or label_key not in entry:
        raise DataError(f"{path} has keys {sorted(entry)}; a CIFAR batch needs 'data' and '{label_key}'")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape} with {len(labels)} labels; "
                        "expected uint8 (N, 3072) and N labels")
    return data, labels


def _decode(cfg: DictConfig, split: str, files: list[Path]) -> Arrays:
    """x (N, 3, 32, 32) uint8, y (N,) int64, batches concatenated in file order."""
    label_key = _LAYOUT[str(cfg.name)][2]
    parts = [read_batch(f, label_key) for f in files]
    data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(data.copy()), torch.from_numpy(labels)


def _splits(cfg: DictConfig) -> tuple[str, ...]:
    return tuple(_LAYOUT[str(cfg.name)][1])


SOURCE = Source(splits=_splits, decode=_decode, locate=_locate)

DATASETS.add("cifar10", SOURCE, modality="image")
DATASETS.add("cifar100", SOURCE, modality="image")
