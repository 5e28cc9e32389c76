"""Text datasets: sentences and labels from the released files (:mod:`robprune.data.text_sources`),
tokenised once by the model's tokenizer and cached, batched with dynamic padding.

:class:`TextBundle` is the text counterpart of :class:`robprune.data.DataBundle` and offers the same
interface to the stages (``arch_record``, ``meta``, ``example_inputs``, ``loader``, ``check_model``,
``train_x``/``train_y``/``test_x``/``test_y``), plus the raw sentences (``train_text``, ``test_text``)
and the ``tokenizer`` that text attacks need; with ``dataset.heldout_split`` also a third, held-out part
(``heldout_text``/``_x``/``_y``: e.g. a slice of the training file the models never train on, for
choosing among them — the weight average's ingredients). ``*_x`` are ``(N, L)`` int32 token ids right-padded with
the tokenizer's pad id, L = the longest tokenised sentence of the split (at most ``max_length``);
:class:`TokenLoader` trims each batch to its own longest sentence.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig

from robprune.data import faults
from robprune.data.faults import Audit
from robprune.data.source import get
from robprune.data.splits import parse_split, warn_overlap
from robprune.data.text_sources import canonical_split
from robprune.errors import ConfigError, DataError
from robprune.io import atomic_save_tensors, source_fingerprint
from robprune.registry import DATASETS


@dataclass
class TextBundle:
    """Tokenised train/test splits of a text dataset (see the module docstring for shapes)."""

    name: str
    train_text: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_text: list[str]
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    max_length: int
    tokenizer: Any
    tokenizer_id: str
    heldout_text: list[str] | None = None
    heldout_x: torch.Tensor | None = None
    heldout_y: torch.Tensor | None = None
    audit: Audit = field(default_factory=Audit)  # faults found while loading: warnings, overlap, unseen classes

    modality = "text"

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def arch_record(self) -> dict:
        return {"num_classes": int(self.num_classes), "pad_id": self.pad_id, "vocab_size": len(self.tokenizer)}

    def meta(self) -> dict:
        return {"name": self.name, "modality": "text", "num_classes": int(self.num_classes),
                "max_length": int(self.max_length), "tokenizer": self.tokenizer_id,
                "example_shape": [int(self.max_length)]}

    def example_inputs(self, n: int = 1, *, random: bool = False) -> torch.Tensor:
        """(n, max_length) int64 ids of full-length sentences ([CLS] w … w [SEP]); ``random`` is accepted for
        the image interface's sake: the ids are always drawn from a fixed seed, so costs are comparable."""
        gen = torch.Generator().manual_seed(0)
        special = set(self.tokenizer.all_special_ids)
        low = max(special) + 1 if special else 0
        ids = torch.randint(low, len(self.tokenizer), (int(n), self.max_length), generator=gen)
        if self.tokenizer.cls_token_id is not None and self.tokenizer.sep_token_id is not None:
            ids[:, 0], ids[:, -1] = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        return ids

    def loader(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, **kwargs) -> "TokenLoader":
        return TokenLoader(x, y, batch_size, pad_id=self.pad_id, **kwargs)

    def check_model(self, model) -> None:
        """The model must take token ids (a text classifier) and have a position embedding for every token of
        a ``dataset.max_length`` sentence (a longer sentence ends in an index error inside the encoder)."""
        if not hasattr(model, "pad_id"):
            raise ConfigError(f"dataset.name={self.name} is a text dataset but model._target_ builds "
                              f"{type(model).__name__}, an image model; use model=minilm (or another text model)")
        positions = getattr(getattr(getattr(model, "hf", None), "config", None), "max_position_embeddings", None)
        if isinstance(positions, int) and int(self.max_length) > positions:
            raise ConfigError(f"dataset.max_length={self.max_length} is longer than the model's {positions} position "
                              f"embeddings; set dataset.max_length={positions} or lower (or a model with more positions)")


