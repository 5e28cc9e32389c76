"""ImageNet-1K (ILSVRC-2012) and ImageNet-V2, streamed from the layouts their owners distribute
(docs/concepts/data-and-models.md#imagenet). Neither is ever downloaded: ImageNet needs an account at image-net.org.

``imagenet`` under ``dataset.root``::

    train/<wnid>/*.JPEG                         1,281,167 images in 1,000 class folders
    val/<wnid>/*.JPEG                           50,000 images, sorted into class folders, or
    val/ILSVRC2012_val_000NNNNN.JPEG            flat, as released, labelled by the devkit:
    ILSVRC2012_devkit_t12/data/meta.mat         synsets: ILSVRC2012_ID -> WNID
    ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt   one ILSVRC2012_ID per val image
    (or LOC_val_solution.csv, Kaggle's copy: ImageId,PredictionString "<wnid> x0 y0 x1 y1 ...")

Labels: the index of the wnid in the sorted class folders of train/ (of val/ without train/), which is the
order torchvision's and timm's ImageNet weights use. ``imagenet_v2`` (Recht et al. 2019): folders ``0`` …
``999`` whose name is the label in that same order, under ``dataset.root`` or its
``imagenetv2-<variant>-format-val`` subfolder.
"""
from __future__ import annotations

import csv
from pathlib import Path

from omegaconf import DictConfig

from robprune.data import manifest as manifests
from robprune.data.imagefolder import images_in, tree_listing
from robprune.data.source import Source, get, root_dir
from robprune.data.listing import listing
from robprune.errors import ConfigError, DataError
from robprune.options import Choice, Int
from robprune.registry import DATASETS

DEVKIT = "ILSVRC2012_devkit_t12/data"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
KAGGLE_LABELS = "LOC_val_solution.csv"
V2_VARIANTS = ("matched-frequency", "threshold0.7", "top-images")
_LAYOUT = ("train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (or val/*.JPEG with "
           f"{DEVKIT}/meta.mat and {GROUND_TRUTH}, or {KAGGLE_LABELS})")


def _no_download(cfg: DictConfig, name: str) -> None:
    if get(cfg, "download", False):
        raise ConfigError(f"dataset {name!r} cannot be downloaded by robprune (ImageNet needs an account at "
                          "image-net.org); download it there; pass data.root=<its folder> and data.download=false")


def _manifest(cfg: DictConfig, cache_dir) -> manifests.Manifest:
    _no_download(cfg, "imagenet")
    root = root_dir(cfg)
    if not (root / "train").is_dir() and not (root / "val").is_dir():
        raise DataError(f"dataset 'imagenet': {root} has no train/ or val/ folder; expected the ILSVRC-2012 layout "
                        f"{_LAYOUT}; pass data.root=<the folder holding train/ and val/>")
    return manifests.load(root, cache_dir)


def _classes(tree: manifests.Manifest) -> list[str]:
    return tree.subdirs("train") if tree.has_dir("train") else tree.subdirs("val")


def _flat_val(tree: manifests.Manifest, classes: list[str], root: Path):
    """Flat val/: labels from the devkit (meta.mat + ground truth) or Kaggle's LOC_val_solution.csv."""
    images = images_in(tree, "val")
    if (root / DEVKIT / GROUND_TRUTH).is_file():
        wnid_of, label_files = _devkit_labels(root, len(images))
    elif (root / KAGGLE_LABELS).is_file():
        wnid_of, label_files = _kaggle_labels(root / KAGGLE_LABELS), [root / KAGGLE_LABELS]
    else:
        raise DataError(f"dataset 'imagenet': {root / 'val'} holds {len(images)} images but no class folders, and "
                        f"the val labels are missing; pass data.root=<a folder with val in class folders>, or put the devkit's {DEVKIT}/meta.mat and {GROUND_TRUTH} (from "
                        f"ILSVRC2012_devkit_t12.tar.gz) or {KAGGLE_LABELS} into {root}")
    index = {wnid: i for i, wnid in enumerate(classes)}
    labels = []
    for rel in images:
        stem = Path(rel).stem
        wnid = wnid_of.get(stem)
        if wnid is None or wnid not in index:
            raise DataError(f"dataset 'imagenet': {root / rel} has {'no label' if wnid is None else f'label {wnid}, not a class folder of train/'} "
                            f"in {', '.join(str(f) for f in label_files)}; use the labels that came with these images")
        labels.append(index[wnid])
    return listing(tree, images, labels, label_files=label_files)


