"""Readers of three text classification datasets in their released formats, with their downloads.

Each :class:`TextSource` gives ``(sentences, labels)``: a list of str and an (N,) int64 tensor in
``[0, num_classes)``, in the file order described below (so ``'train[:1000]'`` slices are reproducible).

- ``sst2``: GLUE SST-2, ``root/train.tsv`` (67,349 rows) and ``root/dev.tsv`` (872). A header line
  names the columns, in any order: ``label`` and a text column ``sentence`` (GLUE), ``content`` or
  ``text``; then one tab-separated row per sentence, label 0 (negative) or 1 (positive). No csv
  quoting: quote characters are part of the text. Rows in file order; surrounding whitespace of a
  field is stripped, CRLF line ends and a UTF-8 BOM are accepted, empty lines skipped. Splits
  ``train`` and ``dev`` (alias ``validation``); ``test`` is refused (GLUE's test.tsv has no labels).
  ``download=true`` fetches GLUE's SST-2.zip into root and extracts train.tsv and dev.tsv beside it.
- ``imdb``: Maas et al. 2011, ``root/aclImdb/{train,test}/{neg,pos}/<id>_<rating>.txt`` (25,000
  reviews per split; ratings 1-4 in neg/, 7-10 in pos/). Label 0 = neg, 1 = pos. Order: all neg
  reviews by numeric id, then all pos reviews by numeric id, i.e. sorted by (label, id). Each run of
  ``<br />`` tags becomes one space. ``unsup/`` is never read. When ``root/aclImdb`` is absent,
  ``root/aclImdb_v1.tar.gz`` is md5-checked and extracted (``download=true`` fetches it first).
- ``ag_news``: Zhang et al. 2015 (char-CNN release), ``root/train.csv`` (120,000 rows) and
  ``root/test.csv`` (7,600): no header, rows ``"class","title","description"`` (csv quoting, ``""``
  inside a field), class 1-4 (World, Sports, Business, Sci/Tech) -> label class - 1. Text = title +
  " " + description, file order. The release marks the line breaks of the source articles with a
  backslash (``dwindling\\band`` = "dwindling band"; ``\\n`` is not a newline escape there: ``gave\\no``
  = "gave no") and writes ``$`` as ``\\$``: ``\\$`` becomes ``$``, every other run of backslashes one space.
  ``download=true`` fetches the two CSV files.

Every download goes through :func:`fetch` (temp file, then rename), from the module-level URLs.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig

from robprune.data.faults import warn
from robprune.data.source import get, missing_files, root_dir, try_download
from robprune.errors import ConfigError, DataError
from robprune.io import atomic_write
from robprune.options import Choice, Int, Value
from robprune.registry import DATASETS

Texts = tuple[list[str], torch.Tensor]  # sentences, (N,) int64 labels in [0, num_classes)

SST2_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
AG_NEWS_URL = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/"  # + train.csv
TIMEOUT_S = 60.0  # per network operation of a download (connect, each read)


@dataclass(frozen=True)
class TextSource:
    """One text dataset.

    splits: base split names it offers, e.g. ``('train', 'dev')``.
    locate(cfg, split): the files of a base split, downloading them first when ``cfg.download`` is
        true; DataError when they are missing or damaged beyond reading.
    read(cfg, split, files): ``(sentences, labels)`` of the base split (see :data:`Texts`).
    num_classes: the class count; labels lie in ``[0, num_classes)``.
    aliases: other names of base splits, e.g. ``{'validation': 'dev'}``.
    refused: split names that are refused with the given reason (one line naming the fix).
    """

    splits: tuple[str, ...]
    locate: Callable[[DictConfig, str], list[Path]]
    read: Callable[[DictConfig, str, list[Path]], Texts]
    num_classes: int
    aliases: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def canonical_split(source: TextSource, split: str) -> str:
    """The base split that ``split`` (a base name, no slice) stands for; ConfigError for a refused
    split (with its reason) or an unknown one (listing the valid names)."""
    name = source.aliases.get(split, split)
    if name in source.splits:
        return name
    if split in source.refused:
        raise ConfigError(source.refused[split])
    aliases = "".join(f", {alias} (= {base})" for alias, base in source.aliases.items())
    raise ConfigError(f"dataset {_name_of(source)!r} has no split {split!r}; use one of "
                      f"{', '.join(source.splits)}{aliases}, optionally sliced, e.g. '{source.splits[0]}[:1000]'")


def _name_of(source: TextSource) -> str:
    return DATASETS.name_of(source) or "text"


# ---------------------------------------------------------------- downloads

def fetch(url: str, dest: Path, *, md5: str | None = None) -> Path:
    """Stream ``url`` into ``dest`` through a temp file beside it, renamed into place only when the
    transfer is complete and, if ``md5`` is given, its md5 matches: no half-written ``dest`` ever.
    Raises what urllib raises (URLError, HTTPError, timeouts) or ValueError when the transfer stops
    short of its Content-Length or the md5 differs."""
    def write(tmp: Path) -> None:
        digest, size = hashlib.md5(), 0
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(tmp, "wb") as out:
            expected = response.headers.get("Content-Length")
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                size += out.write(chunk)
        if expected is not None and expected.isdigit() and size != int(expected):
            raise ValueError(f"{url} ended after {size} of its {expected} bytes")
        if md5 is not None and digest.hexdigest() != md5:
            raise ValueError(f"md5 of {url} is {digest.hexdigest()}, expected {md5}")

    return atomic_write(Path(dest), write)


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wanted(cfg: DictConfig) -> bool:
    return bool(get(cfg, "download", False))


# ---------------------------------------------------------------- SST-2

SST2_FILES = {"train": "train.tsv", "dev": "dev.tsv"}
_SST2_TEXT_COLUMNS = ("sentence", "content", "text")
_SST2_FIX = ("restore GLUE's SST-2 file (a header line naming a label and a sentence column, then one "
             "tab-separated row per sentence), e.g. delete it and set data.download=true")


def download_sst2(root: Path) -> None:
    """Fetch ``SST2_URL`` (GLUE's SST-2.zip) into ``root`` unless it is there, and extract those of
    its ``SST-2/train.tsv`` and ``SST-2/dev.tsv`` that are missing as ``root/train.tsv``, ``root/dev.tsv``."""
    archive = root / "SST-2.zip"
    if not archive.is_file():
        fetch(SST2_URL, archive)
    with zipfile.ZipFile(archive) as zf:
        for name in (name for name in SST2_FILES.values() if not (root / name).is_file()):
            data = zf.read(f"SST-2/{name}")
            atomic_write(root / name, lambda tmp: tmp.write_bytes(data))


def _sst2_locate(cfg: DictConfig, split: str) -> list[Path]:
    path = root_dir(cfg) / SST2_FILES[canonical_split(SST2, split)]
    if not path.is_file() and _download_wanted(cfg):
        try_download("sst2", path.parent, lambda: download_sst2(path.parent))
    if not path.is_file():
        raise missing_files("sst2", path.parent, [path.name])
    return [path]


def _text_lines(path: Path, fix: str) -> list[tuple[int, str]]:
    """(line number, line) of the non-blank lines of a UTF-8 file (BOM and CR of CRLF removed). Blank lines
    (empty or whitespace only) between rows are skipped with a warning: a row may have been lost there; those
    after the last row are not."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text ({err.reason} at byte {err.start}); save the file "
                        f"as UTF-8, or {fix}") from None
    lines = [(number, line.rstrip("\r")) for number, line in enumerate(text.split("\n"), start=1)]
    kept = [(number, line) for number, line in lines if line.strip()]
    blank = [number for number, line in lines if not line.strip() and kept and number < kept[-1][0]]
    if blank:
        shown = ", ".join(map(str, blank[:5])) + (f" and {len(blank) - 5} more" if len(blank) > 5 else "")
        warn(f"{path}: skipped {len(blank)} blank line(s) between rows (line {shown}); check that no row is "
             "missing there, or delete them")
    return kept


