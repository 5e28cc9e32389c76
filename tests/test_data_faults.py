"""Data faults drawn at random (Hypothesis), written as real files in the real layouts, then loaded in-process:
every fault is either refused in one line naming the file or folder and the fix, or accepted with a warning in
the bundle's audit (metrics.json ``warnings``) and, where the result cannot mean anything, a failing check.
Never a traceback, never a silent result (docs/concepts/data-faults.md). ``--fuzz-long`` draws more examples.

The two end-to-end runs through the real command (a missing training class refused, a warning recorded in
metrics.json) are in tests/test_cli.py.
"""
from __future__ import annotations

import gzip
import shutil
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from robprune.data import build_data
from robprune.data.text_sources import read_sst2
from robprune.errors import DataError, RobpruneError
from robprune.evaluate.checks import data_checks
from tests.data_fixtures import dataset_cfg, idx_bytes
from tests.text_fixtures import sentences, tiny_bert

CIFAR_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-images"


def fuzz(examples: int):
    """Seeded, small, no example database: the same draws on every machine."""
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def outcome(cfg):
    """(bundle, None) or (None, the one-line refusal); any other exception fails the test with its traceback."""
    try:
        bundle = build_data(cfg)
        event("accepted")
        return bundle, None
    except RobpruneError as err:
        event("refused")
        message = str(err)
        assert "\n" not in message and message.startswith(("DataError: ", "ConfigError: ")), message
        assert "; " in message, f"no fix after the fault: {message}"
        return None, message


def checks_of(bundle) -> dict:
    values, failed = data_checks(bundle.audit.overlap, bundle.audit.unseen, bundle.audit.n_test)
    return {**values, "failed": failed}


# ---------------------------------------------------------------- image folders

CLASSES, PER_SPLIT, SIDE = 3, {"train": 3, "test": 2}, 6
WARNED_MODES = ("L", "LA", "RGBA", "P", "P (transparent)", "1", "I;16", "CMYK")
REFUSED_MODES = ("I", "F")  # 32-bit pixels with no 8-bit reading


@dataclass(frozen=True)
class ImageFault:
    kind: str  # one of IMAGE_KINDS
    cls: int  # class c<cls>: every fault of an example has its own class, so that faults do not mask each other
    split: str
    index: int  # which image of the class folder
    extra: object = None  # truncated: fraction kept; garbage: the bytes; mode: the PIL mode


IMAGE_KINDS = ("empty_class", "missing_class", "zero_byte", "truncated", "garbage", "mode", "duplicate")
FILE_REFUSALS = ("zero_byte", "truncated", "garbage")


@st.composite
def image_faults(draw, accepted: bool = False) -> ImageFault:
    """Any fault, or (accepted) one that a run accepts with a warning."""
    kind = draw(st.sampled_from(("empty_class", "mode", "duplicate") if accepted else IMAGE_KINDS))
    split = {"missing_class": "train", "duplicate": "test"}.get(kind) or ("test" if accepted and kind == "empty_class"
                                                                          else draw(st.sampled_from(("train", "test"))))
    extra = {"truncated": st.floats(0, 1, exclude_max=True), "garbage": st.binary(min_size=1, max_size=64),
             "mode": st.sampled_from(WARNED_MODES if accepted else WARNED_MODES + REFUSED_MODES)}.get(kind, st.none())
    return ImageFault(kind, draw(st.integers(0, CLASSES - 1)), split, draw(st.integers(0, PER_SPLIT[split] - 1)),
                      draw(extra))