def _devkit_labels(root: Path, n_images: int) -> tuple[dict[str, str], list[Path]]:
    """image stem -> wnid from the devkit: the i-th ground-truth line labels ILSVRC2012_val_<i:08d>."""
    from scipy.io import loadmat

    meta, truth = root / DEVKIT / "meta.mat", root / DEVKIT / GROUND_TRUTH
    if not meta.is_file():
        raise DataError(f"{meta} is missing: it maps the ground truth's ILSVRC2012_IDs to wnids; extract the whole "
                        f"ILSVRC2012_devkit_t12.tar.gz into {root}")
    try:
        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
        wnid_by_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
        ids = [int(line) for line in truth.read_text().split()]
    except (KeyError, ValueError, TypeError, OSError) as err:
        raise DataError(f"{meta} or {truth} cannot be read as the ILSVRC-2012 devkit ({err}); extract "
                        f"ILSVRC2012_devkit_t12.tar.gz again into {root}") from None
    unknown = next((i for i in ids if i not in wnid_by_id), None)
    if unknown is not None:
        raise DataError(f"{truth} names ILSVRC2012_ID {unknown}, which {meta} does not list as a leaf synset; "
                        "use the devkit that came with these images")
    return {f"ILSVRC2012_val_{i + 1:08d}": wnid_by_id[v] for i, v in enumerate(ids)}, [meta, truth]


def _kaggle_labels(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "ImageId" not in rows[0] or "PredictionString" not in rows[0]:
        raise DataError(f"{path} is not Kaggle's LOC_val_solution.csv (header ImageId,PredictionString); "
                        "use the file from the ImageNet localization challenge")
    return {row["ImageId"]: row["PredictionString"].split()[0] for row in rows if row["PredictionString"].split()}


def _listing(cfg: DictConfig, split: str, cache_dir):
    tree = _manifest(cfg, cache_dir)
    root = Path(tree.root)
    if not tree.has_dir(split):
        raise DataError(f"dataset 'imagenet': {root / split} is missing; expected the ILSVRC-2012 layout {_LAYOUT}")
    classes = _classes(tree)
    if split == "val" and not tree.subdirs("val"):
        return _flat_val(tree, classes, root)
    if split == "val" and tree.has_dir("train") and set(tree.subdirs("val")) - set(classes):
        extra = sorted(set(tree.subdirs("val")) - set(classes))[0]
        raise DataError(f"dataset 'imagenet': {root / 'val' / extra} is not a class folder of {root / 'train'}; the "
                        "val folders must be the train classes' wnids")
    return tree_listing(tree, {s: s for s in ("train", "val") if tree.has_dir(s)}, split)


def _num_classes(cfg: DictConfig) -> int:
    root = root_dir(cfg)
    folder = root / ("train" if (root / "train").is_dir() else "val")
    count = sum(1 for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else 0
    if count == 0:
        raise DataError(f"dataset 'imagenet': no class folders in {folder}; expected the ILSVRC-2012 layout {_LAYOUT}")
    return count


def _v2_base(cfg: DictConfig) -> Path:
    _no_download(cfg, "imagenet_v2")
    root = root_dir(cfg)
    variant = str(get(cfg, "variant", "matched-frequency"))
    for folder in (root / f"imagenetv2-{variant}-format-val", root / f"imagenetv2-{variant}", root):
        if (folder / "0").is_dir():
            return folder
    raise DataError(f"dataset 'imagenet_v2': no class folders 0 … 999 under {root} or its "
                    f"imagenetv2-{variant}-format-val/ folder; extract imagenetv2-{variant}.tar.gz into data.root")


def _v2_listing(cfg: DictConfig, split: str, cache_dir):
    tree = manifests.load(_v2_base(cfg), cache_dir)
    folders = [d for d in tree.subdirs("") if d.isdigit()]
    rels, labels = [], []
    for folder in sorted(folders, key=int):
        images = images_in(tree, folder)
        rels += images
        labels += [int(folder)] * len(images)
    return listing(tree, rels, labels)


IMAGENET = Source(splits=lambda cfg: ("train", "val"), decode=None, listing=_listing, num_classes=_num_classes)
IMAGENET_V2 = Source(splits=lambda cfg: ("test",), decode=None, listing=_v2_listing)

_STREAM_KEYS = {"storage": Choice("stream", example="stream"), "resize": Int(1, null=True, example="256"),
                "image_size": Int(1, example="224"), "channels": Choice(3, example="3")}
DATASETS.add("imagenet", IMAGENET, modality="image", keys=_STREAM_KEYS)
DATASETS.add("imagenet_v2", IMAGENET_V2, modality="image", keys={
    **_STREAM_KEYS, "variant": Choice(*V2_VARIANTS, example="matched-frequency")})
