"""Training batches of a streamed split through ``torch.utils.data.DataLoader`` workers (docs/concepts/data-and-models.md#streamed-datasets):
:class:`StreamLoader` draws an epoch's order and per-example seeds when the epoch starts, a batch sampler hands
each rank its rows of every global batch, workers decode and transform (:mod:`robprune.data.stream`), and on
CUDA the batch can be decoded on the GPU (nvJPEG)."""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch

from robprune.data.stream import Files, Transforms, read_image

_MAX_SEED = 2 ** 62


class _Decode(torch.utils.data.Dataset):
    """Worker side: item (index, seed) -> (uint8 image, label); seed < 0 means the evaluation transform. With
    ``raw`` the file's bytes and the seed come back instead (the batch is decoded on the GPU)."""

    def __init__(self, files: Files, transforms: Transforms, raw: bool):
        self.files, self.transforms, self.raw = files, transforms, raw

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        path = self.files.path(index)
        label = self.files.labels[index]
        if self.raw:
            return self.files.read(index), int(seed), path, label
        img = self.files.image(index, self.transforms.channels)
        return (self.transforms.train(img, seed) if seed >= 0 else self.transforms.evaluate(img)), label


def _collate_raw(items):
    return [i[0] for i in items], [i[1] for i in items], [i[2] for i in items], torch.stack([i[3] for i in items])


class _Batches:
    """The batch sampler: the current epoch's (index, seed) rows, this rank's share of every global batch."""

    def __init__(self, n: int, batch_size: int, drop_last: bool, rank: int, world: int):
        self.n, self.batch_size, self.drop_last, self.rank, self.world = n, batch_size, drop_last, rank, world
        self.order = torch.arange(n)
        self.seeds: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self):
        for b in range(len(self)):
            rows = range(b * self.batch_size, min((b + 1) * self.batch_size, self.n))
            mine = [r for r in rows][self.rank::self.world]
            if not mine:  # a final global batch smaller than the world: no rank gets rows
                continue
            yield [(int(self.order[r]), -1 if self.seeds is None else int(self.seeds[r])) for r in mine]

    def global_sizes(self) -> list[int]:
        return [min((b + 1) * self.batch_size, self.n) - b * self.batch_size for b in range(len(self))]


class StreamLoader:
    """Float [0, 1] (B, C, H, W) batches and (B,) labels of a streamed split on ``device``, decoded by
    ``num_workers`` DataLoader processes (0: in this process). Same keywords as
    :class:`~robprune.data.loader.BatchLoader`; ``augment`` is the split's :class:`Transforms` (evaluation
    only when it draws nothing or for ``shuffle=False`` loaders)."""

    def __init__(self, files: Files, transforms: Transforms, batch_size: int, *, shuffle: bool,
                 generator: torch.Generator | None = None, device: str | torch.device = "cpu",
                 drop_last: bool = False, num_workers: int = 0, gpu_decode: bool = False, rank: int = 0,
                 world: int = 1, prefetch: int = 4):
        self.files, self.transforms, self.batch_size = files, transforms, int(batch_size)
        self.shuffle, self.generator, self.device, self.drop_last = shuffle, generator, torch.device(device), drop_last
        self.num_workers, self.gpu_decode, self.prefetch = int(num_workers), bool(gpu_decode), prefetch
        self.rank, self.world = rank, world
        self._sampler = _Batches(len(files), self.batch_size, drop_last, rank, world)
        self._loader = None

    @property
    def sharded(self) -> bool:
        """Batches are already this rank's rows (the loop must not slice them again)."""
        return self.world > 1

    def shard(self, rank: int, world: int) -> "StreamLoader":
        """The same loader for rank ``rank`` of ``world``: it yields (x, y, global batch size) with its rows."""
        return StreamLoader(self.files, self.transforms, self.batch_size, shuffle=self.shuffle, generator=self.generator,
                            device=self.device, drop_last=self.drop_last, num_workers=self.num_workers,
                            gpu_decode=self.gpu_decode, rank=rank, world=world, prefetch=self.prefetch)

    def __len__(self) -> int:
        return len(self._sampler)

    def _dataloader(self):
        if self._loader is None:
            workers = self.num_workers
            self._loader = torch.utils.data.DataLoader(
                _Decode(self.files, self.transforms, self.gpu_decode), batch_sampler=self._sampler,
                num_workers=workers, pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                prefetch_factor=self.prefetch if workers > 0 else None,
                collate_fn=_collate_raw if self.gpu_decode else None)
        return self._loader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n, gen = len(self.files), self.generator
        # every draw of the epoch here, eagerly (robprune.data.loader's contract)
        self._sampler.order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        self._sampler.seeds = (torch.randint(0, _MAX_SEED, (n,), generator=gen)
                               if self.shuffle and self.transforms.random else None)
        return self._batches(self._sampler.global_sizes())

    def _batches(self, sizes: list[int]):
        sizes = [s for s in sizes if self.world == 1 or s >= self.world]
        for n_global, batch in zip(sizes, self._dataloader()):
            if self.gpu_decode:
                x, y = self._decode_on_device(*batch)
            else:
                x, y = batch
                x = x.to(self.device, non_blocking=True)
            x = x.float().div_(255.0)
            y = y.to(self.device, non_blocking=True)
            yield (x, y, n_global) if self.sharded else (x, y)

    def _decode_on_device(self, data: list, seeds: list, paths: list, y: torch.Tensor):
        """Decode a batch of file bytes with nvJPEG (``decode_jpeg(device=...)``), then transform each image."""
        from torchvision.io import ImageReadMode, decode_jpeg

        mode = ImageReadMode.RGB if self.transforms.channels == 3 else ImageReadMode.GRAY
        jpeg = [i for i, d in enumerate(data) if len(d) > 1 and int(d[0]) == 0xFF and int(d[1]) == 0xD8]
        images: list[Any] = [None] * len(data)
        if jpeg:
            for i, img in zip(jpeg, decode_jpeg([data[i] for i in jpeg], mode=mode, device=self.device)):
                images[i] = img
        for i, img in enumerate(images):
            if img is None:  # PNG inside a .JPEG name, or another format: the CPU decoder
                images[i] = read_image(paths[i], self.transforms.channels, data[i]).to(self.device)
        out = [self.transforms.train(img, s) if s >= 0 else self.transforms.evaluate(img) for img, s in zip(images, seeds)]
        return torch.stack(out), y