def image_tree(root: Path, suffix: str, seed: int = 0) -> None:
    """root/{train,test}/c<k>/<i><suffix>: distinct RGB noise images, SIDE pixels square."""
    rng = np.random.default_rng(seed)
    for split, n in PER_SPLIT.items():
        for c in range(CLASSES):
            for i in range(n):
                pixels = np.clip(rng.normal(40 + 80 * c, 40, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
                path = root / split / f"c{c}" / f"{i}{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)


def write_mode(folder: Path, stem: str, mode: str) -> Path:
    """An image of SIDE x SIDE pixels in ``mode``, in a format that keeps that mode; its pixels differ from
    folder to folder (two alike would be a duplicate across the splits, another fault)."""
    rng = np.random.default_rng(zlib.crc32(f"{folder.parent.name}/{folder.name}/{stem}/{mode}".encode()))
    rgb = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    if mode == "I":  # a 16-bit PGM: PIL reads it as 32-bit integers
        path = folder / f"{stem}.pgm"
        path.write_bytes(f"P5\n{SIDE} {SIDE}\n65535\n".encode() + rng.integers(0, 65536, (SIDE, SIDE)).astype(">u2").tobytes())
        return path
    if mode == "F":
        path = folder / f"{stem}.tif"
        Image.fromarray(rng.random((SIDE, SIDE), dtype=np.float32)).save(path)
        return path
    path = folder / f"{stem}.{'jpg' if mode == 'CMYK' else 'png'}"
    image = {"L": lambda: Image.fromarray(rgb[..., 0]), "LA": lambda: Image.fromarray(rgb[..., :2].copy()),
             "RGBA": lambda: Image.fromarray(np.dstack([rgb, rgb[..., :1]])),
             "P": lambda: Image.fromarray(rgb).convert("P"), "P (transparent)": lambda: Image.fromarray(rgb).convert("P"),
             "1": lambda: Image.fromarray(rgb[..., 0] > 127),
             "I;16": lambda: Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
             "CMYK": lambda: Image.fromarray(rgb).convert("CMYK")}[mode]()
    image.save(path, **({"transparency": 0} if mode == "P (transparent)" else {}))
    return path


def apply_image_fault(root: Path, fault: ImageFault, suffix: str) -> Path:
    """Write ``fault`` into the tree; returns the file or folder a message must name."""
    folder = root / fault.split / f"c{fault.cls}"
    target = folder / f"{fault.index}{suffix}"
    if fault.kind == "empty_class":
        for path in folder.iterdir():
            path.unlink()
        return folder
    if fault.kind == "missing_class":
        shutil.rmtree(folder)
        return folder
    if fault.kind == "duplicate":
        copy = folder / f"dup{suffix}"
        shutil.copyfile(root / "train" / f"c{fault.cls}" / f"0{suffix}", copy)
        return copy
    if fault.kind == "mode":
        target.unlink()
        return write_mode(folder, str(fault.index), fault.extra)
    if fault.kind == "truncated":
        target.write_bytes(target.read_bytes()[:int(target.stat().st_size * fault.extra)])
    else:
        target.write_bytes(b"" if fault.kind == "zero_byte" else fault.extra)
    return target


def expected_image_refusal(root: Path, faults: list[ImageFault], named: dict) -> list[Path] | None:
    """What a refusal may name (in the order the splits are read: a split folder without any image, the faulty
    files of a split; then the training class folders that hold no image), or None when the tree must be
    accepted."""
    for split in ("train", "test"):
        if sum(f.split == split and f.kind in ("empty_class", "missing_class") for f in faults) == CLASSES:
            return [root / split]
        bad = [named[f] for f in faults if f.split == split and (f.kind in FILE_REFUSALS or
                                                                 f.kind == "mode" and f.extra in REFUSED_MODES)]
        if bad:
            return bad
    folders = [named[f] for f in faults if f.kind in ("empty_class", "missing_class") and f.split == "train"]
    return folders or None


def assert_image_warnings(bundle, faults: list[ImageFault], named: dict) -> None:
    warnings = bundle.audit.warnings
    assert all("\n" not in w for w in warnings)
    for split in ("train", "test"):
        modes = Counter(f.extra for f in faults if f.kind == "mode" and f.split == split)
        if modes:
            note = next(w for w in warnings if f"images of split '{split}' are not RGB" in w)
            assert all(f"{n} {mode}" in note for mode, n in modes.items()), note
    duplicates = [f for f in faults if f.kind == "duplicate"]
    if duplicates:
        assert any(f"{len(duplicates)} of {len(bundle.test_y)} test examples are identical" in w for w in warnings), warnings
        assert any(c.startswith("train_test_overlap:") for c in checks_of(bundle)["failed"])
    for fault in (f for f in faults if f.kind == "empty_class"):  # in the test split (a training one is refused)
        assert any(f"{named[fault]} holds no images" in w for w in warnings), warnings
    assert len(warnings) >= len({(f.kind, f.split) for f in faults}), warnings  # never silent


def test_image_folder_faults_are_refused_or_recorded(tmp_path, fuzz_examples):
    @fuzz(fuzz_examples)
    @given(st.booleans().flatmap(lambda accepted: st.lists(image_faults(accepted), min_size=1, max_size=CLASSES,
                                                           unique_by=lambda f: f.cls)),
           st.sampled_from((".png", ".jpg")))
    def check(faults, suffix):
        with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
            root = Path(folder)
            image_tree(root, suffix)
            named = {fault: apply_image_fault(root, fault, suffix) for fault in faults}
            bundle, refusal = outcome(dataset_cfg("imagefolder", root))
            expected = expected_image_refusal(root, faults, named)
            if expected is not None:
                assert refusal is not None, f"accepted: {faults}"
                assert any(str(path) in refusal for path in expected), refusal
            else:
                assert refusal is None, refusal
                assert_image_warnings(bundle, faults, named)

    check()


def test_a_clean_image_tree_has_no_warning_and_passes_its_checks(tmp_path):
    image_tree(tmp_path, ".jpg")
    bundle = build_data(dataset_cfg("imagefolder", tmp_path))
    assert bundle.audit.warnings == () and checks_of(bundle)["failed"] == []
    assert bundle.audit.overlap == 0 and bundle.audit.n_test == CLASSES * PER_SPLIT["test"]


def test_sixteen_bit_pixels_are_scaled_not_clipped(tmp_path):
    """PIL's own conversion of a 16-bit image to RGB clips every value above 255 to white."""
    image_tree(tmp_path, ".png")
    values = (np.arange(SIDE * SIDE, dtype=np.uint16).reshape(SIDE, SIDE) * 1800)
    Image.fromarray(values).save(tmp_path / "train" / "c0" / "0.png")
    bundle = build_data(dataset_cfg("imagefolder", tmp_path))
    assert bundle.train_x[0].tolist() == [(values >> 8).astype(np.uint8).tolist()] * 3
    assert "converted to RGB (16-bit pixels scaled to 8 bits)" in bundle.audit.warnings[0]


def test_mode_warnings_survive_the_decode_cache(tmp_path):
    image_tree(tmp_path / "tree", ".png")
    write_mode(tmp_path / "tree" / "test" / "c1", "extra", "RGBA")
    runs = [build_data(dataset_cfg("imagefolder", tmp_path / "tree"), cache_dir=tmp_path / "cache") for _ in range(2)]
    assert runs[0].audit.warnings == runs[1].audit.warnings and "(1 RGBA" in runs[1].audit.warnings[0]
    assert len(list((tmp_path / "cache").glob("imagefolder-test-*.safetensors"))) == 1  # the second was a cache hit


def test_a_test_class_missing_from_a_training_slice_fails_the_check(tmp_path):
    """A flat folder sliced so that one class is only in the test part: the folder holds that class (nothing to
    refuse), but the result cannot mean anything: a warning and a failing check."""
    for c, n in ((0, 4), (1, 4)):
        for i in range(n):
            Image.fromarray(np.full((SIDE, SIDE, 3), 60 * c + i, np.uint8)).save(_mkdir(tmp_path / f"c{c}") / f"{i}.png")
    order = np.random.default_rng(0).permutation(8)  # the flat layout's fixed permutation of the 8 files
    labels = [int(i >= 4) for i in order]
    cut = next(k for k in range(1, 8) if len(set(labels[:k])) == 1 and labels[k] != labels[0])
    bundle = build_data(dataset_cfg("imagefolder", tmp_path, train_split=f"train[:{cut}]", test_split=f"train[{cut}:]"))
    assert bundle.audit.unseen == sum(1 for y in labels[cut:] if y != labels[0])
    assert any("class(es) with no training example" in w for w in bundle.audit.warnings)
    assert checks_of(bundle)["failed"][0].startswith("unseen_class_fraction:")


def test_streamed_image_folder_refuses_a_missing_training_class_and_warns_of_an_empty_test_one(tmp_path):
    """Streamed folders are not decoded up front, but their listing knows every class folder."""
    image_tree(tmp_path / "tree", ".jpg")
    for folder in (tmp_path / "tree" / "test" / "c0", tmp_path / "tree" / "train" / "c2"):
        for image in folder.iterdir():
            image.unlink()
    cfg = dataset_cfg("imagefolder", tmp_path / "tree", storage="stream", image_size=SIDE)
    with pytest.raises(DataError, match=f"{tmp_path / 'tree' / 'train' / 'c2'} holds no images but the test split has 2"):
        build_data(cfg, cache_dir=tmp_path / "cache")
    shutil.rmtree(tmp_path / "tree" / "test" / "c2")  # the test split no longer has class c2
    bundle = build_data(cfg, cache_dir=tmp_path / "cache")
    assert any(f"{tmp_path / 'tree' / 'test' / 'c0'} holds no images" in w for w in bundle.audit.warnings)
    assert bundle.audit.overlap is None and checks_of(bundle)["train_test_overlap"] is None


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.skipif(not CIFAR_IMAGES.is_dir(), reason="no shared CIFAR-10 image folder beside the repository")
def test_real_cifar10_image_folder_has_no_fault():
    bundle = build_data(dataset_cfg("imagefolder", CIFAR_IMAGES))
    assert bundle.audit.warnings == () and bundle.audit.overlap == 0 and bundle.audit.unseen == 0


# ---------------------------------------------------------------- SST-2 files

ROWS = {"train": 8, "dev": 4}
TEXT_KINDS = ("swapped", "no_label_column", "missing_field", "non_utf8", "blank_lines", "label_range", "duplicate",
              "one_class", "empty_file")
TEXT_REFUSALS = ("swapped", "no_label_column", "missing_field", "non_utf8", "label_range", "empty_file")


@dataclass(frozen=True)
class TextFault:
    kind: str  # one of TEXT_KINDS
    file: str  # 'train' or 'dev'
    row: int  # which row it touches
    extra: object = None  # blank_lines: the blank lines; label_range: the label; non_utf8: the bytes


@st.composite
def text_faults(draw, accepted: bool = False) -> TextFault:
    """Any fault, or (accepted) one that a run accepts with a warning."""
    kind = draw(st.sampled_from(("blank_lines", "duplicate") if accepted else TEXT_KINDS))
    file = {"duplicate": "dev", "one_class": "train"}.get(kind) or draw(st.sampled_from(("train", "dev")))
    extra = {"blank_lines": st.lists(st.sampled_from(("", "  ", "\t", " \t ")), min_size=1, max_size=3),
             "label_range": st.sampled_from(("2", "-1", "3", "01", "1.0", "")),
             "non_utf8": st.sampled_from((b"\xe9", b"\xff", b"\xc3(", b"\x80abc"))}.get(kind, st.none())
    last = ROWS[file] - (2 if kind == "blank_lines" else 1)  # blank lines go between rows, not after the last
    return TextFault(kind, file, draw(st.integers(0, last)), draw(extra))


def corpus() -> dict[str, list[tuple[int, str]]]:
    """Distinct sentences, both labels in each file."""
    unique = list(dict((text, label) for label, text in sentences(60, seed=3)).items())
    rows = [(label, text) for text, label in unique]
    files = {"train": rows[:ROWS["train"]], "dev": rows[ROWS["train"]:ROWS["train"] + ROWS["dev"]]}
    assert all({label for label, _ in part} == {0, 1} for part in files.values())
    return files


def tsv_bytes(rows: list[tuple[int, str]], faults: list[TextFault], header: tuple[str, str], style: dict,
              train_rows: list[tuple[int, str]]) -> bytes:
    """An SST-2 file: the header, one tab-separated row per sentence, in the header's column order, with the
    faults of this file applied. style: benign variation (CRLF, BOM, trailing blank lines)."""
    label_first = header[0] == "label"
    kinds = {f.kind: f for f in faults}
    if "one_class" in kinds:
        rows = [(0, text) for _, text in rows]
    if "duplicate" in kinds:
        rows = list(rows)
        rows[kinds["duplicate"].row] = (rows[kinds["duplicate"].row][0], train_rows[0][1])
    names = [("polarity" if "no_label_column" in kinds and name == "label" else name).encode() for name in header]
    out = [b"\t".join(names)]
    for i, (label, text) in enumerate(rows):
        fields = [str(label).encode(), text.encode()]
        if "label_range" in kinds and kinds["label_range"].row == i:
            fields[0] = kinds["label_range"].extra.encode()
        if "non_utf8" in kinds and kinds["non_utf8"].row == i:
            fields[1] += kinds["non_utf8"].extra
        if "missing_field" in kinds and kinds["missing_field"].row == i:
            fields = fields[1:]
        elif label_first == ("swapped" not in kinds):
            pass
        else:
            fields = fields[::-1]
        out.append(b"\t".join(fields))
        if "blank_lines" in kinds and kinds["blank_lines"].row == i:
            out += [line.encode() for line in kinds["blank_lines"].extra]
    if "empty_file" in kinds:
        return b""
    newline = b"\r\n" if style["crlf"] else b"\n"
    return (b"\xef\xbb\xbf" if style["bom"] else b"") + newline.join(out) + newline + newline * style["trailing"]


def expected_text_refusal(faults: list[TextFault]) -> str | None:
    """The file a refusal must name (the first file read with a fault it refuses, else the training file when it
    lacks a label), or None when the files must be accepted."""
    for file in ("train", "dev"):
        if any(f.file == file and f.kind in TEXT_REFUSALS for f in faults):
            return f"{file}.tsv"
    return "train.tsv" if any(f.kind == "one_class" for f in faults) else None


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """A tiny BERT's tokenizer folder (trained on the corpus; unknown words are [UNK], which is fine here)."""
    folder = tmp_path_factory.mktemp("tokenizer")
    rows = corpus()["train"] + corpus()["dev"]
    (folder / "corpus.tsv").write_text("label\tsentence\n" + "".join(f"{label}\t{text}\n" for label, text in rows))
    return tiny_bert(folder / "bert", folder / "corpus.tsv", hidden=8, layers=1, heads=1)


def test_sst2_faults_are_refused_or_recorded(tmp_path, tokenizer, fuzz_examples):
    @fuzz(fuzz_examples)
    @given(st.booleans().flatmap(lambda accepted: st.lists(text_faults(accepted), min_size=1, max_size=2,
                                                           unique_by=lambda f: (f.kind, f.file))),
           st.sampled_from((("label", "sentence"), ("sentence", "label"), ("label", "content"), ("text", "label"))),
           st.fixed_dictionaries({"crlf": st.booleans(), "bom": st.booleans(), "trailing": st.integers(0, 2)}))
    def check(faults, header, style):
        rows = corpus()
        with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
            root = Path(folder)
            for file in ("train", "dev"):
                mine = [f for f in faults if f.file == file]
                (root / f"{file}.tsv").write_bytes(tsv_bytes(rows[file], mine, header, style, rows["train"]))
            bundle, refusal = outcome(dataset_cfg("sst2", root, tokenizer=str(tokenizer)))
            expected = expected_text_refusal(faults)
            if expected is not None:
                assert refusal is not None and str(root / expected) in refusal, (faults, refusal)
                return
            assert refusal is None, refusal
            warnings = bundle.audit.warnings
            for fault in (f for f in faults if f.kind == "blank_lines"):
                note = f"{root / fault.file}.tsv: skipped {len(fault.extra)} blank line"
                assert any(w.startswith(note) for w in warnings), warnings
            if any(f.kind == "duplicate" for f in faults):
                assert any("1 of 4 test examples are identical" in w for w in warnings), warnings
                assert checks_of(bundle)["failed"][0].startswith("train_test_overlap:")
            assert len(warnings) == len(faults), warnings  # one line per fault: never silent, nothing spurious

    check()


def test_clean_sst2_variants_load_without_warnings(tmp_path, tokenizer):
    rows = corpus()
    for file in ("train", "dev"):
        (tmp_path / f"{file}.tsv").write_bytes(tsv_bytes(rows[file], [], ("sentence", "label"),
                                                         {"crlf": True, "bom": True, "trailing": 2}, rows["train"]))
    bundle = build_data(dataset_cfg("sst2", tmp_path, tokenizer=str(tokenizer)))
    assert bundle.audit.warnings == () and checks_of(bundle)["failed"] == [] and len(bundle.test_y) == ROWS["dev"]


def test_swapped_columns_are_named_as_such(tmp_path):
    (tmp_path / "train.tsv").write_bytes(b"label\tsentence\na fine film\t1\n")
    with pytest.raises(DataError, match=r"train\.tsv, line 2: label 'a fine film' is not 0 or 1 and the 'sentence' column "
                                        r"holds '1': the row's columns are in the other order than the header's; "):
        read_sst2(tmp_path / "train.tsv")


# ---------------------------------------------------------------- MNIST IDX files

IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),  # split -> (images, labels) file stems
       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_KINDS = ("truncated", "magic", "count_mismatch", "label_range", "duplicate", "unseen")
IDX_REFUSALS = ("truncated", "magic", "count_mismatch", "label_range")


@dataclass(frozen=True)
class IdxFault:
    kind: str  # one of IDX_KINDS
    split: str
    labels: bool  # the labels file (else the images file)
    extra: object = None  # truncated: fraction kept; magic: the bytes; label_range: the label


@st.composite
def idx_faults(draw, accepted: bool = False) -> IdxFault:
    """Any fault, or (accepted) one that a run accepts with a warning."""
    kind = draw(st.sampled_from(("duplicate", "unseen") if accepted else IDX_KINDS))
    split = {"duplicate": "test", "unseen": "train"}.get(kind) or draw(st.sampled_from(("train", "test")))
    extra = {"truncated": st.floats(0, 1, exclude_max=True), "label_range": st.integers(10, 255),
             "magic": st.binary(min_size=4, max_size=4).filter(lambda b: b[:3] != b"\x00\x00\x08")}.get(kind, st.none())
    return IdxFault(kind, split, draw(st.booleans()) or kind == "label_range", draw(extra))


def write_mnist(root: Path, faults: list[IdxFault], gz: bool) -> dict:
    """The four IDX files with the faults applied; returns fault -> the file a refusal must name."""
    rng = np.random.default_rng(5)
    images = {split: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for split, n in (("train", 30), ("test", 10))}
    labels = {split: (np.arange(len(x)) % 10).astype(np.uint8) for split, x in images.items()}
    kinds = {f.kind: f for f in faults}
    if "duplicate" in kinds:
        images["test"][3] = images["train"][7]
    if "unseen" in kinds:
        labels["train"][labels["train"] == 9] = 0
    if "label_range" in kinds:
        labels[kinds["label_range"].split][2] = kinds["label_range"].extra
    if "count_mismatch" in kinds:
        split = kinds["count_mismatch"].split
        labels[split] = labels[split][:-1]
    named = {}
    for split, (image_stem, label_stem) in IDX.items():
        for stem, array in ((image_stem, images[split]), (label_stem, labels[split])):
            path, data = root / (stem + (".gz" if gz else "")), idx_bytes(array)
            for fault in (f for f in faults if f.split == split):
                if fault.kind in ("truncated", "magic") and fault.labels == (stem == label_stem):
                    data = data[:int(len(data) * fault.extra)] if fault.kind == "truncated" else fault.extra + data[4:]
                    named[fault] = path
                elif fault.kind in ("label_range", "count_mismatch") and stem == label_stem:
                    named[fault] = path
            path.write_bytes(gzip.compress(data) if gz else data)
    return named


def test_mnist_idx_faults_are_refused_or_recorded(tmp_path, fuzz_examples):
    @fuzz(fuzz_examples)
    @given(st.booleans().flatmap(lambda accepted: st.lists(idx_faults(accepted), min_size=1, max_size=3,
                                                           unique_by=lambda f: f.kind)), st.booleans())
    def check(faults, gz):
        with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
            named = write_mnist(Path(folder), faults, gz)
            bundle, refusal = outcome(dataset_cfg("mnist", folder))
            for split in ("train", "test"):
                refused = [named[f] for f in faults if f.split == split and f.kind in IDX_REFUSALS]
                if refused:
                    assert refusal is not None and any(str(path) in refusal for path in refused), (faults, refusal)
                    return
            assert refusal is None, refusal
            warnings, failed = bundle.audit.warnings, checks_of(bundle)["failed"]
            if any(f.kind == "duplicate" for f in faults):
                assert any("1 of 10 test examples are identical to a training example (first: test[3] = train[7])" in w
                           for w in warnings), warnings
                assert any(c.startswith("train_test_overlap:") for c in failed)
            if any(f.kind == "unseen" for f in faults):
                assert any("1 of 10 test examples belong to 1 class(es) with no training example (label 9)" in w
                           for w in warnings), warnings
                assert any(c.startswith("unseen_class_fraction:") for c in failed)
            assert len(warnings) == len(faults), warnings

    check()


def test_mnist_label_outside_num_classes_names_the_labels_file(tmp_path):
    faults = [IdxFault("label_range", "train", True, 12)]
    named = write_mnist(tmp_path, faults, gz=True)
    with pytest.raises(DataError, match=r"label 12 of image 2 is outside 0\.\.9 \(dataset\.num_classes=10\)") as err:
        build_data(dataset_cfg("mnist", tmp_path))
    assert str(named[faults[0]]) in str(err.value)
