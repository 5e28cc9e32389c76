"""MNIST and Fashion-MNIST from their IDX files (optionally gzipped).

The files are searched in ``root``, ``root/raw`` and ``root/<MNIST|FashionMNIST>/raw`` (torchvision's
layout), so a folder holding just the four ``*-ubyte.gz`` files works as is. We parse IDX ourselves
(a 4-byte magic, big-endian int32 dims, then raw uint8) so truncated files get a clear error instead
of a numpy reshape failure; torchvision's dataset class is only used for ``download=true``.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from robprune.data.source import Arrays, Source, get, missing_files, root_dir, try_download
from robprune.errors import DataError
from robprune.registry import DATASETS

_STEMS = {  # base split -> (images, labels) file names without '.gz'
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TV_CLASS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # registry name -> torchvision class


def _candidates(root: Path, name: str) -> list[Path]:
    """Folders searched, in order."""
    return [root, root / "raw", root / _TV_CLASS[name] / "raw"]


def _find(root: Path, name: str, stem: str) -> Path | None:
    for folder in _candidates(root, name):
        for fname in (stem, stem + ".gz"):
            if (folder / fname).is_file():
                return folder / fname
    return None


def _locate(cfg: DictConfig, split: str) -> list[Path]:
    """[images, labels] files of ``split``; tries torchvision's download once if allowed."""
    name, root = str(cfg.name), root_dir(cfg)
    found = [_find(root, name, stem) for stem in _STEMS[split]]
    if None in found and get(cfg, "download", False):
        import torchvision.datasets as tvd

        tv_class = getattr(tvd, _TV_CLASS[name])
        try_download(name, root, lambda: tv_class(str(root), train=split == "train", download=True))
        found = [_find(root, name, stem) for stem in _STEMS[split]]
    if None in found:
        raise missing_files(name, root, [f"{s}[.gz]" for s in _STEMS[split]])
    return found


def _corrupt(path: Path, detail: str) -> DataError:
    return DataError(f"{path} is truncated or corrupt ({detail}); delete it and download again "
                     "(data.download=true)")


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when the name ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise _corrupt(path, f"{type(err).__name__}: {err}") from None


def read_idx(path: Path) -> np.ndarray:
    """uint8 array of an IDX file, shape from its header (e.g. (N, 28, 28) images or (N,) labels)."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise _corrupt(path, "no IDX magic number at the start")
    if data[2] != 0x08:
        raise _corrupt(path, f"IDX element type 0x{data[2]:02x}, expected 0x08 (uint8)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupt(path, f"expected a {header}-byte header, file has {len(data)} bytes")
    dims = struct.unpack(f">{ndim}i", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise _corrupt(path, f"expected {expected} bytes of data for shape {dims}, found {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _decode(cfg: DictConfig, split: str, files: list[Path]) -> Arrays:
    """x (N, 1, 28, 28) uint8, y (N,) int64."""
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{files[0]} / {files[1]} have shapes {images.shape} / {labels.shape}; "
                        "expected (N, H, W) images and (N,) labels")
    if len(images) != len(labels):
        raise DataError(f"{files[0]} has {len(images)} images but {files[1]} has {len(labels)} labels; "
                        "the pair must come from the same split")
    classes = get(cfg, "num_classes", None)
    if classes is not None and len(labels) and int(labels.max()) >= int(classes):
        first = int(np.argmax(labels >= int(classes)))
        raise DataError(f"{files[1]}: label {int(labels[first])} of image {first} is outside 0..{int(classes) - 1} "
                        f"(dataset.num_classes={int(classes)}); fix dataset.num_classes, or restore the file (delete it "
                        "and set data.download=true)")
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # copy: frombuffer arrays are read-only
    return x, torch.from_numpy(labels.astype(np.int64))


def _splits(cfg: DictConfig) -> tuple[str, ...]:
    return tuple(_STEMS)


SOURCE = Source(splits=_splits, decode=_decode, locate=_locate)

DATASETS.add("mnist", SOURCE, modality="image")
DATASETS.add("fashion_mnist", SOURCE, modality="image")
