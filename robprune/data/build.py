"""``build_data``: dataset config -> :class:`DataBundle` of uint8 train/test tensors, from the source that
``dataset.name`` names in :data:`robprune.registry.DATASETS` (each source module registers its own)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from omegaconf import DictConfig

from robprune.data import (  # noqa: F401 (they register their sources)
    builtin,
    cifar,
    faults,
    imagefolder,
    imagenet,
    manifest,
    mnist,
    svhn,
    tiny_imagenet,
    webdataset,
)
from robprune.data.faults import Audit
from robprune.data.listing import Listing
from robprune.data.loader import BatchLoader
from robprune.data.source import Arrays, Source, get, load_split
from robprune.data.splits import parse_split, warn_overlap
from robprune.data.stream import Files, Loading, StreamImages, Transforms, with_augment
from robprune.data.streamloader import StreamLoader
from robprune.data.text import build_text_data
from robprune.errors import ConfigError, DataError
from robprune.registry import DATASETS


@dataclass
class DataBundle:
    """Decoded train/test data of one dataset; pixels stay uint8 until BatchLoader makes batches.

    train_x: (N, C, H, W) uint8, train_y: (N,) int64 in [0, num_classes); test_x/test_y likewise (M).
    mean, std: per-channel statistics of pixels in [0, 1], for the model's Normalize layer.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    version: str | None = None  # dataset.version: a user's name for the data's release, part of every key
    audit: Audit = field(default_factory=Audit)  # faults found while loading: warnings, overlap, unseen classes

    modality = "image"

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """Side length H of the (square) images; DataError if H != W."""
        height, width = self.train_x.shape[-2:]
        if height != width:
            raise DataError(f"dataset {self.name!r} has {height}x{width} images but the models need square ones; "
                            "for an imagefolder set dataset.image_size=<pixels> to resize")
        return int(height)

    def arch_record(self) -> dict:
        """What a model builder needs from the data (stored in a checkpoint's ``arch``)."""
        return {"in_channels": self.in_channels, "image_size": self.image_size, "num_classes": self.num_classes,
                "mean": list(self.mean), "std": list(self.std)}

    def meta(self) -> dict:
        """Shapes and statistics that enter every stage's data fingerprint."""
        meta = {"name": self.name, "num_classes": int(self.num_classes), "mean": list(self.mean),
                "std": list(self.std), "example_shape": list(self.train_x.shape[1:])}
        if self.version is not None:
            meta["version"] = self.version
        return meta

    def example_inputs(self, n: int = 1, *, random: bool = False) -> torch.Tensor:
        """(n, C, H, W) pixels: zeros (tracing: only the shape matters) or uniform in [0, 1] (timing)."""
        shape = (int(n), self.in_channels, self.image_size, self.image_size)
        return torch.rand(shape) if random else torch.zeros(shape)

    def loader(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, **kwargs) -> BatchLoader:
        """Float [0, 1] batches of uint8 images ``x`` (see :class:`BatchLoader` for the keywords)."""
        return BatchLoader(x, y, batch_size, **kwargs)

    def check_model(self, model) -> None:
        """Nothing to check beyond what the builder did (shapes come from this bundle)."""