class TokenLoader:
    """Iterate ``(ids, y)`` batches: ids (B, L_b) int64 with L_b = the batch's longest sentence (dynamic
    padding), y (B,) int64, both on ``device``. Same reproducibility contract as
    :class:`robprune.data.BatchLoader`: the shuffle is drawn from ``generator`` when iteration starts."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, pad_id: int, shuffle: bool,
                 generator: torch.Generator | None = None, augment: Any = None, device: str | torch.device = "cpu",
                 drop_last: bool = False):
        if x.ndim != 2 or x.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"TokenLoader needs (N, L) integer token ids, got {x.dtype} {tuple(x.shape)}")
        if augment and any(augment.get(k) for k in ("crop_padding", "hflip")):
            raise ConfigError("dataset.augment does not apply to text; remove it")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.device = torch.device(device)
        self.x, self.y = x.to(self.device), y.to(self.device, torch.int64)
        self.lengths = (self.x != pad_id).sum(dim=1)
        self.batch_size, self.shuffle, self.generator, self.drop_last = int(batch_size), shuffle, generator, drop_last

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        return self._batches(order.to(self.device))

    def _batches(self, order: torch.Tensor):
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            width = max(1, int(self.lengths[idx].max()))
            yield self.x[idx, :width].long(), self.y[idx]


# --- building ----------------------------------------------------------------------------------------

def build_text_data(cfg: DictConfig, *, cache_dir: str | Path | None = None) -> TextBundle:
    """Read ``cfg.train_split`` / ``cfg.test_split`` of text dataset ``cfg.name`` and tokenise them."""
    name = str(get(cfg, "name"))
    texts = DATASETS.names(modality="text")
    if name not in texts:
        raise ConfigError(f"dataset.name={name!r} is not a known text dataset; choose one of {', '.join(texts)}")
    source = DATASETS.get(name)
    max_length = get(cfg, "max_length")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"dataset.max_length must be an integer >= 2 (tokens incl. [CLS] and [SEP]), got {max_length!r}")
    tokenizer = get(cfg, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError("dataset.tokenizer is null and the model names no pretrained tokenizer; pass "
                          "dataset.tokenizer=<hub name or folder> or a text model (model=minilm)")
    tokenizer, tokenizer_id = load_tokenizer(str(tokenizer))
    bases: dict[str, tuple[list[str], torch.Tensor, list[Path]]] = {}  # base split -> sentences, labels, files
    (train_text, train_y), train_at = _select(source, cfg, "train_split", bases)
    (test_text, test_y), test_at = _select(source, cfg, "test_split", bases)
    warn_overlap(train_at, test_at)
    heldout_text, heldout_y = None, None
    if get(cfg, "heldout_split", None) is not None:
        (heldout_text, heldout_y), heldout_at = _select(source, cfg, "heldout_split", bases)
        warn_overlap(train_at, heldout_at)
    num_classes = _num_classes(cfg, source, tuple(y for y in (train_y, test_y, heldout_y) if y is not None))
    audit = _audit(name, (train_text, train_y, train_at), (test_text, test_y), bases)
    encode = lambda texts: tokenize(tokenizer, tokenizer_id, texts, max_length, cache_dir)  # noqa: E731
    return TextBundle(name=name, train_text=train_text, train_x=encode(train_text), train_y=train_y,
                      test_text=test_text, test_x=encode(test_text), test_y=test_y, num_classes=num_classes,
                      max_length=int(max_length), tokenizer=tokenizer, tokenizer_id=tokenizer_id,
                      heldout_text=heldout_text, heldout_x=None if heldout_text is None else encode(heldout_text),
                      heldout_y=heldout_y, audit=audit)


def _audit(name: str, train: tuple, test: tuple, bases: dict) -> Audit:
    """Test classes without a training sentence (refused when the training file has none: the model could never
    learn them) and test sentences identical to training ones (robprune.data.faults)."""
    (train_text, train_y, (base, _)), (test_text, test_y) = train, test
    texts, labels, files = bases[base]
    place = files[0] if len(files) == 1 else Path(os.path.commonpath(files))
    unseen = faults.unseen_classes(name, train_y, test_y, labels,
                                   lambda label: f"{place} holds no training example of label {label}")
    pairs = faults.overlap_pairs(train_text, test_text)
    faults.warn_overlap_pairs(name, pairs, len(test_y), lambda part, i: f"{part} sentence {i} "
                              f"{(train_text if part == 'train' else test_text)[i][:60]!r}")
    return Audit(n_test=len(test_y), overlap=len(pairs), unseen=unseen)


def _select(source, cfg: DictConfig, key: str, bases: dict) -> tuple[tuple[list[str], torch.Tensor], tuple[str, slice]]:
    spec = str(get(cfg, key))
    base, part = parse_split(spec, key=f"dataset.{key}")
    base = canonical_split(source, base)
    if base not in bases:
        files = source.locate(cfg, base)
        bases[base] = (*source.read(cfg, base, files), files)
    texts, labels, _ = bases[base]
    where = part.resolve(len(texts), key=f"dataset.{key}", spec=spec)
    texts, labels = texts[where], labels[where].clone()
    if not texts:
        raise DataError(f"dataset.{key}={spec!r} selects no sentences of dataset {cfg.name!r} "
                        f"({len(bases[base][0])} in split {base!r}); widen the slice")
    return (texts, labels), (base, where)


def _num_classes(cfg: DictConfig, source, labels: tuple[torch.Tensor, ...]) -> int:
    count = int(get(cfg, "num_classes", source.num_classes))
    if count != source.num_classes:
        raise ConfigError(f"dataset.num_classes={count} but {cfg.name} has {source.num_classes} classes; "
                          f"set dataset.num_classes={source.num_classes}")
    if any(int(y.max()) >= count or int(y.min()) < 0 for y in labels if y.numel()):
        raise DataError(f"dataset {cfg.name!r}: labels outside [0, {count}); check the label column of the files")
    return count


def load_tokenizer(name: str) -> tuple[Any, str]:
    """(fast tokenizer, content id) of ``name`` (hub name, folder or ``minilm-l6``); the id is a digest
    of the tokenizer's full serialisation (vocabulary, normaliser, special tokens)."""
    from robprune.models.text import hub_error, offline_hub, resolve_pretrained

    offline_hub()
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    where = resolve_pretrained(name, "dataset.tokenizer")
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError, TypeError) as err:
        raise hub_error(where, "dataset.tokenizer", err) from None
    finally:
        hf_logging.set_verbosity(level)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or tokenizer.pad_token_id is None:
        raise ConfigError(f"dataset.tokenizer={name}: robprune needs a fast tokenizer (tokenizer.json) with a pad "
                          "token; save it with a recent transformers version")
    blob = json.dumps([backend.to_str(), tokenizer.pad_token_id, tokenizer.all_special_tokens])
    return tokenizer, hashlib.sha256(blob.encode()).hexdigest()[:16]


