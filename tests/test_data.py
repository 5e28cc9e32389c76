"""robprune.data: real-format fixture files through the real loaders, split slicing, errors, cache, BatchLoader."""
from __future__ import annotations

import gzip
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.data_fixtures import (CONF_DATASET, dataset_cfg, idx_bytes, make_cifar10, make_mnist, write_cifar_batch,
                           write_png, write_svhn)
from robprune.data import BatchLoader, build_data, parse_split
from robprune.errors import ConfigError, DataError

REAL_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


# ---------------------------------------------------------------- split strings

@pytest.mark.parametrize("spec, n, expected", [
    ("train", 10, (0, 10)), ("train[:80%]", 10, (0, 8)), ("test[8000:]", 10000, (8000, 10000)),
    ("test[:8000]", 10000, (0, 8000)), ("train[10%:20%]", 15, (1, 3)), ("test[-3:]", 10, (7, 10)),
    ("train[:-10%]", 25, (0, 23)), ("valid[2:5]", 9, (2, 5)),
])
def test_parse_split_resolves(spec, n, expected):
    name, part = parse_split(spec)
    assert name == spec.split("[")[0]
    where = part.resolve(n)
    assert (where.start, where.stop) == expected


@pytest.mark.parametrize("spec", ["train[::2]", "train[abc]", "train[1.5:]", "train[:80 %]", "[:5]", "train[5]",
                                  "train[:150%]", "train)"])
def test_parse_split_rejects(spec):
    with pytest.raises(ConfigError, match=re.escape(f"dataset.test_split={spec!r} does not parse")):
        parse_split(spec, key="dataset.test_split")


@pytest.mark.parametrize("key", ["train_split", "test_split"])
@pytest.mark.parametrize("spec, message", [("train[abc]", "does not parse"), ("train[5:2]", "empty"),
                                           ("train[50:60]", "out of range"), ("valid", "names no split")])
def test_bad_split_in_config_names_the_key(key, spec, message):
    cfg = dataset_cfg("synthetic", num_train=20, num_test=5, **{key: spec})
    with pytest.raises(ConfigError, match=rf"dataset\.{key}=.*{message}"):
        build_data(cfg)


def test_unknown_dataset_name():
    with pytest.raises(ConfigError, match="dataset.name='nope' is not a known dataset"):
        build_data(OmegaConf.create({"name": "nope"}))


# ---------------------------------------------------------------- MNIST / Fashion-MNIST (IDX)

def test_mnist_idx_gz_round_trip_and_slices(tmp_path):
    ref = make_mnist(tmp_path, n_train=30, n_test=20)
    bundle = build_data(dataset_cfg("mnist", tmp_path, train_split="train[:80%]", test_split="test[12:]"))
    assert bundle.train_x.shape == (24, 1, 28, 28) and bundle.train_x.dtype == torch.uint8
    assert bundle.test_x.shape == (8, 1, 28, 28) and bundle.test_y.dtype == torch.int64
    assert np.array_equal(bundle.train_x[:, 0].numpy(), ref["train"][0][:24])
    assert np.array_equal(bundle.test_x[:, 0].numpy(), ref["test"][0][12:])
    assert bundle.test_y.tolist() == ref["test"][1][12:].tolist()
    assert (bundle.in_channels, bundle.image_size, bundle.num_classes) == (1, 28, 10)
    assert bundle.mean == (0.1307,) and bundle.std == (0.3081,)


def test_fashion_mnist_uncompressed_in_torchvision_layout(tmp_path):
    ref = make_mnist(tmp_path / "FashionMNIST" / "raw", n_train=6, n_test=4, gz=False, seed=3)
    bundle = build_data(dataset_cfg("fashion_mnist", tmp_path))
    assert np.array_equal(bundle.train_x[:, 0].numpy(), ref["train"][0])
    assert bundle.train_y.tolist() == ref["train"][1].tolist()
    assert bundle.test_x.shape == (4, 1, 28, 28)