@dataclass
class StreamBundle(DataBundle):
    """A :class:`DataBundle` whose splits stay on disk (docs/concepts/data-and-models.md#streamed-datasets): ``train_x`` /
    ``test_x`` are :class:`~robprune.data.stream.StreamImages` (index them like tensors), training batches
    come from DataLoader workers, and the data fingerprint is the split's manifest digest, not its pixels."""

    transforms: Transforms = field(default_factory=Transforms)
    digests: dict = field(default_factory=dict)  # part -> manifest digest of its files (+ label files)
    loading: Loading = field(default_factory=lambda: Loading())

    def meta(self) -> dict:
        return {**super().meta(), "storage": "stream", "transforms": self.transforms.record()}

    def fingerprint(self, part: str) -> str:
        """16 hex digits over the bundle's meta and the part's manifest digest (no pixel is read). Training
        batches also depend on data.gpu_decode (nvJPEG and libjpeg-turbo may differ by a grey level; the
        device type is in every key already); evaluation always decodes on the CPU."""
        decode = str(self.loading.gpu_decode) if part == "train" else None
        blob = json.dumps(["data", part, self.meta(), self.digests.get(part), decode], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def loader(self, x, y: torch.Tensor, batch_size: int, *, shuffle: bool, generator=None, augment=None,
               device="cpu", drop_last: bool = False, alternate_flip: bool = False):
        """Training/evaluation batches of a streamed split (:class:`StreamLoader`, ``augment`` applied when
        shuffling), or of an already decoded subset (a tensor: :class:`BatchLoader`). Alternating flips need
        the epoch in the loader's process: in-memory data only (robprune.validate refuses it earlier)."""
        if not isinstance(x, StreamImages):
            return BatchLoader(x, y, batch_size, shuffle=shuffle, generator=generator, augment=augment,
                               device=device, drop_last=drop_last, alternate_flip=alternate_flip)
        if alternate_flip:
            raise ConfigError("train.alternate_flip needs images held in memory, not streamed; set it to false")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        transforms = with_augment(self.transforms, augment) if shuffle else self.transforms
        device = torch.device(device)
        return StreamLoader(x.files, transforms, int(batch_size), shuffle=shuffle, generator=generator, device=device,
                            drop_last=drop_last, num_workers=self.loading.num_workers,
                            gpu_decode=self.loading.gpu_decode_on(device))


def build_data(dataset_cfg: DictConfig, *, cache_dir: str | Path | None = None, loading=None):
    """Load ``dataset_cfg.train_split`` and ``dataset_cfg.test_split`` of dataset ``dataset_cfg.name``:
    a :class:`DataBundle` of images, or for ``modality: text`` a :class:`robprune.data.text.TextBundle`.

    cache_dir: if given, decoded base splits of file-backed datasets are stored there as safetensors
    and reused while the source files are unchanged (same path, size and mtime); streamed datasets keep
    their folders' manifests there. loading: the ``data`` node (num_workers, gpu_decode, skip_bad) or a
    :class:`Loading`, read by streamed datasets only.
    """
    name = str(get(dataset_cfg, "name"))
    manifest.set_default_cache(cache_dir)
    with faults.collected() as notes:  # the faults accepted on the way: the bundle's audit.warnings
        if str(dataset_cfg.get("modality", "image")) == "text":
            bundle = build_text_data(dataset_cfg, cache_dir=cache_dir)
        else:
            images = DATASETS.names(modality="image")
            if name not in images:
                raise ConfigError(f"dataset.name={name!r} is not a known dataset; choose one of {', '.join(images)}")
            source = DATASETS.get(name)
            if source.storage(dataset_cfg) == "stream":
                bundle = _build_stream(source, dataset_cfg, cache_dir,
                                       loading if isinstance(loading, Loading) else Loading.of(loading))
            else:
                bundle = _build_memory(source, dataset_cfg, cache_dir)
    bundle.audit = replace(bundle.audit, warnings=tuple(notes))
    return bundle


def _build_memory(source: Source, cfg: DictConfig, cache_dir) -> DataBundle:
    """Both splits decoded (or read from the decode cache) into uint8 tensors."""
    name = str(cfg.name)
    bases: dict[str, tuple[Arrays, list[Path]]] = {}  # each base split is decoded once even if both keys slice it
    (train_x, train_y), train_at = _select(source, cfg, "train_split", bases, cache_dir)
    (test_x, test_y), test_at = _select(source, cfg, "test_split", bases, cache_dir)
    warn_overlap(train_at, test_at)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"dataset {name!r}: train images are {tuple(train_x.shape[1:])} but test images are "
                        f"{tuple(test_x.shape[1:])}; they must match (for an imagefolder set dataset.image_size)")
    num_classes = _num_classes(source, cfg, (train_y, test_y))
    unseen = faults.unseen_classes(name, train_y, test_y, bases[train_at[0]][0][1], _where(source, cfg, train_at[0]))
    pairs = faults.overlap_pairs(train_x, test_x)

    def describe(part: str, i: int) -> str:  # an example of the selection: its file, or base split and index
        base, where = train_at if part == "train" else test_at
        return str(bases[base][1][where.start + i]) if source.example_files else f"{base}[{where.start + i}]"

    faults.warn_overlap_pairs(name, pairs, len(test_y), describe)
    channels = int(train_x.shape[1])
    return DataBundle(name=name, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                      num_classes=num_classes, mean=_per_channel(cfg, "mean", channels),
                      std=_per_channel(cfg, "std", channels, positive=True), version=_version(cfg),
                      audit=Audit(n_test=len(test_y), overlap=len(pairs), unseen=unseen))


