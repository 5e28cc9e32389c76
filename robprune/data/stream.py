"""Streamed image datasets: files listed once (:mod:`robprune.data.manifest`), decoded per batch, never held
in memory as a whole (docs/concepts/data-and-models.md#streamed-datasets).

- :class:`Transforms`: torchvision ``transforms.v2`` functionals. Evaluation: Resize(``resize``, shorter
  side) + CenterCrop(``image_size``), or a square resize to ``image_size`` when ``resize`` is null.
  Training: RandomResizedCrop(``image_size``, scale ``augment.resized_crop``) + flip (ImageNet's recipe), or
  the evaluation transform followed by pad-crop + flip (``augment.crop_padding``), as the in-memory loader does.
  Every random draw comes from a per-example seed, so the workers' number and timing never change a batch.
- :class:`StreamImages`: a test or train split as a lazy (N, C, H, W) uint8 tensor: ``x[idx]`` decodes those
  images (evaluation transform) on a thread pool. Evaluation, calibration and checks index it like a tensor.
- :class:`~robprune.data.streamloader.StreamLoader`: training batches through ``torch.utils.data.DataLoader`` worker processes (pinned
  memory, persistent workers, prefetch), uint8 from the workers and float on the device. All of an epoch's
  draws (order, per-example seeds) happen in ``iter()`` from the stage's generator, as for
  :class:`~robprune.data.loader.BatchLoader`, so the same seed gives the same batches and a resume at an epoch
  boundary is exact. In data-parallel training each rank decodes only its rows of every global batch.
- GPU decoding: on CUDA (``data.gpu_decode``) workers only read the files' bytes and the batch is decoded with
  ``torchvision.io.decode_jpeg(device="cuda")`` and transformed there (non-JPEG files are decoded on the CPU).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robprune.errors import DataError



@dataclass(frozen=True)
class Transforms:
    """What a streamed split does to each image (all sizes in pixels)."""

    channels: int = 3
    image_size: int | None = 224      # output side; None = keep (all images must match)
    resize: int | None = 256          # evaluation: shorter side before the centre crop; None = square resize
    resized_crop: tuple[float, float] | None = None  # training: RandomResizedCrop's scale range
    crop_padding: int = 0             # training: zero padding of the pad-crop (when no resized_crop)
    hflip: bool = False

    @property
    def random(self) -> bool:
        return bool(self.resized_crop or self.crop_padding or self.hflip)

    def record(self) -> dict:
        return {"channels": self.channels, "image_size": self.image_size, "resize": self.resize}

    def evaluate(self, img: torch.Tensor) -> torch.Tensor:
        """(C, H, W) uint8 -> the evaluation view (deterministic)."""
        from torchvision.transforms.v2 import functional as F

        if self.image_size is None:
            return img
        size = self.image_size
        if self.resize is not None:
            if min(img.shape[-2:]) != self.resize:
                img = F.resize(img, [self.resize], antialias=True)
            return F.center_crop(img, [size, size])
        return img if tuple(img.shape[-2:]) == (size, size) else F.resize(img, [size, size], antialias=True)

    def train(self, img: torch.Tensor, seed: int) -> torch.Tensor:
        """(C, H, W) uint8 -> a training view drawn from ``seed`` (a torch.Generator of its own)."""
        from torchvision.transforms.v2 import functional as F

        gen = torch.Generator().manual_seed(int(seed))
        if self.resized_crop is not None:
            top, left, h, w = resized_crop_box(img.shape[-2], img.shape[-1], self.resized_crop, gen)
            size = self.image_size or min(img.shape[-2:])
            img = F.resized_crop(img, top, left, h, w, [size, size], antialias=True)
        else:
            img = self.evaluate(img)
            if self.crop_padding:
                pad = self.crop_padding
                dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=gen))
                height, width = img.shape[-2:]
                img = F.pad(img, [pad, pad, pad, pad])[..., dy:dy + height, dx:dx + width]
        if self.hflip and bool(torch.rand(1, generator=gen) < 0.5):
            img = F.horizontal_flip(img)
        return img


def resized_crop_box(height: int, width: int, scale: tuple[float, float], gen: torch.Generator,
                     ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of RandomResizedCrop (torchvision's algorithm: ten tries of an area in ``scale`` and
    a log-uniform aspect ratio, then the largest centred crop of a ratio in range), drawn from ``gen``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=gen))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=gen)))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def read_image(path: str, channels: int, data: torch.Tensor | None = None) -> torch.Tensor:
    """(C, H, W) uint8 of one image (torchvision's decoders; PIL for formats they lack): the file at ``path``,
    or its bytes ``data`` when given (a member of a tar shard; ``path`` names it in errors). DataError naming
    it when it cannot be decoded."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    try:
        return decode_image(read_file(path) if data is None else data, mode=mode)
    except (RuntimeError, ValueError):
        pass
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path if data is None else io.BytesIO(data.numpy().tobytes())) as img:
            pixels = np.asarray(img.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"{path} cannot be decoded as an image ({err}); delete or replace it, or pass "
                        "data.skip_bad=true to leave unreadable images out") from None
    return torch.from_numpy(pixels.reshape(pixels.shape[0], pixels.shape[1], -1).copy()).permute(2, 0, 1)