def test_mnist_test_only_folder_serves_test_slices_but_not_train(tmp_path):
    make_mnist(tmp_path, n_train=5, n_test=10)
    for f in tmp_path.glob("train-*"):
        f.unlink()
    bundle = build_data(dataset_cfg("mnist", tmp_path, train_split="test[:6]", test_split="test[6:]"))
    assert (len(bundle.train_x), len(bundle.test_x)) == (6, 4)
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        build_data(dataset_cfg("mnist", tmp_path))


def test_missing_root_names_dataset_and_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        build_data(dataset_cfg("mnist", missing))
    text = str(err.value)
    assert text.startswith("DataError: dataset 'mnist': no files found under ") and str(missing.resolve()) in text
    assert "t10k-images-idx3-ubyte[.gz]" in text or "train-images-idx3-ubyte[.gz]" in text
    assert "data.download=true" in text


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "imagefolder"])
def test_missing_files_for_every_file_dataset(tmp_path, name):
    with pytest.raises(DataError, match=rf"dataset '{name}': no files found under {re.escape(str(tmp_path))}"):
        build_data(dataset_cfg(name, tmp_path))


def test_truncated_gzip_names_the_file(tmp_path):
    make_mnist(tmp_path, n_train=4, n_test=4)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-40])  # cut the gzip stream short
    with pytest.raises(DataError, match=re.escape(str(bad)) + " is truncated or corrupt"):
        build_data(dataset_cfg("mnist", tmp_path))


def test_truncated_idx_payload_reports_expected_size(tmp_path):
    make_mnist(tmp_path, n_train=4, n_test=4)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(idx_bytes(np.zeros(4, np.uint8))[:-1]))  # valid gzip, one label byte missing
    with pytest.raises(DataError, match=re.escape(str(bad)) + r".*expected 4 bytes.*found 3.*download again"):
        build_data(dataset_cfg("mnist", tmp_path))


# ---------------------------------------------------------------- CIFAR

def test_cifar10_batches_round_trip(tmp_path):
    ref = make_cifar10(tmp_path / "cifar-10-batches-py", per_batch=4, n_test=6)
    bundle = build_data(dataset_cfg("cifar10", tmp_path, test_split="test[-2:]"))
    assert bundle.train_x.shape == (20, 3, 32, 32) and bundle.test_x.shape == (2, 3, 32, 32)
    assert torch.equal(bundle.train_x, torch.from_numpy(ref["train"][0]))
    assert bundle.train_y.tolist() == ref["train"][1].tolist()
    assert torch.equal(bundle.test_x, torch.from_numpy(ref["test"][0][-2:]))
    assert len(bundle.mean) == 3 and bundle.image_size == 32


def test_cifar100_fine_labels_str_keys_in_root(tmp_path):
    rng = np.random.default_rng(1)
    data = {s: rng.integers(0, 256, (n, 3072), dtype=np.uint8) for s, n in (("train", 7), ("test", 3))}
    labels = {"train": [0, 99, 5, 17, 42, 98, 1], "test": [3, 99, 0]}
    for split in ("train", "test"):  # str keys, as the Python-2 originals load with encoding='latin1'
        write_cifar_batch(tmp_path / split, data[split], labels[split], "fine_labels", bytes_keys=False)
    bundle = build_data(dataset_cfg("cifar100", tmp_path))
    assert bundle.num_classes == 100 and bundle.train_y.tolist() == labels["train"]
    assert np.array_equal(bundle.test_x.reshape(3, -1).numpy(), data["test"])


def test_cifar_batch_with_foreign_object_is_refused(tmp_path):
    make_cifar10(tmp_path, per_batch=2, n_test=2)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": os.system, b"labels": [0]}, fh, protocol=2)
    with pytest.raises(DataError, match="test_batch is truncated or corrupt.*refusing to load"):
        build_data(dataset_cfg("cifar10", tmp_path))


# ---------------------------------------------------------------- SVHN

