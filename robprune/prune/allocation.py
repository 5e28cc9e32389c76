"""Allocation: how many channels each prunable group loses (step 2 of "pruning in three parts").

An allocator is ``fn(AllocationInput) -> {group.root: channel_ratio}`` with its options bound by
``functools.partial``; the ratio is the fraction of that group's output channels to remove, in [0, 1).
Allocators that take ``sparsity`` hit a global parameter-sparsity target (methods.md §0,
``ratio_semantics: params``) by bisection on the analytic budget of
:class:`~robprune.prune.budget.ParamBudget`; :func:`uniform_ratios` applies a per-layer channel ratio
(``ratio_semantics: channel``). Any importance combines with any allocator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from robprune.errors import ConfigError

if TYPE_CHECKING:
    from robprune.prune.budget import ParamBudget
    from robprune.prune.structured import PrunableGroup

Ratios = dict[str, float]


@dataclass
class AllocationInput:
    """groups: prunable groups in graph order; channel_scores: {root: (C,) importance, low = removed
    first}; budget: achieved parameter sparsity of a ratio assignment, without cutting."""

    groups: Sequence["PrunableGroup"]
    channel_scores: dict[str, torch.Tensor]
    budget: "ParamBudget"


def uniform_ratios(inp: AllocationInput, *, channel_ratio: float) -> Ratios:
    """The same ``channel_ratio`` for every prunable group (methods.md §1: p is a per-layer channel ratio)."""
    return {group.root: float(channel_ratio) for group in inp.groups}


def bisect_sparsity(ratios_for: Callable[[float], Ratios], budget: "ParamBudget", target: float, *,
                    high: float, iters: int = 60) -> Ratios:
    """Bisection on a scalar c in [0, high] so that budget.sparsity(ratios_for(c)) hits ``target``.

    ratios_for must make the achieved sparsity non-decreasing in c. Channel counts are integers, so the
    achieved sparsity is a step function: returns the ratios of whichever bracket end lands closer.
    Raises ConfigError if even c = high stays below the target (r_max or exclusions too tight).
    """
    most = budget.sparsity(ratios_for(high))
    if most < target - 1e-9:
        raise ConfigError(f"prune.sparsity={target:g} is not reachable: with prune.r_max and the excluded layers "
                          f"at most {most:.4f} of the parameters can be removed; lower prune.sparsity or raise prune.r_max")
    low = 0.0
    for _ in range(iters):
        mid = 0.5 * (low + high)
        if budget.sparsity(ratios_for(mid)) < target:
            low = mid
        else:
            high = mid
    below, above = ratios_for(low), ratios_for(high)
    closer_below = target - budget.sparsity(below) < budget.sparsity(above) - target
    return below if closer_below else above


def uniform_sparsity(inp: AllocationInput, *, sparsity: float, r_max: float = 0.95) -> Ratios:
    """One shared channel ratio r ∈ [0, r_max] for every group, found by bisection so the global
    parameter sparsity is ``sparsity`` (uniform L1/L2/Taylor/random baselines at a parameter target)."""
    return bisect_sparsity(lambda r: {g.root: r for g in inp.groups}, inp.budget, sparsity, high=r_max)


def mrs_ratios(inp: AllocationInput, *, group_scores: dict[str, float], sparsity: float | None = None,
               channel_ratio: float | None = None, r_max: float = 0.95, normalization: str = "bisection") -> Ratios:
    """MRPF (arXiv 2410.15176) §2 step 4: ratios inversely proportional to the module robustness
    sensitivity of each group.

    group_scores: {root: MRS} (coupled groups: mean of their members' MRS).
    s_l = max(MRS_l, τ), τ = 1e-6 · max MRS (negative MRS = insensitive). normalization 'bisection':
    r_l = clip(c / s_l, 0, r_max) with c found by bisection so the global parameter sparsity equals
    ``sparsity``. normalization 'mean': r_l = clip(S·L·(1/s_l) / Σ_j (1/s_j), 0, r_max) with
    S = ``channel_ratio`` (the mean per-layer channel ratio before clipping).
    """
    s = _floored(inp, group_scores)
    if normalization == "mean":
        if channel_ratio is None:
            raise ConfigError("prune.normalization=mean spreads a mean per-layer channel ratio S: set prune.channel_ratio "
                              "(e.g. prune.channel_ratio=0.5 prune.sparsity=null), or use prune.normalization=bisection")
        inv = {root: 1.0 / v for root, v in s.items()}
        scale = float(channel_ratio) * len(inv) / sum(inv.values())  # MRPF Eq. (r_l = S·L·(1/s_l)/Σ 1/s_j)
        return {root: min(max(scale * v, 0.0), r_max) for root, v in inv.items()}
    if normalization != "bisection":
        raise ConfigError(f"prune.normalization must be bisection or mean, got {normalization!r}")
    if sparsity is None:
        raise ConfigError("prune.normalization=bisection needs prune.sparsity (a global parameter fraction), e.g. prune.sparsity=0.9")
    ratios_for = lambda c: {root: min(c / v, r_max) for root, v in s.items()}  # noqa: E731  MRPF §2 step 4
    return bisect_sparsity(ratios_for, inp.budget, sparsity, high=r_max * max(s.values()))


def _floored(inp: AllocationInput, group_scores: dict[str, float]) -> dict[str, float]:
    """s_l = max(MRS_l, τ), τ = 1e-6 · max MRS (MRPF §2 step 4), for every prunable group."""
    missing = [g.root for g in inp.groups if g.root not in group_scores]
    if missing:
        raise ConfigError(f"prune: no MRS score for group(s) {', '.join(missing)}; the scores do not fit this model")
    raw = {g.root: float(group_scores[g.root]) for g in inp.groups}
    top = max(raw.values(), default=0.0)
    tau = 1e-6 * top if top > 0 else 1e-12  # all MRS ≤ 0: every layer equally insensitive
    return {root: max(v, tau) for root, v in raw.items()}


def global_by_score(inp: AllocationInput, *, sparsity: float, r_max: float = 0.95) -> Ratios:
    """Global ranking: each group's channel scores are divided by their mean (Torch-Pruning's 'mean'
    normaliser, so criteria of different scale compare), one threshold t over all groups removes
    every channel below it (at most r_max of a group); t by bisection on the parameter sparsity."""
    normed = {root: sc / sc.mean().clamp_min(1e-12) for root, sc in inp.channel_scores.items()}
    channels = {g.root: g.channels for g in inp.groups}

    def ratios_for(t: float) -> Ratios:
        return {root: min(float((normed[root] < t).sum()) / channels[root], r_max) for root in channels}

    return bisect_sparsity(ratios_for, inp.budget, sparsity, high=max(float(v.max()) for v in normed.values()) + 1e-6)