def _sst2_columns(path: Path, header: str) -> tuple[int, int, int]:
    """(label column, text column, column count) named by the header line."""
    names = [name.strip().lower() for name in header.split("\t")]
    text = next((names.index(name) for name in _SST2_TEXT_COLUMNS if name in names), None)
    if "label" not in names or text is None:
        wanted = "'label' column" if "label" not in names else f"text column ({' or '.join(_SST2_TEXT_COLUMNS)})"
        raise DataError(f"{path}: the header line has no {wanted}, found columns {names}; {_SST2_FIX}")
    return names.index("label"), text, len(names)


def read_sst2(path: Path) -> Texts:
    """Sentences and 0/1 labels of a GLUE-style SST-2 TSV, in file order (the columns the header names)."""
    lines = _text_lines(path, _SST2_FIX)
    if len(lines) < 2:
        raise DataError(f"{path} has {'no header line and ' if not lines else ''}no rows; {_SST2_FIX}")
    label_col, text_col, width = _sst2_columns(path, lines[0][1])
    text_name = lines[0][1].split("\t")[text_col].strip()
    sentences, labels = [], []
    for number, line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != width:
            raise DataError(f"{path}, line {number}: {len(fields)} tab-separated fields but the header has "
                            f"{width}: {line[:80]!r}; {_SST2_FIX}")
        label, sentence = fields[label_col].strip(), fields[text_col].strip()
        if label not in ("0", "1"):
            swapped = (f" and the {text_name!r} column holds {sentence!r}: the row's columns are in the other order "
                       "than the header's") if sentence in ("0", "1") else ""
            raise DataError(f"{path}, line {number}: label {label[:20]!r} is not 0 or 1{swapped}; {_SST2_FIX}")
        if not sentence:
            raise DataError(f"{path}, line {number}: the sentence is empty; {_SST2_FIX}")
        sentences.append(sentence)
        labels.append(int(label))
    return sentences, torch.tensor(labels, dtype=torch.int64)