def test_svhn_mat_maps_label_10_to_0(tmp_path):
    rng = np.random.default_rng(2)
    images = {s: rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8) for s, n in (("train", 5), ("test", 4))}
    labels = {"train": np.array([10, 1, 2, 10, 9]), "test": np.array([3, 10, 4, 5])}
    for split in images:
        write_svhn(tmp_path / f"{split}_32x32.mat", images[split], labels[split])
    bundle = build_data(dataset_cfg("svhn", tmp_path))
    assert bundle.train_y.tolist() == [0, 1, 2, 0, 9] and bundle.test_y.tolist() == [3, 0, 4, 5]
    assert torch.equal(bundle.train_x, torch.from_numpy(images["train"]))
    assert bundle.test_x.shape == (4, 3, 32, 32)


# ---------------------------------------------------------------- image folders

def _folder(root: Path, split_level: bool, size=(6, 6), per_class=5) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(4)
    made: dict[str, list[np.ndarray]] = {}
    for split in (["train", "test"] if split_level else [""]):
        for cls in ("zebra", "ant", "mole"):
            for i in range(per_class):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                write_png(root / split / cls / f"{i}.png", pixels)
                made.setdefault(split, []).append(pixels)
    return made


def test_imagefolder_with_split_folders(tmp_path):
    _folder(tmp_path, split_level=True)
    bundle = build_data(dataset_cfg("imagefolder", tmp_path))
    assert bundle.train_x.shape == (15, 3, 6, 6) and bundle.num_classes == 3
    assert bundle.train_y.tolist() == [0] * 5 + [1] * 5 + [2] * 5  # ant, mole, zebra: alphabetical
    from PIL import Image
    first = np.asarray(Image.open(tmp_path / "train" / "ant" / "0.png"))
    assert np.array_equal(bundle.train_x[0].permute(1, 2, 0).numpy(), first)


def test_imagefolder_flat_sliced_grayscale_resized(tmp_path):
    _folder(tmp_path, split_level=False, size=(5, 7))
    cfg = dataset_cfg("imagefolder", tmp_path, train_split="train[:80%]", test_split="train[80%:]",
                      channels=1, image_size=4, mean=[0.5], std=[0.25])
    bundle = build_data(cfg)
    assert bundle.train_x.shape == (12, 1, 4, 4) and bundle.test_x.shape == (3, 1, 4, 4)
    assert set(bundle.train_y.tolist()) == {0, 1, 2}  # the fixed permutation mixes classes into both parts
    assert bundle.mean == (0.5,) and bundle.std == (0.25,)


def test_imagefolder_mixed_sizes_need_image_size(tmp_path):
    _folder(tmp_path, split_level=False)
    write_png(tmp_path / "ant" / "big.png", np.zeros((9, 9, 3), np.uint8))
    with pytest.raises(DataError, match="set dataset.image_size"):
        build_data(dataset_cfg("imagefolder", tmp_path, train_split="train[:50%]", test_split="train[50%:]"))


def test_non_square_images_have_no_image_size(tmp_path):
    _folder(tmp_path, split_level=True, size=(4, 6))
    with pytest.raises(DataError, match="4x6 images"):
        _ = build_data(dataset_cfg("imagefolder", tmp_path)).image_size


def test_num_classes_too_small_for_labels(tmp_path):
    make_mnist(tmp_path, n_train=40, n_test=5)
    with pytest.raises(DataError, match="dataset.num_classes=2"):
        build_data(dataset_cfg("mnist", tmp_path, num_classes=2))


# ---------------------------------------------------------------- cache

