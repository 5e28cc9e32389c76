"""dataset=tiny_imagenet on small trees in the real layout of tiny-imagenet-200.zip (real JPEGs written by
PIL), its download code on a real zip served over HTTP from 127.0.0.1, and its bad inputs."""
import functools
import hashlib
import re
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robprune.data import build_data, tiny_imagenet
from robprune.errors import ConfigError, DataError
from tests.data_fixtures import dataset_cfg

WNIDS = ("n02123045", "n01443537", "n01629819")  # wnids.txt order; labels follow the sorted order
COLOURS = {"n01443537": (220, 30, 30), "n01629819": (30, 200, 40), "n02123045": (40, 40, 230)}  # label 0, 1, 2
VAL_WNIDS = ("n01629819", "n02123045", "n01443537", "n01443537", "n02123045", "n01629819")


def _jpeg(path: Path, wnid: str, n: int, *, gray: bool = False) -> None:
    """A 64x64 JPEG in its class's colour with a little seeded noise."""
    rng = np.random.default_rng(n)
    pixels = np.clip(np.array(COLOURS[wnid]) + rng.integers(-12, 13, (64, 64, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    (image.convert("L") if gray else image).save(path, "JPEG", quality=95)


def make_tiny_imagenet(root: Path, *, n_train: int = 4) -> Path:
    """root/tiny-imagenet-200 with len(WNIDS) classes x n_train train images, 6 val and 2 test images;
    one train image is grayscale (as a few hundred real ones are). Returns the tiny-imagenet-200 folder."""
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in WNIDS))
    (base / "words.txt").write_text("".join(f"{w}\tsomething {i}\n" for i, w in enumerate(sorted(WNIDS))))
    for wnid in WNIDS:
        for n in range(n_train):
            _jpeg(base / "train" / wnid / "images" / f"{wnid}_{n}.JPEG", wnid, n, gray=(wnid, n) == (WNIDS[0], 1))
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text(
            "".join(f"{wnid}_{n}.JPEG\t0\t0\t63\t63\n" for n in range(n_train)))
    rows = []
    for n, wnid in enumerate(VAL_WNIDS):
        _jpeg(base / "val" / "images" / f"val_{n}.JPEG", wnid, 100 + n)
        rows.append(f"val_{n}.JPEG\t{wnid}\t{n}\t{n + 1}\t{40 + n}\t{50 + n}\n")
    (base / "val" / "val_annotations.txt").write_text("".join(rows))
    for n in range(2):
        _jpeg(base / "test" / "images" / f"test_{n}.JPEG", WNIDS[n], 200 + n)
    return base


def _label(wnid: str) -> int:
    return sorted(WNIDS).index(wnid)


def _pil_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1)


@pytest.fixture
def tree(tmp_path):
    return make_tiny_imagenet(tmp_path / "data")


def _cfg(root, **overrides):
    return dataset_cfg("tiny_imagenet", root, num_classes=None, **overrides)


def test_train_and_val_labels_shapes_and_pixels(tree):
    bundle = build_data(_cfg(tree.parent))
    assert bundle.train_x.shape == (12, 3, 64, 64) and bundle.test_x.shape == (6, 3, 64, 64)
    assert bundle.num_classes == 3 and bundle.image_size == 64 and bundle.in_channels == 3
    assert bundle.mean == pytest.approx((0.480, 0.448, 0.398))
    # train: class-then-name order, label = index of the wnid in sorted wnids.txt
    assert bundle.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # val: annotation-file order, label from the annotation (not from any folder)
    assert bundle.test_y.tolist() == [_label(w) for w in VAL_WNIDS]
    first_val = tree / "val" / "images" / "val_0.JPEG"
    assert np.array_equal(bundle.test_x[0].numpy(), _pil_pixels(first_val))
    gray = 4 + 4 + 1                                   # n02123045_1.JPEG (label 2) was written grayscale
    assert (bundle.train_x[gray] == bundle.train_x[gray][:1]).all()   # converted to three equal planes
    # every other image's colour is its label's colour: labels and pixels belong together
    colours = np.array([COLOURS[w] for w in sorted(WNIDS)])
    for x, y in ((bundle.train_x[np.arange(12) != gray], bundle.train_y[np.arange(12) != gray]),
                 (bundle.test_x, bundle.test_y)):
        mean_rgb = x.float().mean(dim=(2, 3)).numpy()
        assert np.abs(mean_rgb[:, None, :] - colours[None]).sum(-1).argmin(1).tolist() == y.tolist()


def test_root_may_be_the_extracted_folder_and_slices_cut_the_splits(tree):
    full = build_data(_cfg(tree.parent))
    part = build_data(_cfg(tree, train_split="train[:50%]", test_split="val[2:5]"))
    assert part.train_x.shape[0] == 6 and part.train_y.tolist() == full.train_y[:6].tolist()
    assert part.test_y.tolist() == full.test_y[2:5].tolist() and (part.test_x == full.test_x[2:5]).all()


def test_num_classes_is_checked_against_wnids(tree):
    with pytest.raises(ConfigError, match=r"dataset\.num_classes=200 but 3 class"):
        build_data(dataset_cfg("tiny_imagenet", tree.parent))


