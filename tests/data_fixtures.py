"""Writers of tiny dataset files in the real on-disk formats (IDX, CIFAR pickle batches, SVHN .mat,
PNG folders), and a helper that composes a dataset config from the real conf/dataset/<name>.yaml."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

CONF_DATASET = Path(__file__).resolve().parents[1] / "conf" / "dataset"


def dataset_cfg(name: str, root: Path | str | None = None, **overrides) -> DictConfig:
    """``conf/dataset/<name>.yaml`` under a root config with ``data.root``/``data.download``, as Hydra composes it."""
    cfg = OmegaConf.create({"data": {"root": str(root) if root is not None else None, "download": False},
                            "dataset": OmegaConf.load(CONF_DATASET / f"{name}.yaml")})
    for key, value in overrides.items():
        cfg.dataset[key] = value
    return cfg.dataset


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic (0, 0, 0x08, ndim), big-endian int32 dims, raw data."""
    assert array.dtype == np.uint8
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_mnist(root: Path, n_train: int, n_test: int, *, seed: int = 0, gz: bool = True,
               size: int = 28) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Four MNIST-named IDX files in ``root``; returns {split: (images (N, H, W), labels (N,))}."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)
        out[split] = (images, labels)
    return out


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], label_key: str, *, bytes_keys: bool = True) -> None:
    """One CIFAR batch: dict with data (N, 3072) uint8 and a label list, pickled with protocol 2."""
    def key(k: str):
        return k.encode() if bytes_keys else k

    entry = {key("data"): data, key(label_key): labels, key("batch_label"): key("fixture")}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(entry, fh, protocol=2)


def make_cifar10(folder: Path, per_batch: int, n_test: int, *, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """data_batch_1..5 and test_batch in ``folder``; returns {split: ((N, 3, 32, 32) images, labels)}."""
    rng = np.random.default_rng(seed)
    parts, out = [], {}
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        write_cifar_batch(folder / f"data_batch_{i}", data, labels, "labels")
        parts.append((data, labels))
    out["train"] = (np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32),
                    np.concatenate([p[1] for p in parts]))
    data = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n_test).tolist()
    write_cifar_batch(folder / "test_batch", data, labels, "labels")
    out["test"] = (data.reshape(-1, 3, 32, 32), np.asarray(labels))
    return out


def write_svhn(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """SVHN .mat: X (32, 32, 3, N) uint8 from (N, 3, 32, 32) images, y (N, 1) labels in 1..10."""
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"X": np.ascontiguousarray(images.transpose(2, 3, 1, 0)),
                        "y": labels.reshape(-1, 1).astype(np.uint8)})


def write_png(path: Path, pixels: np.ndarray) -> None:
    """PNG of (H, W, 3) or (H, W) uint8 pixels."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