def tokenize(tokenizer, tokenizer_id: str, texts: list[str], max_length: int, cache_dir: str | Path | None) -> torch.Tensor:
    """(N, L) int32 ids of ``texts`` (truncated to max_length, right-padded to the longest), from a
    safetensors cache file named by the texts, the tokenizer, max_length, this code and the libraries."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir).expanduser() / f"tokens-{_cache_name(tokenizer_id, texts, max_length)}.safetensors"
        cached = _read_tokens(path, len(texts))
        if cached is not None:
            return cached
    enc = tokenizer(texts, truncation=True, max_length=int(max_length), padding="longest", return_tensors="pt")
    ids = enc["input_ids"].to(torch.int32).contiguous()
    if path is not None:
        atomic_save_tensors(path, {"ids": ids}, metadata={"tokenizer": tokenizer_id, "n": str(len(texts))})
    return ids


def _cache_name(tokenizer_id: str, texts: list[str], max_length: int) -> str:
    from importlib import metadata

    h = hashlib.sha256()
    libs = [metadata.version(p) for p in ("tokenizers", "transformers")]
    h.update(json.dumps([tokenizer_id, int(max_length), libs, source_fingerprint(str(Path(__file__).parent))]).encode())
    for text in texts:
        h.update(text.encode("utf-8", "surrogatepass") + b"\x00")
    return h.hexdigest()[:24]


def _read_tokens(path: Path, n: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        ids = load_file(str(path))["ids"]
        if ids.dtype != torch.int32 or ids.ndim != 2 or len(ids) != n:
            raise ValueError("unexpected shape or dtype")
    except Exception as err:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
        warnings.warn(f"ignoring unreadable token cache {path} ({err}); tokenising again", stacklevel=3)
        return None
    return ids