def test_decode_cache_is_reused_and_follows_the_annotations(tree, tmp_path):
    cache = tmp_path / "cache"
    first = build_data(_cfg(tree.parent), cache_dir=cache)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and all(f.startswith("tiny_imagenet-") for f in files)
    again = build_data(_cfg(tree.parent), cache_dir=cache)
    assert (again.test_x == first.test_x).all() and again.test_y.tolist() == first.test_y.tolist()
    annotations = tree / "val" / "val_annotations.txt"          # relabel val_0: the val cache must not be reused
    lines = annotations.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace(VAL_WNIDS[0], "n02123045")
    annotations.write_text("".join(lines))
    relabelled = build_data(_cfg(tree.parent), cache_dir=cache)
    assert relabelled.test_y[0].item() == _label("n02123045") != first.test_y[0].item()


def test_missing_val_annotations_names_the_file_and_the_fix(tree):
    (tree / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError) as err:
        build_data(_cfg(tree.parent))
    message = str(err.value)
    assert "\n" not in message and str(tree / "val" / "val_annotations.txt") in message
    assert "tiny-imagenet-200.zip" in message and "data.download=true" in message


def test_test_split_has_no_labels(tree):
    with pytest.raises(ConfigError, match=r"test images have no labels.*e\.g\. dataset\.test_split=val"):
        build_data(_cfg(tree.parent, test_split="test"))


@pytest.mark.parametrize("damage,message", [
    (lambda t: (t / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n"),
     r"val_annotations\.txt, line 1: expected .*wnids\.txt"),
    (lambda t: (t / "val" / "images" / "val_3.JPEG").unlink(), r"val_3\.JPEG is listed in .* but missing"),
    (lambda t: [p.unlink() for p in (t / "train" / "n01629819" / "images").iterdir()],
     r"n01629819/images holds no JPEG images"),
    (lambda t: Image.new("RGB", (32, 32)).save(t / "val" / "images" / "val_2.JPEG", "JPEG"), r"val_2\.JPEG is 32x32"),
    (lambda t: (t / "wnids.txt").write_text("\n"), r"wnids\.txt lists no class ids"),
], ids=["unknown wnid", "missing val image", "empty class folder", "wrong image size", "empty wnids"])
def test_damaged_tree_is_a_one_line_data_error(tree, damage, message):
    damage(tree)
    with pytest.raises(DataError, match=message) as err:
        build_data(_cfg(tree.parent))
    assert "\n" not in str(err.value)


def test_missing_tree_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=rf"dataset 'tiny_imagenet': no files found under {re.escape(str(tmp_path))}"
                                        r".*tiny-imagenet-200/wnids\.txt.*data\.download=true"):
        build_data(_cfg(tmp_path))


@pytest.fixture
def served_zip(tmp_path, monkeypatch):
    """A real tiny-imagenet-200.zip of a small tree served over HTTP from 127.0.0.1: (its URL, md5)."""
    for key in ("no_proxy", "NO_PROXY"):  # a configured proxy must not be asked for 127.0.0.1
        monkeypatch.setenv(key, "127.0.0.1,localhost")
    base = make_tiny_imagenet(tmp_path / "src", n_train=2)
    folder = tmp_path / "srv"
    folder.mkdir()
    with zipfile.ZipFile(folder / "tiny-imagenet-200.zip", "w") as zf:
        for path in sorted(base.rglob("*")):
            zf.write(path, path.relative_to(base.parent).as_posix())
    handler = functools.partial(QuietHandler, directory=str(folder))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        yield (f"http://127.0.0.1:{server.server_address[1]}/tiny-imagenet-200.zip",
               hashlib.md5((folder / "tiny-imagenet-200.zip").read_bytes()).hexdigest())
        server.shutdown()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request lines on stderr
        pass


def test_download_fetches_checks_and_extracts(served_zip, tmp_path):
    url, md5 = served_zip
    root = tmp_path / "data"
    tiny_imagenet.download(root, url=url, md5=md5)
    assert (root / "tiny-imagenet-200.zip").is_file() and (root / "tiny-imagenet-200" / "wnids.txt").is_file()
    bundle = build_data(_cfg(root))
    assert bundle.train_x.shape == (6, 3, 64, 64) and bundle.test_y.tolist() == [_label(w) for w in VAL_WNIDS]


def test_data_download_true_uses_the_downloader(served_zip, tmp_path, monkeypatch):
    """download=true on an empty root: the real locate -> download -> extract path, from the local zip."""
    url, md5 = served_zip
    monkeypatch.setattr(tiny_imagenet, "URL", url)
    monkeypatch.setattr(tiny_imagenet, "MD5", md5)
    bundle = build_data(_cfg(tmp_path / "fresh", download=True))
    assert bundle.train_y.tolist() == [0, 0, 1, 1, 2, 2] and len(bundle.test_y) == 6


def test_download_with_a_wrong_checksum_is_a_data_error(served_zip, tmp_path, monkeypatch):
    url, _ = served_zip
    monkeypatch.setattr(tiny_imagenet, "URL", url)       # MD5 stays the official zip's: this zip does not match
    with pytest.raises(DataError, match=r"dataset 'tiny_imagenet': download into .* failed \(RuntimeError: File not "
                                        r"found or corrupted\.\).*data\.download=false"):
        build_data(_cfg(tmp_path / "fresh", download=True))
