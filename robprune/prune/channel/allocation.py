"""Allocation: how many channels each prunable group loses (step 2 of "pruning in three parts").

An allocator is ``fn(AllocationInput) -> {group.root: channel_ratio}`` with its options bound by
``functools.partial``; the ratio is the fraction of that group's output channels to remove, in [0, 1).
Allocators that take ``sparsity`` hit a global parameter-sparsity target (docs/methods/conventions.md#sparsity,
``ratio_semantics: params``) by bisection on the analytic budget of
:class:`~robprune.prune.channel.budget.ParamBudget`; :func:`uniform_ratios` applies a per-layer channel ratio
(``ratio_semantics: channel``). Any importance combines with any allocator. MRPF's scores become
ratios by :func:`bounded_ratios` (``rule: bounded``, the default) or :func:`inverse_ratios` (``inverse``).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from robprune.errors import ConfigError

if TYPE_CHECKING:
    from robprune.prune.channel.budget import ParamBudget
    from robprune.prune.channel.structured import PrunableGroup

Ratios = dict[str, float]


@dataclass
class AllocationInput:
    """groups: prunable groups in graph order; channel_scores: {root: (C,) importance, low = removed
    first}; budget: achieved parameter sparsity of a ratio assignment, without cutting."""

    groups: Sequence["PrunableGroup"]
    channel_scores: dict[str, torch.Tensor]
    budget: "ParamBudget"


def uniform_ratios(inp: AllocationInput, *, channel_ratio: float) -> Ratios:
    """The same ``channel_ratio`` for every prunable group (docs/methods/adverfine.md#step-2: p is a per-layer channel ratio)."""
    return {group.root: float(channel_ratio) for group in inp.groups}


def bisect_sparsity(ratios_for: Callable[[float], Ratios], budget: "ParamBudget", target: float, *,
                    high: float, low: float = 0.0, iters: int = 60, caps: str = "prune.r_max") -> Ratios:
    """Bisection on a scalar c in [low, high] so that budget.sparsity(ratios_for(c)) hits ``target``.

    ratios_for must make the achieved sparsity non-decreasing in c, and ratios_for(low) must not
    overshoot the target. Channel counts are integers, so the achieved sparsity is a step function:
    returns the ratios of whichever bracket end lands closer. Raises ConfigError if even c = high stays
    below the target (``caps``, the keys bounding the ratios, or the exclusions are too tight).
    """
    most = budget.sparsity(ratios_for(high))
    if most < target - 1e-9:
        raise ConfigError(f"prune.sparsity={target:g} is not reachable: with {caps} and the excluded layers "
                          f"at most {most:.4f} of the parameters can be removed; lower prune.sparsity or raise {caps.replace(', ', ' or ')}")
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


@dataclass(frozen=True)
class BoundedRule:
    """Options of the bounded MRS rule r_l = clip(c − λ·z_l, r_min, r_max_l) (docs/methods/mrpf.md#step-4).

    lam: λ ≥ 0, channel ratio per unit of z; r_min ≤ r_max in [0, 1): the ratio range; r_max_small in
    [0, 1): r_max_l of groups holding under ``small_fraction`` ∈ [0, 1) of the Conv2d/Linear weights
    (never above r_max); score_floor ∈ (0, 1]: scores are floored at this fraction of the median.
    """

    lam: float = 0.4
    r_min: float = 0.0
    r_max: float = 0.95
    r_max_small: float = 0.5
    small_fraction: float = 0.02
    score_floor: float = 0.1


def standardised_log_scores(scores: dict[str, float], score_floor: float) -> tuple[Ratios, Ratios]:
    """(s, z) per group: s_l = max(MRS_l, score_floor · m), m = the median MRS (the median of the
    positive ones when that is ≤ 0); z_l = (log s_l − mean) / std over the groups (population std).
    All z are 0 (the uniform allocation) when std = 0 or no score is positive."""
    values = list(scores.values())
    m = statistics.median(values) if values else 0.0
    if m <= 0:
        positive = [v for v in values if v > 0]
        m = statistics.median(positive) if positive else 0.0
    if m <= 0:  # no positive score: every group equally insensitive
        return dict(scores), dict.fromkeys(scores, 0.0)
    s = {root: max(v, score_floor * m) for root, v in scores.items()}
    logs = {root: math.log(v) for root, v in s.items()}
    mean = math.fsum(logs.values()) / len(logs)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in logs.values()) / len(logs))
    if std <= 1e-12 * max(1.0, abs(mean)):  # equal scores (up to rounding)
        return s, dict.fromkeys(s, 0.0)
    return s, {root: (v - mean) / std for root, v in logs.items()}


