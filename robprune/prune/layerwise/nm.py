"""N:M sparsity patterns (N weights kept of every M consecutive input weights of a row), parsed and
checked in this one place: the config's ``prune.n_m`` (:func:`parse_n_m`), whether M divides the
input width of every layer to prune (:func:`check_n_m_fits`, ConfigErrors for people), and the
solvers' own precondition on one weight matrix (:func:`check_n_m`, ValueError for programmers)."""
from __future__ import annotations

from typing import Iterable

from robprune.errors import ConfigError


def parse_n_m(n_m, key: str = "prune.n_m") -> tuple[int, int] | None:
    """'2:4' (or [2, 4]) -> (2, 4): N kept of every M consecutive input weights; None stays None."""
    if n_m is None:
        return None
    try:
        n, m = (int(v) for v in (str(n_m).split(":") if isinstance(n_m, str) else n_m))
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={n_m!r} is not an N:M pattern; e.g. {key}=2:4 (N kept of every M)") from None
    if not 0 < n < m:
        raise ConfigError(f"{key}={n}:{m} must keep N of M with 0 < N < M; e.g. {key}=2:4")
    return n, m


def check_n_m_fits(n_m: tuple[int, int] | None, layers: Iterable[tuple[str, int]]) -> None:
    """ConfigError naming the first of ``layers`` ((name, input width) pairs) whose input width M does
    not divide, with a pattern that fits every one of them (2:4, else 1:2)."""
    if n_m is None:
        return
    layers = list(layers)
    widths = {width for _, width in layers}
    for name, width in layers:
        if width % n_m[1]:
            fits = next((f"{k // 2}:{k}" for k in (4, 2) if all(w % k == 0 for w in widths)), "1:2")
            raise ConfigError(f"prune.n_m={n_m[0]}:{n_m[1]} does not divide the input width {width} "
                              f"of {name} (M={n_m[1]} must divide it); e.g. prune.n_m={fits}")


def check_n_m(n_m: tuple[int, int], d_in: int) -> tuple[int, int]:
    """Validate an N:M pattern (N kept of every M columns, 0 < N < M, M divides d_in); returns (N, M)."""
    n, m = (int(v) for v in n_m)
    if not 0 < n < m:
        raise ValueError(f"N:M must keep 0 < N < M weights of every M, got {n}:{m}")
    if d_in % m:
        raise ValueError(f"N:M with M={m} needs M to divide the input width {d_in}")
    return n, m