class Files:
    """The files of one split: ``root`` plus relative paths (one compact numpy bytes array, cheap to send to
    worker processes) and their labels. A path ``shard.tar:offset:size`` names a member of a tar shard
    (WebDataset), read by seeking to its data."""

    def __init__(self, root: Path, rels: list[str], labels: torch.Tensor):
        self.root = str(root)
        self.rels = np.array([r.encode("utf-8", "surrogateescape") for r in rels], dtype=np.bytes_)
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.rels)

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.rels[int(i)].decode("utf-8", "surrogateescape"))

    def take(self, where: slice) -> "Files":
        """The files at positions ``where``."""
        out = Files.__new__(Files)
        out.root, out.rels = self.root, self.rels[where]
        out.labels = self.labels[torch.arange(len(self.rels))[where]]
        return out

    def member(self, i: int) -> tuple[str, int, int] | None:
        """(shard path, offset, size) of a tar member, None for a plain file."""
        rel = self.rels[int(i)].decode("utf-8", "surrogateescape")
        shard, sep, rest = rel.partition(".tar:")
        if not sep:
            return None
        offset, size = rest.split(":")
        return os.path.join(self.root, shard + ".tar"), int(offset), int(size)

    def read(self, i: int) -> torch.Tensor:
        """The bytes of item ``i`` as a 1-D uint8 tensor."""
        member = self.member(i)
        if member is None:
            from torchvision.io import read_file

            return read_file(self.path(i))
        return _read_member(*member)

    def image(self, i: int, channels: int) -> torch.Tensor:
        """(C, H, W) uint8 of item ``i`` (a file decoded from its path, a tar member from its bytes)."""
        member = self.member(i)
        return read_image(self.path(i), channels, None if member is None else _read_member(*member))


def _read_member(shard: str, offset: int, size: int) -> torch.Tensor:
    with open(shard, "rb") as f:
        f.seek(offset)
        return torch.frombuffer(bytearray(f.read(size)), dtype=torch.uint8)


class StreamImages:
    """A split as a lazy (N, C, H, W) uint8 tensor: ``x[idx]`` (int, slice, index tensor or array) decodes
    those images with the evaluation transform, ``threads`` at a time. ``pixels()`` gives a view whose items
    are float [0, 1] (what evaluation feeds the model)."""

    def __init__(self, files: Files, transforms: Transforms, threads: int = 0, *, scaled: bool = False):
        self.files, self.transforms, self.threads, self.scaled = files, transforms, int(threads), scaled
        self._pool: ThreadPoolExecutor | None = None
        self._shape: tuple[int, ...] | None = None

    def __getstate__(self) -> dict:  # the thread pool stays behind (workers, spawned ranks)
        return {**self.__dict__, "_pool": None}

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> torch.Size:
        if self._shape is None:  # the first image tells the channels and (without image_size) the size
            first = self.transforms.evaluate(self.files.image(0, self.transforms.channels))
            self._shape = tuple(first.shape)
        return torch.Size((len(self.files), *self._shape))

    @property
    def ndim(self) -> int:
        return 4

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.scaled else torch.uint8

    def pixels(self) -> "StreamImages":
        return StreamImages(self.files, self.transforms, self.threads, scaled=True)

    def _one(self, i: int) -> torch.Tensor:
        img = self.transforms.evaluate(self.files.image(i, self.transforms.channels))
        if self._shape is not None and tuple(img.shape) != self._shape:
            raise DataError(f"{self.files.path(i)} gives a {tuple(img.shape)} image but the split's images are "
                            f"{self._shape}; set dataset.image_size=<pixels> to resize all images")
        return img

    def __getitem__(self, idx: Any) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)) or (torch.is_tensor(idx) and idx.ndim == 0):
            return self[[int(idx)]][0]
        if isinstance(idx, slice):
            idx = range(*idx.indices(len(self)))
        elif torch.is_tensor(idx) and idx.dtype == torch.bool:
            idx = idx.nonzero().squeeze(1)
        order = [int(i) for i in (idx.tolist() if hasattr(idx, "tolist") else idx)]
        _ = self.shape
        if not order:
            return torch.zeros((0, *self._shape), dtype=self.dtype)
        if self.threads > 1 and len(order) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="robprune-decode")
            images = list(self._pool.map(self._one, order))
        else:
            images = [self._one(i) for i in order]
        out = torch.stack(images)
        return out.float().div_(255.0) if self.scaled else out

    def to(self, *args, **kwargs):
        raise TypeError("a streamed split is decoded batch by batch: index it (x[idx]) and move the batch")


def with_augment(transforms: Transforms, augment) -> Transforms:
    """``transforms`` with the training augmentation of a ``dataset.augment`` node."""
    from dataclasses import replace

    from robprune.data.loader import augment_options

    pad, hflip, scale = augment_options(augment)
    return replace(transforms, crop_padding=pad, hflip=hflip, resized_crop=scale)


@dataclass(frozen=True)
class Loading:
    """How streamed splits are read (the ``data`` node; never part of a key: batches do not depend on it).

    num_workers: DataLoader processes for training batches and decode threads for evaluation (0: this
    process); gpu_decode: 'auto' (on CUDA) | True | False; skip_bad: leave out images that are not whole
    (a warning names them) instead of refusing the run."""

    num_workers: int = 0
    gpu_decode: Any = "auto"
    skip_bad: bool = False

    def gpu_decode_on(self, device: torch.device) -> bool:
        return device.type == "cuda" and self.gpu_decode in ("auto", True)

    @classmethod
    def of(cls, node) -> "Loading":
        """From the ``data`` node (missing keys: the defaults); ConfigError on a bad value."""
        from robprune.errors import ConfigError

        if node is None:
            return cls()
        workers = node.get("num_workers", 0)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"data.num_workers must be an integer >= 0 (DataLoader processes; 0 = read in the "
                              f"main process), got {workers!r}; e.g. data.num_workers=8")
        gpu = node.get("gpu_decode", "auto")
        if gpu not in ("auto", True, False):
            raise ConfigError(f"data.gpu_decode must be auto, true or false, got {gpu!r}")
        return cls(int(workers), gpu, bool(node.get("skip_bad", False)))
