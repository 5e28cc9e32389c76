"""Tiny-ImageNet-200 (Stanford CS231n; 200 ImageNet classes, 64x64 RGB JPEGs, 500 train and 50 val
images per class) in the layout of the official zip, looked for in ``root/tiny-imagenet-200`` and then
``root`` itself::

    wnids.txt                              the 200 class ids (n01443537, ...), one a line
    words.txt                              wnid -> words, for people (not read)
    train/<wnid>/images/<wnid>_<n>.JPEG    (train/<wnid>/<wnid>_boxes.txt: boxes, not read)
    val/images/val_<n>.JPEG
    val/val_annotations.txt                tab-separated: file name, wnid, x0, y0, x1, y1
    test/images/test_<n>.JPEG              no labels

Label = index of the wnid in the sorted wnids.txt. Splits: ``train`` (class-then-name order) and
``val`` (the order of val_annotations.txt); ``test`` is refused, its labels were never published (no
alias to val: say ``val``, as the papers reporting "Tiny-ImageNet test accuracy" evaluate on it).
Grayscale JPEGs (a few hundred in train) are converted to RGB. ``download=true`` fetches the official
zip with torchvision's downloader (md5 checked) and extracts it into ``root``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from robprune.data.image_files import decode_images
from robprune.data.source import Arrays, Source, get, missing_files, root_dir, try_download
from robprune.errors import ConfigError, DataError
from robprune.options import Choice
from robprune.registry import DATASETS

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
FOLDER = "tiny-imagenet-200"
SIZE = 64
_ANNOTATIONS = "val/val_annotations.txt"


def download(root: Path, *, url: str = URL, md5: str | None = MD5) -> None:
    """Fetch the zip at ``url`` into ``root`` (skipped when a copy with this md5 is there), check its md5
    and extract it: ``root/tiny-imagenet-200/``. Raises what torchvision raises (RuntimeError on a
    checksum mismatch, URLError offline)."""
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(url, download_root=str(root), md5=md5)


def _restore(base: Path) -> str:
    """The fix for a damaged tree (download=true only fetches when wnids.txt is missing)."""
    return f"re-extract the official tiny-imagenet-200.zip into data.root, or set data.download=true after deleting {base}"


def _base(root: Path) -> Path | None:
    """The folder holding wnids.txt: root/tiny-imagenet-200 or root."""
    return next((folder for folder in (root / FOLDER, root) if (folder / "wnids.txt").is_file()), None)


def _find_base(cfg: DictConfig) -> Path:
    root = root_dir(cfg)
    base = _base(root)
    if base is None and get(cfg, "download", False):
        try_download("tiny_imagenet", root, lambda: download(root, url=URL, md5=MD5))
        base = _base(root)
    if base is None:
        raise missing_files("tiny_imagenet", root, [f"{FOLDER}/wnids.txt", f"{FOLDER}/train/<wnid>/images/",
                                                    f"{FOLDER}/{_ANNOTATIONS}"])
    return base


def read_wnids(path: Path) -> list[str]:
    """Sorted class ids of wnids.txt; the label of a class is its index here."""
    wnids = sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})
    if not wnids:
        raise DataError(f"{path} lists no class ids; {_restore(path.parent)}")
    return wnids


def read_annotations(path: Path, wnids: list[str]) -> list[tuple[str, str]]:
    """[(image file name, wnid)] of val_annotations.txt, in file order; DataError naming a bad line."""
    if not path.is_file():
        raise DataError(f"{path} is missing: Tiny-ImageNet's val labels live there (tab-separated: file, wnid, box); "
                        f"{_restore(path.parent.parent)}")
    known, rows = set(wnids), []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1].strip() not in known:
            raise DataError(f"{path}, line {number}: expected 'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1' with a wnid "
                            f"of wnids.txt, got {line[:80]!r}; {_restore(path.parent.parent)}")
        rows.append((fields[0].strip(), fields[1].strip()))
    return rows


def _train_files(base: Path, wnids: list[str]) -> list[Path]:
    files = []
    for wnid in wnids:
        folder = base / "train" / wnid / "images"
        images = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpeg", ".jpg")) if folder.is_dir() else []
        if not images:
            raise DataError(f"{folder} holds no JPEG images but {wnid} is in {base / 'wnids.txt'}; {_restore(base)}")
        files += images
    return files


def _locate(cfg: DictConfig, split: str) -> list[Path]:
    """[wnids.txt, (val: val_annotations.txt), images...]: the label sources first, so the decode cache
    fingerprint covers them too."""
    if split == "test":
        raise ConfigError("Tiny-ImageNet's test images have no labels (they were never published); evaluate on "
                          "the labelled val split, e.g. dataset.test_split=val")
    base = _find_base(cfg)
    wnids = read_wnids(base / "wnids.txt")
    if split == "train":
        return [base / "wnids.txt", *_train_files(base, wnids)]
    annotations = base / _ANNOTATIONS
    images = [base / "val" / "images" / name for name, _ in read_annotations(annotations, wnids)]
    missing = next((p for p in images if not p.is_file()), None)
    if missing is not None:
        raise DataError(f"{missing} is listed in {annotations} but missing; {_restore(base)}")
    return [base / "wnids.txt", annotations, *images]


def _labelled(split: str, files: list[Path]) -> tuple[list[Path], list[int]]:
    """(images, labels) of :func:`_locate`'s files: train labels from the class folder, val labels from the
    annotation file."""
    wnids = read_wnids(files[0])
    index = {wnid: i for i, wnid in enumerate(wnids)}
    if split == "train":
        return files[1:], [index[path.parent.parent.name] for path in files[1:]]
    wnid_of = dict(read_annotations(files[1], wnids))
    return files[2:], [index[wnid_of[path.name]] for path in files[2:]]


def _decode(cfg: DictConfig, split: str, files: list[Path]) -> Arrays:
    """x (N, 3, 64, 64) uint8, y (N,) int64 (labels: :func:`_labelled`)."""
    images, labels = _labelled(split, files)
    pixels = decode_images(images, 3, None, str(cfg.name), split)
    for path, img in zip(images, pixels):
        if img.shape != (SIZE, SIZE, 3):
            raise DataError(f"{path} is {img.shape[1]}x{img.shape[0]}, but Tiny-ImageNet images are {SIZE}x{SIZE}; "
                            f"{_restore(path.parents[3] if split == 'train' else path.parents[2])}")
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)


def _splits(cfg: DictConfig) -> tuple[str, ...]:
    return ("train", "val", "test")  # test: listed so that asking for it says why it cannot be used


def _listing(cfg: DictConfig, split: str, cache_dir):
    """``dataset.storage: stream``: the files and labels of :func:`_locate`, from the tree's manifest."""
    from robprune.data import manifest as manifests
    from robprune.data.listing import listing

    files = _locate(cfg, split)  # checks the layout and the annotations as the memory path does
    base = files[0].parent
    tree = manifests.load(base, cache_dir)
    images, labels = _labelled(split, files)
    return listing(tree, [str(p.relative_to(base)) for p in images], labels, label_files=files[:1 if split == "train" else 2])


SOURCE = Source(splits=_splits, decode=_decode, locate=_locate, listing=_listing,
                num_classes=lambda cfg: len(read_wnids(_find_base(cfg) / "wnids.txt")))

DATASETS.add("tiny_imagenet", SOURCE, modality="image", keys={"storage": Choice("memory", "stream", example="stream")})
