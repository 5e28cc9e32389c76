"""WebDataset tar shards (``dataset=webdataset``): the cluster format, ``<key>.jpg`` + ``<key>.cls`` members
in POSIX tar files, named by brace patterns such as ``imagenet-train-{000000..001281}.tar``
(docs/concepts/data-and-models.md#webdataset-shards).

robprune reads the shards by random access instead of as a stream: each shard is indexed once (member
offsets and labels, cached next to the manifests and keyed by the shard's path, size and mtime), after which a
sample is one seek and read. So shards get exactly the seeded order, per-example augmentation, worker
independence, data-parallel rows and evaluation subsets of every other streamed dataset. The data fingerprint
is the shards' (path, size, mtime). Reading needs a file system (local disk, NFS, Lustre); for object stores,
mount them (e.g. s3fs) or copy the shards first.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
import tarfile
from pathlib import Path

import torch
from omegaconf import DictConfig

from robprune.data.source import Source, get, root_dir
from robprune.data.listing import Listing
from robprune.errors import ConfigError, DataError
from robprune.options import Choice, Int, Value
from robprune.registry import DATASETS

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
INDEX_FORMAT = 1
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand(pattern: str) -> list[str]:
    """Brace expansion as WebDataset's ``braceexpand``: ``{000..003}`` (zero-padded ranges) and ``{a,b}``."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    ranged = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if ranged:
        lo, hi = ranged.groups()
        width = len(lo) if lo.startswith("0") else 0
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    return [out for item in items for out in expand(head + item + tail)]


def shards(cfg: DictConfig, split: str) -> list[Path]:
    """The shard files of ``dataset.<split>_shards`` (relative patterns under dataset.root), in pattern order."""
    key = f"dataset.{split}_shards"
    pattern = get(cfg, f"{split}_shards", None)
    if pattern is None:
        raise ConfigError(f"{key} is not set; give the shards' pattern, e.g. {key}='train-{{000000..000127}}.tar'")
    root = root_dir(cfg) if not os.path.isabs(str(pattern)) else Path("/")
    found: list[Path] = []
    for part in expand(str(pattern)):
        full = part if os.path.isabs(part) else str(root / part)
        found += [Path(p) for p in sorted(glob.glob(full))] if glob.has_magic(full) else ([Path(full)] if os.path.isfile(full) else [])
    if not found:
        raise ConfigError(f"{key}={pattern!r} matches no file under {root}; pass data.root=<folder with the shards> "
                          f"or a pattern such as {key}='train-{{000000..000127}}.tar'")
    return found


def index_shard(path: Path, cache_dir) -> list[tuple[str, int, int, int]]:
    """[(key, image offset, image size, label)] of one shard's samples, cached by (path, size, mtime)."""
    st = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}\x00{st.st_size}\x00{st.st_mtime_ns}".encode()).hexdigest()[:24]
    cache = None if cache_dir is None else Path(cache_dir).expanduser() / "manifests" / f"tar-{tag}.json.gz"
    if cache is not None and cache.is_file():
        try:
            with gzip.open(cache, "rt") as f:
                record = json.load(f)
            if record.get("format") == INDEX_FORMAT:
                return [tuple(row) for row in record["samples"]]
        except (OSError, ValueError, EOFError):
            pass  # rebuilt below
    samples = _read_index(path)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        with gzip.open(tmp, "wt") as f:
            json.dump({"format": INDEX_FORMAT, "samples": samples}, f)
        os.replace(tmp, cache)
    return samples


def _read_index(path: Path) -> list[tuple[str, int, int, int]]:
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, int] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                directory, name = os.path.split(member.name)
                stem, _, ext = name.partition(".")
                key = f"{directory}/{stem}" if directory else stem
                ext = ext.lower()
                if key not in images and key not in labels:
                    order.append(key)
                if ext in IMAGE_EXTENSIONS:
                    images[key] = (member.offset_data, member.size)
                elif ext == "cls":
                    text = tar.extractfile(member).read().decode().strip()
                    if not text.lstrip("-").isdigit():
                        raise DataError(f"{path}: {member.name} holds {text[:40]!r}, not a class index; a WebDataset "
                                        "sample's .cls member is the label as decimal text, e.g. '417'")
                    labels[key] = int(text)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path} is not a readable tar shard ({err}); replace it (WebDataset shards are plain POSIX "
                        "tar files, not compressed)") from None
    missing = next((k for k in order if k not in images or k not in labels), None)
    if missing is not None:
        what = f"an image ({'/'.join(IMAGE_EXTENSIONS)})" if missing not in images else "a .cls label"
        raise DataError(f"{path}: sample {missing!r} has no {what}; every sample needs <key>.jpg and <key>.cls")
    return [(k, *images[k], labels[k]) for k in order]


def _listing(cfg: DictConfig, split: str, cache_dir) -> Listing:
    files = shards(cfg, split)
    rels, labels, h = [], [], hashlib.sha256()
    for path in files:
        st = path.stat()
        h.update(f"{path.resolve()}\x00{st.st_size}\x00{st.st_mtime_ns}\n".encode())
        rel = str(path.resolve())[1:-len(".tar")] if str(path).endswith(".tar") else None
        if rel is None:
            raise ConfigError(f"{path} is not a .tar file; WebDataset shards are uncompressed .tar files")
        for _, offset, size, label in index_shard(path, cache_dir):
            rels.append(f"{rel}.tar:{offset}:{size}")
            labels.append(label)
    return Listing(Path("/"), rels, torch.tensor(labels, dtype=torch.int64), h.hexdigest(), [])


SOURCE = Source(splits=lambda cfg: ("train", "test"), decode=None, listing=_listing)

DATASETS.add("webdataset", SOURCE, modality="image", keys={
    "storage": Choice("stream", example="stream"), "train_shards": Value("str", null=True, example="train-{000..127}.tar"),
    "test_shards": Value("str", null=True, example="val-{000..006}.tar"), "image_size": Int(1, example="224"),
    "resize": Int(1, null=True, example="256"), "channels": Choice(1, 3, example="3")})
