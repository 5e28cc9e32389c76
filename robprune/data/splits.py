"""Split strings: a base split name plus an optional ``[start:stop]`` slice, e.g. ``'train'``,
``'train[:80%]'``, ``'test[8000:]'``, ``'train[10%:20%]'``, ``'test[-500:]'``.

Bounds are integers (negative counts from the end, as in Python) or whole percentages ``n%`` of the
base split's length, rounded down. Parsing is strict: steps, non-integer bounds, out-of-range bounds
and empty results are all ConfigErrors naming the config key, so a typo never silently changes the data.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from robprune.data.faults import warn
from robprune.errors import ConfigError

_SPLIT_RE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_\-]*)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?")
_HINT = "use a split name with an optional slice like 'train', 'train[:80%]' or 'test[8000:]'"


@dataclass(frozen=True)
class Bound:
    """One slice bound: ``value`` examples, or ``value`` percent of the split when ``percent``."""

    value: int
    percent: bool = False

    def resolve(self, n: int) -> int:
        """Signed example index for a split of ``n`` examples (negative: from the end)."""
        if not self.percent:
            return self.value
        count = abs(self.value) * n // 100  # rounded down, as documented
        return -count if self.value < 0 else count


@dataclass(frozen=True)
class SplitSlice:
    """``[start:stop]`` of a base split; ``None`` bounds mean the split's start / end."""

    start: Bound | None = None
    stop: Bound | None = None

    @property
    def is_full(self) -> bool:
        return self.start is None and self.stop is None

    def resolve(self, n: int, *, key: str = "split", spec: str = "") -> slice:
        """Concrete ``slice(lo, hi)`` with 0 <= lo < hi <= n for a base split of ``n`` examples.

        Raises ConfigError (naming ``key``) when a bound lies outside the split or the result is empty.
        """
        bounds = []
        for bound, default in ((self.start, 0), (self.stop, n)):
            if bound is None:
                bounds.append(default)
                continue
            idx = bound.resolve(n)
            if not -n <= idx <= n:
                raise ConfigError(f"{key}={spec!r} is out of range: the base split has {n} examples; "
                                  f"{_HINT}")
            bounds.append(idx + n if idx < 0 else idx)
        lo, hi = bounds
        if hi <= lo:
            raise ConfigError(f"{key}={spec!r} selects an empty slice ({lo}:{hi} of {n} examples); "
                              f"{_HINT}")
        return slice(lo, hi)


def _bound(text: str | None, key: str, spec: str) -> Bound | None:
    if text is None:
        return None
    if text.endswith("%"):
        value = int(text[:-1])
        if abs(value) > 100:
            raise ConfigError(f"{key}={spec!r} does not parse: a percentage must be within -100%..100%; {_HINT}")
        return Bound(value, percent=True)
    return Bound(int(text))


def parse_split(spec: str, *, key: str = "split") -> tuple[str, SplitSlice]:
    """``'test[8000:]'`` -> ``('test', SplitSlice(Bound(8000), None))``.

    key: the config key holding ``spec`` (e.g. ``'dataset.train_split'``), named in errors.
    """
    match = _SPLIT_RE.fullmatch(spec.strip()) if isinstance(spec, str) else None
    if match is None:
        raise ConfigError(f"{key}={spec!r} does not parse; {_HINT}")
    start = _bound(match["start"], key, spec)
    stop = _bound(match["stop"], key, spec)
    return match["name"], SplitSlice(start, stop)


def warn_overlap(train_at: tuple[str, slice], test_at: tuple[str, slice]) -> None:
    """Warn when two selections, each (base split, resolved slice), share examples (images and text)."""
    (train_base, a), (test_base, b) = train_at, test_at
    if train_base == test_base and max(a.start, b.start) < min(a.stop, b.stop):
        warn(f"dataset.train_split and dataset.test_split overlap on split {train_base!r} "
             f"([{a.start}:{a.stop}] and [{b.start}:{b.stop}]); test accuracy will be optimistic")
