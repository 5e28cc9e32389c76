"""What every dataset provides (:class:`Source`), config-reading helpers, and the uint8 decode cache."""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from robprune.data.faults import collected, warn
from robprune.errors import ConfigError, DataError
from robprune.io import atomic_save_tensors, source_fingerprint

Arrays = tuple[torch.Tensor, torch.Tensor]  # x (N, C, H, W) uint8, y (N,) int64
_REQUIRED = object()


@dataclass(frozen=True)
class Source:
    """One dataset in the registry.

    splits(cfg): base split names it offers (e.g. ``('train', 'test')``).
    locate(cfg, split): the source files of a base split, downloading them first if the config allows;
        raises DataError when they cannot be found. ``None`` for in-memory datasets (no cache then).
    decode(cfg, split, files): the decoded base split as uint8 images and int64 labels.
    num_classes(cfg): class count discovered from the data, for datasets whose config may leave it null.
    cache_keys: config keys that change the decoded result and so enter the cache fingerprint.
    listing(cfg, split, cache_dir): the base split as a :class:`robprune.data.stream.Listing` (files, labels,
        manifest digest) for ``dataset.storage: stream``; None when the source can only be decoded whole.
    decode is None for sources that only stream (ImageNet).
    example_files: locate returns one file per example, in split order (an image folder); warnings name them.
    class_folder(cfg, split, label): where the images of class ``label`` of base split ``split`` belong and that
        it holds none ('<folder> holds no images'): a test class with no training image is then refused
        (robprune.data.faults.unseen_classes).
    """

    splits: Callable[[DictConfig], tuple[str, ...]]
    decode: Callable[[DictConfig, str, list[Path]], Arrays] | None
    locate: Callable[[DictConfig, str], list[Path]] | None = None
    num_classes: Callable[[DictConfig], int] | None = None
    cache_keys: tuple[str, ...] = field(default=())
    listing: Callable[[DictConfig, str, Any], Any] | None = None
    example_files: bool = False
    class_folder: Callable[[DictConfig, str, int], str] | None = None

    def storage(self, cfg: DictConfig) -> str:
        """'stream' or 'memory': ``dataset.storage`` where the source offers both, else the one it has."""
        if self.listing is None:
            return "memory"
        if self.decode is None:
            return "stream"
        value = str(get(cfg, "storage", "memory"))
        if value not in ("memory", "stream"):
            raise ConfigError(f"dataset.storage={value!r} is not a storage; use memory (decoded once into RAM) "
                              "or stream (read from disk per batch)")
        return value


def get(cfg: DictConfig, key: str, default: Any = _REQUIRED) -> Any:
    """``cfg[key]`` with ConfigErrors that name ``dataset.<key>`` (missing key, broken interpolation)."""
    try:
        if key not in cfg:
            if default is _REQUIRED:
                raise ConfigError(f"dataset.{key} is not set; add it to conf/dataset/{cfg.get('name', '<name>')}.yaml "
                                  f"or pass dataset.{key}=... on the command line")
            return default
        value = cfg[key]
    except OmegaConfBaseException as err:
        reason = str(err).splitlines()[0]
        raise ConfigError(f"dataset.{key} cannot be read ({reason}); define the key it refers to in the root "
                          f"config or pass dataset.{key}=<value>") from None
    if value is None:
        if default is _REQUIRED:
            raise ConfigError(f"dataset.{key} is null but required; set it, e.g. dataset.{key}=...")
        return default
    return value


def root_dir(cfg: DictConfig) -> Path:
    """Absolute ``dataset.root`` (``~`` expanded)."""
    root = get(cfg, "root", None)
    if root is None or str(root) == "":
        raise ConfigError(f"dataset.root is not set for dataset {cfg.get('name')!r}; "
                          "pass data.root=<folder with the dataset files>")
    return Path(str(root)).expanduser().resolve()


def missing_files(name: str, root: Path, wanted: list[str]) -> DataError:
    """The standard 'no files found' error, with the fix."""
    return DataError(f"dataset {name!r}: no files found under {root} (looked for {', '.join(wanted)}); "
                     "pass data.root=<folder with the files> or data.download=true")


def try_download(name: str, root: Path, fetch: Callable[[], Any]) -> None:
    """Run torchvision's download (``fetch``); any failure (offline, checksum) becomes a DataError."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetch()
    except Exception as err:  # noqa: BLE001 - network/archive errors come in many types
        raise DataError(f"dataset {name!r}: download into {root} failed ({type(err).__name__}: {err}); "
                        "check the network, or pass data.root=<folder with the files> and data.download=false") from None


def decoder_identity() -> dict[str, Any]:
    """What decodes the files: robprune's data/ code and the libraries that read images and .mat files.
    A change to any of them makes old decode-cache files stop matching (no format number to bump)."""
    from importlib import metadata

    versions = {}
    for name in ("numpy", "pillow", "scipy", "torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"code": source_fingerprint(str(Path(__file__).resolve().parent)), **versions}


def fingerprint(files: list[Path], extra: dict[str, Any]) -> str:
    """16 hex digits over (absolute path, size, mtime_ns) of each source file, the decode options and
    :func:`decoder_identity`."""
    stats = []
    for path in files:
        st = path.stat()
        stats.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps([decoder_identity(), stats, extra], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_split(source: Source, cfg: DictConfig, split: str, cache_dir: str | Path | None) -> tuple[Arrays, list[Path]]:
    """Decode one base split, or load it from ``cache_dir`` when an up-to-date cache file exists; also the files
    :attr:`Source.locate` found. The warnings the decoding issued (images converted) are kept in the cache file
    and issued again when it is read, so that every run records them."""
    if source.locate is None:
        return source.decode(cfg, split, []), []
    files = source.locate(cfg, split)
    if cache_dir is None:
        return source.decode(cfg, split, files), files
    extra = {k: _plain(get(cfg, k, None)) for k in source.cache_keys}
    path = Path(cache_dir).expanduser() / f"{cfg.name}-{split}-{fingerprint(files, extra)}.safetensors"
    cached = _read_cache(path)
    if cached is None:
        with collected() as notes:
            x, y = source.decode(cfg, split, files)
        atomic_save_tensors(path, {"x": x, "y": y}, metadata={"dataset": str(cfg.name), "split": split,
                                                            "files": ";".join(str(f) for f in files),
                                                            "warnings": json.dumps(notes)})
        cached = (x, y), notes
    arrays, notes = cached
    for note in notes:
        warn(note)
    return arrays, files


def _read_cache(path: Path) -> tuple[Arrays, list[str]] | None:
    """Tensors and decoding warnings of a cache file, or None when absent or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            x, y, notes = f.get_tensor("x"), f.get_tensor("y"), json.loads((f.metadata() or {}).get("warnings", "[]"))
        if x.dtype != torch.uint8 or y.dtype != torch.int64 or x.ndim != 4 or len(x) != len(y):
            raise ValueError("unexpected tensor shapes or dtypes")
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise ValueError("unexpected warnings metadata")
    except Exception as err:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
        warnings.warn(f"ignoring unreadable data cache {path} ({err}); decoding the source files again", stacklevel=3)
        return None
    return (x, y), notes


def _plain(value: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