# ---------------------------------------------------------------- IMDB

IMDB_FOLDER = "aclImdb"
IMDB_ARCHIVE = "aclImdb_v1.tar.gz"
IMDB_CLASSES = ("neg", "pos")  # label = index
_IMDB_RATINGS = (range(1, 5), range(7, 11))
_IMDB_NAME = re.compile(r"(\d+)_(\d+)\.txt")
_BREAKS = re.compile(r"\s*(?:<br\s*/?>\s*)+", re.IGNORECASE)


def _imdb_fix(root: Path) -> str:
    return (f"re-extract {IMDB_ARCHIVE} into data.root (delete {root / IMDB_FOLDER} first), "
            "or delete both and set data.download=true")


def download_imdb(root: Path) -> None:
    """Fetch ``IMDB_URL`` into ``root/aclImdb_v1.tar.gz`` (kept only when its md5 is ``IMDB_MD5``)
    and extract it: ``root/aclImdb/``."""
    archive = root / IMDB_ARCHIVE
    fetch(IMDB_URL, archive, md5=IMDB_MD5)
    extract_imdb(archive, root)


def extract_imdb(archive: Path, root: Path) -> None:
    """Extract ``aclImdb/`` (less ``train/unsup/``) of the archive into a temp folder in ``root``,
    then rename it to ``root/aclImdb``: a failure leaves no partial tree. Members that would land
    outside the folder (absolute paths, ``..``, links out) raise ``tarfile.FilterError``."""
    tmp = Path(tempfile.mkdtemp(prefix=".aclImdb-", dir=root))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            _safe_extract(tar, tmp, keep=_imdb_member)
        if not (tmp / IMDB_FOLDER).is_dir():
            raise ValueError(f"{archive} holds no {IMDB_FOLDER}/ folder")
        os.replace(tmp / IMDB_FOLDER, root / IMDB_FOLDER)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _imdb_member(name: str) -> bool:
    """Whether a member of aclImdb_v1.tar.gz is extracted: all of ``aclImdb/`` but ``train/unsup/``."""
    unsup = f"{IMDB_FOLDER}/train/unsup"
    inside = name == IMDB_FOLDER or name.startswith(f"{IMDB_FOLDER}/")
    return inside and not (name == unsup or name.startswith(f"{unsup}/"))