def test_cache_is_written_then_read_instead_of_decoding(tmp_path):
    from safetensors.torch import load_file, save_file

    make_mnist(tmp_path / "src", n_train=8, n_test=6)
    cache = tmp_path / "cache"
    first = build_data(dataset_cfg("mnist", tmp_path / "src"), cache_dir=cache)
    files = sorted(cache.glob("mnist-test-*.safetensors"))
    assert len(files) == 1 and len(list(cache.glob("mnist-train-*.safetensors"))) == 1
    # Plant different tensors under the same name: a cache hit must return them, not the source data.
    planted = load_file(str(files[0]))
    planted["y"] = torch.full_like(planted["y"], 7)
    save_file(planted, str(files[0]))
    second = build_data(dataset_cfg("mnist", tmp_path / "src"), cache_dir=cache)
    assert second.test_y.tolist() == [7] * 6 and torch.equal(second.test_x, first.test_x)
    # A changed source file (new mtime) no longer matches the fingerprint and is decoded again.
    src = tmp_path / "src" / "t10k-labels-idx1-ubyte.gz"
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    third = build_data(dataset_cfg("mnist", tmp_path / "src"), cache_dir=cache)
    assert torch.equal(third.test_y, first.test_y) and len(list(cache.glob("mnist-test-*"))) == 2


def test_decode_cache_follows_the_decoding_code(tmp_path, monkeypatch):
    """Editing robprune/data (or upgrading numpy/Pillow/scipy/torch) makes old decode-cache files stop
    matching: the data package's source fingerprint is part of every cache file's name."""
    import shutil

    from robprune.data import source
    from robprune.io import source_fingerprint

    copy = tmp_path / "data_pkg"
    shutil.copytree(Path(source.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_fingerprint(str(copy))
    with open(copy / "mnist.py", "a") as fh:
        fh.write("\n# a decoder edit\n")
    source_fingerprint.cache_clear()
    assert source_fingerprint(str(copy)) != before
    make_mnist(tmp_path / "src", n_train=8, n_test=6)
    cache = tmp_path / "cache"
    build_data(dataset_cfg("mnist", tmp_path / "src"), cache_dir=cache)
    edited = {**source.decoder_identity(), "code": source_fingerprint(str(copy))}
    monkeypatch.setattr(source, "decoder_identity", lambda: edited)   # as if robprune/data were the edited copy
    build_data(dataset_cfg("mnist", tmp_path / "src"), cache_dir=cache)
    assert len(list(cache.glob("mnist-test-*.safetensors"))) == 2


# ---------------------------------------------------------------- built-in datasets

def test_digits_defaults():
    bundle = build_data(dataset_cfg("digits"))
    assert len(bundle.train_x) + len(bundle.test_x) == 1797 and len(bundle.test_x) == 355
    assert bundle.train_x.shape[1:] == (1, 8, 8) and bundle.num_classes == 10
    assert int(bundle.train_x.max()) == 255 and set(bundle.test_y.tolist()) == set(range(10))


def test_synthetic_is_deterministic_per_seed():
    a, b = (build_data(dataset_cfg("synthetic", num_train=12, num_test=4)) for _ in range(2))
    c = build_data(dataset_cfg("synthetic", num_train=12, num_test=4, seed=1))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x) and not torch.equal(a.train_x[:4], a.test_x)
    assert a.train_x.shape == (12, 3, 32, 32)


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason=f"real MNIST copy not present at {REAL_MNIST}")
def test_real_mnist_test_tail():
    bundle = build_data(dataset_cfg("mnist", REAL_MNIST, train_split="test[:8000]", test_split="test[8000:]"))
    assert bundle.test_x.shape == (2000, 1, 28, 28) and bundle.test_y.shape == (2000,)
    assert sorted(set(bundle.test_y.tolist())) == list(range(10))
    assert 0.10 < bundle.test_x.float().mean().item() / 255 < 0.16  # MNIST's mean ink ≈ 0.13


def test_every_dataset_yaml_matches_the_registry():
    from robprune.registry import DATASETS

    images, texts = set(DATASETS.names(modality="image")), set(DATASETS.names(modality="text"))
    stems = {p.stem for p in CONF_DATASET.glob("*.yaml")}
    assert stems == images | texts == set(DATASETS) and not images & texts
    for path in CONF_DATASET.glob("*.yaml"):
        assert OmegaConf.load(path).name == path.stem
        for line in path.read_text().splitlines():
            assert not line.strip() or "#" in line, f"{path.name}: key without a comment: {line!r}"