def group_caps(groups: Sequence["PrunableGroup"], budget: "ParamBudget", *, r_max: float, r_max_small: float,
               small_fraction: float) -> Ratios:
    """{root: r_max_l}: min(r_max_small, r_max) for a group whose members' weights are under
    ``small_fraction`` of all Conv2d/Linear weight elements (the sparsity denominator), else r_max."""
    def share(group) -> float:
        held = sum(budget.dims[m][2] for m in group.members if m in budget.dims)
        return held / budget.total if budget.total else 0.0

    small = min(r_max_small, r_max)
    return {g.root: small if share(g) < small_fraction else r_max for g in groups}


def bounded_ratios(inp: AllocationInput, *, group_scores: dict[str, float], rule: BoundedRule,
                   sparsity: float | None = None, channel_ratio: float | None = None,
                   normalization: str = "bisection") -> Ratios:
    """robprune's MRS rule (``rule: bounded``): ratios a bounded, smooth function of the scores.

    group_scores: {root: MRS} (coupled groups: mean of their members'). normalization 'bisection': c
    by bisection so the global parameter sparsity equals ``sparsity``; 'mean': c = ``channel_ratio``
    (z has mean 0, so S is the mean ratio before clipping). Non-decreasing in c, as bisection needs.
    """
    check_normalization(normalization, sparsity, channel_ratio)
    _, z = standardised_log_scores(_scores_of(inp, group_scores), rule.score_floor)
    caps = group_caps(inp.groups, inp.budget, r_max=rule.r_max, r_max_small=rule.r_max_small,
                      small_fraction=rule.small_fraction)

    def ratios_for(c: float) -> Ratios:
        # docs/methods/mrpf.md#step-4 (robprune's resolution): r_l = clip(c − λ·z_l, r_min, r_max_l)
        return {root: min(max(c - rule.lam * z[root], rule.r_min), caps[root]) for root in z}

    if normalization == "mean":
        return ratios_for(float(channel_ratio))
    spread = rule.lam * max((abs(v) for v in z.values()), default=0.0)
    low, high = rule.r_min - spread, rule.r_max + spread  # every group at r_min .. at its r_max_l
    least = inp.budget.sparsity(ratios_for(low))
    if least > sparsity + 1e-9:
        raise ConfigError(f"prune.sparsity={sparsity:g} is below {least:.4f}, what prune.r_min={rule.r_min:g} "
                          f"already removes; lower prune.r_min or raise prune.sparsity")
    return bisect_sparsity(ratios_for, inp.budget, sparsity, low=low, high=high, caps="prune.r_max, prune.r_max_small")


def inverse_ratios(inp: AllocationInput, *, group_scores: dict[str, float], sparsity: float | None = None,
                   channel_ratio: float | None = None, r_max: float = 0.95, normalization: str = "bisection") -> Ratios:
    """The old MRS rule (``rule: inverse``): ratios inversely proportional to the module robustness
    sensitivity of each group. Kept as an option; docs/methods/mrpf.md#step-4 says why it is not the default
    (noise-sized or negative scores all floor to τ and every such group gets r_max).

    group_scores: {root: MRS} (coupled groups: mean of their members' MRS).
    s_l = max(MRS_l, τ), τ = 1e-6 · max MRS (negative MRS = insensitive). normalization 'bisection':
    r_l = clip(c / s_l, 0, r_max) with c found by bisection so the global parameter sparsity equals
    ``sparsity``. normalization 'mean': r_l = clip(S·L·(1/s_l) / Σ_j (1/s_j), 0, r_max) with
    S = ``channel_ratio`` (the mean per-layer channel ratio before clipping).
    """
    check_normalization(normalization, sparsity, channel_ratio)
    s = _floored(inp, group_scores)
    if normalization == "mean":
        inv = {root: 1.0 / v for root, v in s.items()}
        scale = float(channel_ratio) * len(inv) / sum(inv.values())  # MRPF Eq. (r_l = S·L·(1/s_l)/Σ 1/s_j)
        return {root: min(max(scale * v, 0.0), r_max) for root, v in inv.items()}
    ratios_for = lambda c: {root: min(c / v, r_max) for root, v in s.items()}  # noqa: E731  MRPF, docs/methods/mrpf.md#step-4
    return bisect_sparsity(ratios_for, inp.budget, sparsity, high=r_max * max(s.values()))