def _safe_extract(tar: tarfile.TarFile, dest: Path, keep: Callable[[str], bool]) -> None:
    """``extractall`` of the members ``keep`` accepts, with the 'data' filter (Python >= 3.11.4), or
    else only regular files and folders with relative, ``..``-free names."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter=lambda member, path: tarfile.data_filter(member, path)
                       if keep(member.name) else None)
        return
    members = [m for m in tar.getmembers() if keep(m.name)]
    unsafe = next((m for m in members if not (m.isfile() or m.isdir()) or m.name.startswith("/")
                   or ".." in Path(m.name).parts), None)
    if unsafe is not None:
        raise tarfile.TarError(f"refusing to extract {unsafe.name!r} (a link, device, absolute path or '..')")
    tar.extractall(dest, members=members)


def _imdb_obtain(cfg: DictConfig, root: Path) -> None:
    """Make ``root/aclImdb`` from the archive in root, or from a download when allowed."""
    archive = root / IMDB_ARCHIVE
    if archive.is_file():
        actual = file_md5(archive)
        if actual != IMDB_MD5:
            raise DataError(f"{archive} has md5 {actual}, not {IMDB_MD5} of the official archive; delete it and "
                            "set data.download=true, or extract a good copy into data.root")
        try:
            extract_imdb(archive, root)
        except (OSError, tarfile.TarError, ValueError) as err:
            raise DataError(f"{archive} cannot be extracted ({type(err).__name__}: {err}); delete it and set "
                            "data.download=true") from None
    elif _download_wanted(cfg):
        try_download("imdb", root, lambda: download_imdb(root))


def _imdb_files(folder: Path, label: int, root: Path) -> list[Path]:
    """The reviews of one class folder, by numeric id; DataError for a name or rating that does not fit."""
    found = []
    for path in folder.glob("*.txt"):
        match = _IMDB_NAME.fullmatch(path.name)
        ratings = _IMDB_RATINGS[label]
        if match is None or int(match[2]) not in ratings:
            raise DataError(f"{path} is not an aclImdb review: names are <id>_<rating>.txt with rating "
                            f"{ratings[0]}-{ratings[-1]} in {folder.name}/; {_imdb_fix(root)}")
        found.append((int(match[1]), path))
    if not found:
        raise DataError(f"{folder} holds no <id>_<rating>.txt reviews; {_imdb_fix(root)}")
    return [path for _, path in sorted(found)]


def _imdb_locate(cfg: DictConfig, split: str) -> list[Path]:
    """All neg reviews of the split by numeric id, then all pos reviews by numeric id."""
    split, root = canonical_split(IMDB, split), root_dir(cfg)
    if not (root / IMDB_FOLDER).is_dir():
        _imdb_obtain(cfg, root)
    if not (root / IMDB_FOLDER).is_dir():
        raise missing_files("imdb", root, [f"{IMDB_FOLDER}/{split}/{{neg,pos}}/<id>_<rating>.txt", IMDB_ARCHIVE])
    folders = [root / IMDB_FOLDER / split / name for name in IMDB_CLASSES]
    missing = next((folder for folder in folders if not folder.is_dir()), None)
    if missing is not None:
        raise DataError(f"{missing} is missing; {_imdb_fix(root)}")
    return [path for label, folder in enumerate(folders) for path in _imdb_files(folder, label, root)]


def read_imdb(files: list[Path]) -> Texts:
    """Reviews (``<br />`` runs -> one space, stripped) and labels (0 in neg/, 1 in pos/) of the files, in order."""
    texts, labels = [], []
    for path in files:
        try:
            text = _BREAKS.sub(" ", path.read_text(encoding="utf-8")).strip()
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not UTF-8 text ({err.reason}); {_imdb_fix(path.parents[3])}") from None
        if not text:
            raise DataError(f"{path} is empty; {_imdb_fix(path.parents[3])}")
        texts.append(text)
        labels.append(IMDB_CLASSES.index(path.parent.name))
    return texts, torch.tensor(labels, dtype=torch.int64)


# ---------------------------------------------------------------- AG News

AG_NEWS_FILES = {"train": "train.csv", "test": "test.csv"}
_AG_CLASSES = ("1", "2", "3", "4")
_AG_FIX = ("restore the char-CNN release's file (no header; rows \"class\",\"title\",\"description\" with class 1-4), "
           "e.g. delete it and set data.download=true")
_DOLLAR = re.compile(r"\\\$")
_BACKSLASHES = re.compile(r"\s*\\+\s*")


def clean_ag_news(text: str) -> str:
    """``\\$`` -> ``$``; each run of backslashes (the release's line breaks) with the spaces around it -> one space."""
    return _BACKSLASHES.sub(" ", _DOLLAR.sub("$", text)).strip()


def _ag_locate(cfg: DictConfig, split: str) -> list[Path]:
    path = root_dir(cfg) / AG_NEWS_FILES[canonical_split(AG_NEWS, split)]
    if not path.is_file() and _download_wanted(cfg):
        try_download("ag_news", path.parent, lambda: fetch(AG_NEWS_URL + path.name, path))
    if not path.is_file():
        raise missing_files("ag_news", path.parent, [path.name])
    return [path]


def read_ag_news(path: Path) -> Texts:
    """Title + " " + description (cleaned by :func:`clean_ag_news`) and class - 1 of each row, in file order."""
    texts, labels = [], []
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, strict=True)
            for row in (row for row in reader if row):
                text, label = _ag_row(path, reader.line_num, row)
                texts.append(text)
                labels.append(label)
    except (csv.Error, UnicodeDecodeError) as err:
        where = f", line {reader.line_num}" if isinstance(err, csv.Error) else ""
        raise DataError(f"{path}{where}: not readable as CSV ({err}); {_AG_FIX}") from None
    if not texts:
        raise DataError(f"{path} has no rows; {_AG_FIX}")
    return texts, torch.tensor(labels, dtype=torch.int64)