# ---------------------------------------------------------------- BatchLoader

def _images(n=10, size=6, channels=2):
    return torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(9), dtype=torch.uint8)


def _epoch(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_loader_float_range_order_and_drop_last():
    x, y = _images(), torch.arange(10)
    loader = BatchLoader(x, y, 4, shuffle=False)
    xb, yb = _epoch(loader)
    assert len(loader) == 3 and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert torch.equal(xb, x.float() / 255) and 0 <= xb.min() and xb.max() <= 1
    dropped = BatchLoader(x, y, 4, shuffle=False, drop_last=True)
    assert len(dropped) == 2 and [len(b[1]) for b in dropped] == [4, 4]


def test_loader_shuffle_is_seeded():
    x, y = _images(n=50), torch.arange(50)
    def order(seed):
        return _epoch(BatchLoader(x, y, 8, shuffle=True, generator=torch.Generator().manual_seed(seed)))[1]
    assert torch.equal(order(1), order(1)) and not torch.equal(order(1), order(2))
    assert sorted(order(1).tolist()) == list(range(50))
    xb, yb = _epoch(BatchLoader(x, y, 8, shuffle=True, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(xb, x[yb].float() / 255)  # images stay paired with their labels


def test_loader_resumes_from_saved_generator_state():
    x, y = _images(n=20), torch.arange(20)
    gen = torch.Generator().manual_seed(5)
    loader = BatchLoader(x, y, 6, shuffle=True, generator=gen, augment={"crop_padding": 1, "hflip": True})
    _epoch(loader)
    state = gen.get_state()
    second = _epoch(loader)
    gen.set_state(state)
    assert all(torch.equal(a, b) for a, b in zip(second, _epoch(loader), strict=True))


def test_augmentation_only_shifts_and_flips():
    pad, x, y = 2, _images(n=16), torch.arange(16)
    loader = BatchLoader(x, y, 5, shuffle=True, generator=torch.Generator().manual_seed(0),
                         augment=OmegaConf.create({"crop_padding": pad, "hflip": True}))
    xb, yb = _epoch(loader)
    assert xb.shape == (16, 2, 6, 6)
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    used = set()
    for out, label in zip(xb, yb, strict=True):
        out = (out * 255).round().to(torch.uint8)
        matches = [(dy, dx, flip) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for flip in (False, True)
                   if torch.equal(out, _crop(padded[label], dy, dx, flip))]
        assert matches, "augmented image is not a shifted/flipped copy of its source"
        used.update(matches)
    assert {m[2] for m in used} == {False, True} and len({m[:2] for m in used}) > 3


def _crop(img, dy, dx, flip):
    patch = img[:, dy:dy + 6, dx:dx + 6]
    return patch.flip(-1) if flip else patch


def test_augmentation_off_and_bad_options():
    x, y = _images(), torch.arange(10)
    off = BatchLoader(x, y, 10, shuffle=False, augment={"crop_padding": 0, "hflip": False})
    assert torch.equal(next(iter(off))[0], x.float() / 255)
    with pytest.raises(ConfigError, match="unknown key"):
        BatchLoader(x, y, 4, shuffle=False, augment={"crop": 4})
    with pytest.raises(ConfigError, match="crop_padding"):
        BatchLoader(x, y, 4, shuffle=False, augment={"crop_padding": -1})


@pytest.mark.gpu
def test_loader_on_cuda_matches_cpu():
    x, y = _images(n=20), torch.arange(20)
    def run(device):
        loader = BatchLoader(x, y, 6, shuffle=True, generator=torch.Generator().manual_seed(4),
                             augment={"crop_padding": 2, "hflip": True}, device=device)
        return _epoch(loader)
    gpu, cpu = run("cuda"), run("cpu")
    assert gpu[0].device.type == "cuda" and torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])