def check_normalization(normalization: str, sparsity: float | None, channel_ratio: float | None) -> None:
    """The amount each normalisation needs (ConfigError otherwise): mean spreads channel_ratio, bisection
    hits sparsity. The MRS options' cross-key rule (MRSPruning.check_mrs) and the allocators' precondition."""
    if normalization not in ("bisection", "mean"):
        raise ConfigError(f"prune.normalization must be bisection or mean, got {normalization!r}; e.g. prune.normalization=bisection")
    if normalization == "mean" and channel_ratio is None:
        raise ConfigError("prune.normalization=mean spreads a mean per-layer channel ratio S: set prune.channel_ratio "
                          "(e.g. prune.channel_ratio=0.5 prune.sparsity=null), or use prune.normalization=bisection")
    if normalization == "bisection" and sparsity is None:
        raise ConfigError("prune.normalization=bisection needs prune.sparsity (a global parameter fraction), e.g. prune.sparsity=0.9")


def _scores_of(inp: AllocationInput, group_scores: dict[str, float]) -> dict[str, float]:
    """{root: MRS} for every prunable group, in graph order; ConfigError when one has no score."""
    missing = [g.root for g in inp.groups if g.root not in group_scores]
    if missing:
        raise ConfigError(f"prune: no MRS score for group(s) {', '.join(missing)}; the scores do not fit this model")
    return {g.root: float(group_scores[g.root]) for g in inp.groups}


def _floored(inp: AllocationInput, group_scores: dict[str, float]) -> dict[str, float]:
    """s_l = max(MRS_l, τ) (the inverse rule) for every prunable group, in graph order."""
    return _tau_floor(_scores_of(inp, group_scores))


def _tau_floor(raw: dict[str, float]) -> dict[str, float]:
    """s_l = max(MRS_l, τ), τ = 1e-6 · max MRS; all MRS ≤ 0: τ = 1e-12 (every layer equally insensitive)."""
    top = max(raw.values(), default=0.0)
    tau = 1e-6 * top if top > 0 else 1e-12
    return {root: max(v, tau) for root, v in raw.items()}


def rule_terms(group_scores: dict[str, float], *, rule: str, score_floor: float) -> dict[str, dict]:
    """{root: {"s": floored score, "z": standardised log score}}: what the MRS rule turned into ratios, for
    the prune record (rule 'inverse': s = max(MRS, τ) and z = None)."""
    if rule == "inverse":
        return {root: {"s": v, "z": None} for root, v in _tau_floor(group_scores).items()}
    s, z = standardised_log_scores(group_scores, score_floor)
    return {root: {"s": s[root], "z": z[root]} for root in s}


def global_by_score(inp: AllocationInput, *, sparsity: float, r_max: float = 0.95) -> Ratios:
    """Global ranking: each group's channel scores are divided by their mean (Torch-Pruning's 'mean'
    normaliser, so criteria of different scale compare), one threshold t over all groups removes
    every channel below it (at most r_max of a group); t by bisection on the parameter sparsity."""
    normed = {root: sc / sc.mean().clamp_min(1e-12) for root, sc in inp.channel_scores.items()}
    channels = {g.root: g.channels for g in inp.groups}

    def ratios_for(t: float) -> Ratios:
        return {root: min(float((normed[root] < t).sum()) / channels[root], r_max) for root in channels}

    return bisect_sparsity(ratios_for, inp.budget, sparsity, high=max(float(v.max()) for v in normed.values()) + 1e-6)