def _where(source: Source, cfg: DictConfig, base: str):
    """label -> where the training examples of that class belong and that there are none (None: not known)."""
    return (lambda label: source.class_folder(cfg, base, label)) if source.class_folder else (lambda label: None)


def _version(cfg: DictConfig) -> str | None:
    value = get(cfg, "version", None)
    return None if value is None else str(value)


def _build_stream(source: Source, cfg: DictConfig, cache_dir, loading: Loading) -> StreamBundle:
    """The streamed bundle: listings of both splits (manifests cached in cache_dir), checked for images that
    are not whole, and the evaluation transform of the dataset's sizes."""
    name = str(cfg.name)
    bases: dict[str, Listing] = {}
    splits = {}
    for key in ("train_split", "test_split"):
        spec, base, part = _split_of(source, cfg, key)
        if base not in bases:
            bases[base] = source.listing(cfg, base, cache_dir)
            if not bases[base].rels:
                raise DataError(f"dataset {name!r}: split {base!r} under {bases[base].root} holds no images; "
                                "pass data.root=<folder with the dataset>")
        where = part.resolve(len(bases[base].rels), key=f"dataset.{key}", spec=spec)
        splits[key] = (_whole_images(bases[base].select(where), name, loading.skip_bad), (base, where))
    (train, train_at), (test, test_at) = splits["train_split"], splits["test_split"]
    warn_overlap(train_at, test_at)
    transforms = Transforms(channels=int(get(cfg, "channels", 3)), image_size=_size(cfg, "image_size"),
                            resize=_size(cfg, "resize"))
    if transforms.channels not in (1, 3):
        raise ConfigError(f"dataset.channels must be 1 (grayscale) or 3 (RGB), got {transforms.channels}")
    num_classes = _num_classes(source, cfg, (train.labels, test.labels))
    unseen = faults.unseen_classes(name, train.labels, test.labels, bases[train_at[0]].labels,
                                   _where(source, cfg, train_at[0]))
    threads = loading.num_workers
    images = {k: StreamImages(Files(v[0].root, v[0].rels, v[0].labels), transforms, threads) for k, v in splits.items()}
    return StreamBundle(name=name, train_x=images["train_split"], train_y=train.labels, test_x=images["test_split"],
                        test_y=test.labels, num_classes=num_classes,
                        mean=_per_channel(cfg, "mean", transforms.channels),
                        std=_per_channel(cfg, "std", transforms.channels, positive=True), version=_version(cfg),
                        transforms=transforms, digests={"train": train.digest, "test": test.digest}, loading=loading,
                        audit=Audit(n_test=len(test.labels), overlap=None, unseen=unseen))  # pairs: would read every file


def _size(cfg: DictConfig, key: str) -> int | None:
    value = get(cfg, key, None)
    return None if value is None else int(value)


