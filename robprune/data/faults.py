"""Faults of a dataset that a run accepts but must not hide, and the missing class it refuses
(docs/concepts/data-faults.md).

Readers report an accepted fault with :func:`warn`, a :class:`~robprune.errors.DataWarning` of one line naming
the files and what was done (images converted, empty lines skipped); :func:`collected` gathers them while a
bundle is built, so that they reach the run's log and metrics.json ``warnings`` rather than Python's console
warnings. Once both splits are selected, the bundle's :class:`Audit` compares them:

- test examples identical to a training example (the same decoded pixels, or the same sentence): a warning
  with the count and the first pair; ``checks.train_test_overlap`` (robprune.evaluate.checks) fails above its
  threshold;
- test examples of a class with no training example: refused in one line when the training split's own files
  lack the class and the source names where it belongs (an image folder's class folder, a text file), since
  the model could never learn it; otherwise (a slice, a label array) a warning and a failing
  ``checks.unseen_class_fraction``.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from robprune.errors import DataError, DataWarning


@dataclass(frozen=True)
class Audit:
    """What building a bundle found: ``warnings`` (one line each, in order), ``n_test`` test examples,
    ``overlap`` of them identical to a training example (None: not measured, streamed images are not read
    up front), ``unseen`` of them in a class with no training example."""

    warnings: tuple[str, ...] = ()
    n_test: int = 0
    overlap: int | None = None
    unseen: int = 0


def warn(message: str) -> None:
    """Report an accepted fault (one line: the files, what was done, the fix)."""
    warnings.warn(message, DataWarning, stacklevel=2)


@contextmanager
def collected() -> Iterator[list[str]]:
    """The messages of the DataWarnings issued inside the block, in order and each once (the list fills as they
    come); none is printed. Other warnings are shown as usual."""
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)
        show = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, DataWarning):
                show(message, category, filename, lineno, file, line)
            elif str(message) not in notes:
                notes.append(str(message))

        warnings.showwarning = record
        yield notes


def overlap_pairs(train: torch.Tensor | list[str], test: torch.Tensor | list[str]) -> list[tuple[int, int]]:
    """(test index, index of an identical training example) for each test example that has one. train, test:
    (N, ...) uint8 tensors (compared byte for byte) or lists of str."""
    if isinstance(train, torch.Tensor):
        train_rows, test_rows = _rows(train), _rows(test)
        same = lambda i, j: np.array_equal(train_rows[i], test_rows[j])  # noqa: E731 - a hash collision is not a match
        train_keys, test_keys = [hash(r.tobytes()) for r in train_rows], [hash(r.tobytes()) for r in test_rows]
    else:
        same, train_keys, test_keys = (lambda i, j: train[i] == test[j]), train, test
    first: dict = {}
    for i, key in enumerate(train_keys):
        first.setdefault(key, i)
    return [(j, first[key]) for j, key in enumerate(test_keys) if key in first and same(first[key], j)]


def _rows(x: torch.Tensor) -> np.ndarray:
    return x.reshape(len(x), -1).numpy()


def warn_overlap_pairs(name: str, pairs: list[tuple[int, int]], n_test: int, describe: Callable[[str, int], str]) -> None:
    """One warning for the test examples identical to training ones; describe(part, index) names an example."""
    if pairs:
        test_i, train_i = pairs[0]
        warn(f"dataset {name!r}: {len(pairs)} of {n_test} test examples are identical to a training example (first: "
             f"{describe('test', test_i)} = {describe('train', train_i)}); accuracy on them measures memory, not "
             "generalisation: remove them from one split")


def unseen_classes(name: str, train_y: torch.Tensor, test_y: torch.Tensor, base_y: torch.Tensor,
                   where: Callable[[int], str | None]) -> int:
    """How many test examples belong to a class with no example in train_y (the training selection).

    base_y: the labels of the whole base split train_y was sliced from. When it has no example of such a class
    either and ``where(label)`` says where the class's training examples belong ('<folder> holds no images'),
    DataError; otherwise a warning."""
    seen = set(train_y.unique().tolist())
    missing = [c for c in test_y.unique().tolist() if c not in seen]
    if not missing:
        return 0
    counts = {c: int((test_y == c).sum()) for c in missing}
    in_base = set(base_y.unique().tolist())
    for c in missing:
        place = None if c in in_base else where(c)
        if place:
            raise DataError(f"dataset {name!r}: {place} but the test split has {counts[c]} example(s) of that class; "
                            "the model could never learn it: add training examples of it, or take it out of the test split")
    unseen = sum(counts.values())
    shown = ", ".join(str(c) for c in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    warn(f"dataset {name!r}: {unseen} of {len(test_y)} test examples belong to {len(missing)} class(es) with no "
         f"training example (label {shown}); the model never saw them: widen dataset.train_split or add training "
         "examples of them")
    return unseen