def _ag_row(path: Path, number: int, row: list[str]) -> tuple[str, int]:
    """(text, label) of one row."""
    if len(row) != 3:
        raise DataError(f"{path}, line {number}: {len(row)} columns, expected 3 (\"class\",\"title\",\"description\"); "
                        f"{_AG_FIX}")
    if row[0].strip() not in _AG_CLASSES:
        header = " (the release has no header line: remove it)" if number == 1 else ""
        raise DataError(f"{path}, line {number}: class {row[0][:20]!r} is not one of 1, 2, 3, 4{header}; {_AG_FIX}")
    text = clean_ag_news(f"{row[1]} {row[2]}")
    if not text:
        raise DataError(f"{path}, line {number}: title and description are empty; {_AG_FIX}")
    return text, int(row[0]) - 1


# ---------------------------------------------------------------- registry

SST2 = TextSource(splits=("train", "dev"), locate=_sst2_locate, read=lambda cfg, split, files: read_sst2(files[0]),
                  num_classes=2, aliases={"validation": "dev"},
                  refused={"test": "GLUE's SST-2 test.tsv has no labels; evaluate on the dev split (872 labelled "
                                   "sentences), e.g. dataset.test_split=dev"})
IMDB = TextSource(splits=("train", "test"), locate=_imdb_locate, read=lambda cfg, split, files: read_imdb(files),
                  num_classes=2)
AG_NEWS = TextSource(splits=("train", "test"), locate=_ag_locate,
                     read=lambda cfg, split, files: read_ag_news(files[0]), num_classes=4)

# the keys every text dataset reads besides the common ones (conf/dataset/<name>.yaml)
TEXT_KEYS = {"modality": Choice("text"), "max_length": Int(2, example="64"),
             "tokenizer": Value("str", null=True, example="minilm-l6"),
             "heldout_split": Value("str", null=True, example="'train[8000:8500]'")}
DATASETS.add("sst2", SST2, modality="text", keys=TEXT_KEYS)
DATASETS.add("imdb", IMDB, modality="text", keys=TEXT_KEYS)
DATASETS.add("ag_news", AG_NEWS, modality="text", keys=TEXT_KEYS)