def _whole_images(split: Listing, name: str, skip_bad: bool) -> Listing:
    """The split, refused (or, with data.skip_bad, thinned with a warning) when some files are not whole images."""
    if not split.problems:
        return split
    shown = "; ".join(f"{split.root / rel} ({why})" for rel, why in split.problems[:3])
    more = f" and {len(split.problems) - 3} more" if len(split.problems) > 3 else ""
    if not skip_bad:
        raise DataError(f"dataset {name!r}: {len(split.problems)} of {len(split.rels)} images are unreadable or "
                        f"truncated: {shown}{more}; replace them, or pass data.skip_bad=true to leave them out")
    faults.warn(f"dataset {name!r}: leaving out {len(split.problems)} unreadable or truncated images "
                f"(data.skip_bad=true): {shown}{more}")
    return split.without({rel for rel, _ in split.problems})


def _select(source: Source, cfg: DictConfig, key: str, bases: dict[str, tuple[Arrays, list[Path]]],
            cache_dir: str | Path | None) -> tuple[Arrays, tuple[str, slice]]:
    """The examples ``cfg[key]`` names, and (base split, resolved slice) for the overlap checks; ``bases`` keeps
    each decoded base split with its files."""
    spec, base, part = _split_of(source, cfg, key)
    if base not in bases:
        bases[base] = load_split(source, cfg, base, cache_dir)
    x, y = bases[base][0]
    where = part.resolve(len(x), key=f"dataset.{key}", spec=spec)
    if part.is_full:
        return (x, y), (base, where)
    return (x[where].clone(), y[where].clone()), (base, where)  # clone: do not pin the whole base split


def _split_of(source: Source, cfg: DictConfig, key: str):
    """(spec, base split, slice) of ``dataset.<key>``, the base checked against the source's splits."""
    spec = str(get(cfg, key, "train" if key == "train_split" else "test"))
    base, part = parse_split(spec, key=f"dataset.{key}")
    available = source.splits(cfg)
    if base not in available:
        raise ConfigError(f"dataset.{key}={spec!r} names no split of dataset {str(cfg.name)!r} "
                          f"(available: {', '.join(available)}); use e.g. '{available[0]}' or '{available[0]}[:80%]'")
    return spec, base, part


def _num_classes(source: Source, cfg: DictConfig, labels: tuple[torch.Tensor, ...]) -> int:
    """Configured class count (checked against a discovered one and the labels)."""
    configured = get(cfg, "num_classes", None)
    discovered = source.num_classes(cfg) if source.num_classes else None
    if configured is None and discovered is None:
        raise ConfigError(f"dataset.num_classes is not set for dataset {str(cfg.name)!r}; set it, e.g. dataset.num_classes=10")
    if configured is not None and discovered is not None and int(configured) != discovered:
        raise ConfigError(f"dataset.num_classes={configured} but {discovered} class folders were found; "
                          "set dataset.num_classes=null to use the folders")
    count = int(configured if configured is not None else discovered)
    top = max(int(y.max()) for y in labels if y.numel())
    if top >= count or min(int(y.min()) for y in labels if y.numel()) < 0:
        raise DataError(f"dataset {str(cfg.name)!r}: labels reach {top} but dataset.num_classes={count}; "
                        "fix dataset.num_classes or the label files")
    return count


def _per_channel(cfg: DictConfig, key: str, channels: int, *, positive: bool = False) -> tuple[float, ...]:
    """dataset.mean / dataset.std as one float per channel (a single value is repeated; null -> 0.5)."""
    raw = get(cfg, key, None)
    values = [0.5] if raw is None else ([raw] if isinstance(raw, (int, float)) else list(raw))
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ConfigError(f"dataset.{key} has {len(values)} values but the images have {channels} channels; "
                          f"give one value per channel, e.g. dataset.{key}=[{', '.join(['0.5'] * channels)}]")
    if positive and min(values) <= 0:
        raise ConfigError(f"dataset.{key} must be > 0 for every channel, got {values}")
    return tuple(float(v) for v in values)
