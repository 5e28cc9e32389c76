"""Any folder of images: ``root/<split>/<class>/<image>`` or, with no split level, ``root/<class>/<image>``.

Layout detection: if the folders directly under ``root`` hold image files, they are classes and the
only base split is ``train``; carve a test set with slices, e.g. ``train[:80%]`` / ``train[80%:]``.
So that such slices mix all classes, that split lists the files in a fixed permutation (numpy
``default_rng(0)``) of the class-then-name order - deterministic for a given set of files.
Otherwise the folders under ``root`` are splits, the folders inside them are classes, and files are
in class-then-name order.
Classes are sorted alphabetically (union over splits, so labels agree between train and test).
Images are decoded once with PIL, converted to ``channels`` (3: RGB, 1: grayscale) and resized to
``image_size`` x ``image_size`` (bilinear) when set; with ``image_size: null`` all images must match.
Faults (robprune.data.image_files, docs/concepts/data-faults.md): files that are not whole images are refused,
all named in one line; images of another mode are converted with a warning; an empty class folder is a
warning, and refused when it is the training split's and the test split has that class (build_data).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from robprune.data.faults import warn
from robprune.data.image_files import decode_images
from robprune.data.source import Arrays, Source, get, missing_files, root_dir
from robprune.errors import ConfigError, DataError
from robprune.options import Choice, Float, Int, Value
from robprune.registry import DATASETS

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _layout(cfg: DictConfig) -> tuple[dict[str, Path], bool]:
    """(base split name -> folder whose subfolders are the classes, whether there is no split level)."""
    root = root_dir(cfg)
    tops = _subdirs(root) if root.is_dir() else []
    if not tops:
        raise missing_files("imagefolder", root, ["<class>/<image> or <split>/<class>/<image> folders"])
    if any(_images(top) for top in tops):
        return {"train": root}, True
    return {top.name: top for top in tops}, False


def _classes(cfg: DictConfig) -> list[str]:
    """Sorted class names over all splits."""
    names = {c.name for folder in _layout(cfg)[0].values() for c in _subdirs(folder)}
    if not names:
        raise missing_files("imagefolder", root_dir(cfg), ["<split>/<class>/<image> folders"])
    return sorted(names)


def _locate(cfg: DictConfig, split: str) -> list[Path]:
    """Image files of ``split``: class-then-name order, permuted with a fixed seed for a flat folder. An empty
    class folder is a warning (the split has no example of that class)."""
    splits, flat = _layout(cfg)
    folder = splits[split]
    per_class = {cls: _images(cls) for cls in _subdirs(folder)}
    files = [img for images in per_class.values() for img in images]
    if not files:
        raise missing_files("imagefolder", folder, [f"<class>/<image> with suffix {', '.join(sorted(IMAGE_SUFFIXES))}"])
    for cls in (cls for cls, images in per_class.items() if not images):
        warn(f"dataset {str(cfg.name)!r}: {cls} holds no images, so split {split!r} has no example of class "
             f"{cls.name!r}; add its images or delete the folder")
    if flat:  # so that 'train[:80%]' / 'train[80%:]' both contain every class
        files = [files[i] for i in np.random.default_rng(0).permutation(len(files))]
    return files


def _class_folder(cfg: DictConfig, split: str, label: int) -> str:
    """Where the images of class ``label`` of base split ``split`` belong, and that it holds none."""
    folder = _layout(cfg)[0][split] / _classes(cfg)[label]
    return f"{folder} {'holds no images' if folder.is_dir() else 'does not exist'}"


def _decode(cfg: DictConfig, split: str, files: list[Path]) -> Arrays:
    """x (N, C, H, W) uint8, y (N,) int64 (index into the sorted class names)."""
    channels = int(get(cfg, "channels", 3))
    if channels not in (1, 3):
        raise ConfigError(f"dataset.channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    size = get(cfg, "image_size", None)
    pixels = decode_images(files, channels, None if size is None else int(size), str(cfg.name), split)
    for path, img in zip(files, pixels):
        if img.shape != pixels[0].shape:
            raise DataError(f"{path} is {img.shape[1]}x{img.shape[0]} but {files[0]} is "
                            f"{pixels[0].shape[1]}x{pixels[0].shape[0]}; set dataset.image_size=<pixels> to resize all images")
    index = {name: i for i, name in enumerate(_classes(cfg))}
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor([index[path.parent.name] for path in files], dtype=torch.int64)


def _splits(cfg: DictConfig) -> tuple[str, ...]:
    return tuple(_layout(cfg)[0])


def images_in(manifest, folder: str) -> list[str]:
    """Image files directly inside ``folder`` (relative to the manifest's root), sorted."""
    head = f"{folder}/" if folder else ""
    return [rel for rel in manifest.under(folder)
            if "/" not in rel[len(head):] and Path(rel).suffix.lower() in IMAGE_SUFFIXES]


def tree_listing(manifest, split_dirs: dict[str, str], split: str, *, shuffle: bool = False):
    """:class:`~robprune.data.stream.Listing` of ``split`` in a ``<split dir>/<class>/<image>`` tree (split_dirs:
    split -> folder relative to the manifest's root; '' for a tree without split folders). Classes are the
    sorted union of class folders over all splits, so labels agree between train and test."""
    from robprune.data.listing import listing

    classes = sorted({c for folder in split_dirs.values() for c in manifest.subdirs(folder)})
    index = {name: i for i, name in enumerate(classes)}
    folder = split_dirs[split]
    rels, labels = [], []
    for cls in manifest.subdirs(folder):
        images = images_in(manifest, f"{folder}/{cls}" if folder else cls)
        if not images:
            warn(f"{Path(manifest.root) / folder / cls} holds no images, so split {split!r} has no example of class "
                 f"{cls!r}; add its images or delete the folder")
        rels += images
        labels += [index[cls]] * len(images)
    if shuffle:  # a tree without split folders: the memory path's fixed permutation, so slices mix classes
        order = np.random.default_rng(0).permutation(len(rels))
        rels, labels = [rels[i] for i in order], [labels[i] for i in order]
    return listing(manifest, rels, labels)


def _listing(cfg: DictConfig, split: str, cache_dir):
    """``dataset.storage: stream``: the split's files from the root's manifest (same layout rules)."""
    from robprune.data import manifest as manifests

    root = root_dir(cfg)
    if not root.is_dir():
        raise missing_files("imagefolder", root, ["<class>/<image> or <split>/<class>/<image> folders"])
    tree = manifests.load(root, cache_dir)
    tops = tree.subdirs("")
    if any(images_in(tree, top) for top in tops):
        return tree_listing(tree, {"train": ""}, split, shuffle=True)
    return tree_listing(tree, {top: top for top in tops}, split)


SOURCE = Source(splits=_splits, decode=_decode, locate=_locate, listing=_listing,
                num_classes=lambda cfg: len(_classes(cfg)), cache_keys=("channels", "image_size"),
                example_files=True, class_folder=_class_folder)

DATASETS.add("imagefolder", SOURCE, modality="image", keys={  # the keys only it reads
    "storage": Choice("memory", "stream", example="stream"), "resize": Int(1, null=True, example="256"),
    "channels": Choice(1, 3, example="3"), "image_size": Int(1, null=True, example="32"),
    "mean": Value("list", item=Float(0, high=1), null=True), "std": Value("list", item=Float(0, low_open=True), null=True)})
