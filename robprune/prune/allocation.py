"""Allocation: how many channels each prunable group loses (step 2 of "pruning in three parts").

An allocator takes the list of :class:`~robprune.prune.structured.PrunableGroup` (ordered as the
dependency graph yields them) and returns ``{group.root: channel_ratio}``, the fraction of that group's
output channels to remove, in [0, 1). Uniform is the Li et al. / Adver-Fine baseline; MRS-adaptive
(MRPF §2 step 4) is one more function with the same signature, bound with ``functools.partial``.
"""
from __future__ import annotations

from typing import Sequence


def uniform_ratios(groups: Sequence, *, channel_ratio: float) -> dict[str, float]:
    """The same ``channel_ratio`` for every prunable group (methods.md §1: p is a per-layer channel ratio)."""
    return {group.root: float(channel_ratio) for group in groups}
