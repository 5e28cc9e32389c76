"""Seeded blocks: the unit an image evaluation is cut into, so that its numbers do not depend on how
many processes share it.

The points of an evaluation (positions 0..n-1 of the seeded permutation of the test set; for
corruptions, of their subset) are cut into consecutive blocks of ``eval.block_size`` points. Block k
runs under torch's global RNG seeded with :func:`block_seed` (block 0: the evaluation seed itself, so
an evaluation that fits one block draws what it drew before blocks existed), and its per-example
outcomes are joined in block order. Block k belongs to data-parallel rank k % world; one process
(world 1) runs every block in order, so any number of ranks gives the same numbers.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from robprune.attacks.common import check_min

BLOCK_SIZE = 1000  # eval.block_size when a config has none (conf/eval/*.yaml set it)


@dataclass(frozen=True)
class Block:
    """Positions start..stop-1 (of a permutation or subset) with their seed; index k counts from 0."""

    index: int
    start: int
    stop: int
    seed: int

    def clip(self, n: int) -> int:
        """How many of this block's positions lie inside a prefix of n positions (0 when none)."""
        return max(0, min(self.stop, n) - self.start)


def block_seed(seed: int, index: int) -> int:
    """Block 0: ``seed``; block k > 0: 31 bits of sha256 over (seed, k) (fits every RNG that takes a seed)."""
    if index == 0:
        return int(seed)
    return int(hashlib.sha256(f"{int(seed)}:block:{int(index)}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def blocks(n: int, size: int, seed: int) -> list[Block]:
    """The blocks of n positions, ``size`` each (the last one shorter)."""
    return [Block(k, start, min(start + size, n), block_seed(seed, k)) for k, start in enumerate(range(0, n, size))]


def owned(all_blocks: list[Block], rank: int, world: int) -> list[Block]:
    """Rank ``rank``'s share of ``world``: blocks k with k % world == rank, in order."""
    return [b for b in all_blocks if b.index % world == rank]


def block_size(eval_cfg) -> int:
    """eval.block_size (a positive int; absent: :data:`BLOCK_SIZE`)."""
    return check_min(int(eval_cfg.get("block_size", BLOCK_SIZE)), "eval.block_size", 1)


def gather(part: Any, rank: int, world: int) -> list | None:
    """Every rank's ``part`` on rank 0 (a list in rank order; None on the other ranks). world 1: [part],
    no process group needed; otherwise torch.distributed's group must exist (every rank calls this)."""
    if world == 1:
        return [part]
    import torch.distributed as dist

    parts = [None] * world if rank == 0 else None
    dist.gather_object(part, parts, dst=0)
    return parts
