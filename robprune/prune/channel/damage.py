"""The damage check (docs/methods/mrpf.md#step-8): does a per-layer score rank layers like the damage that
pruning them does?

For every prunable group (the architecture's coupled groups as the pruner sees them, stem and hidden
Linear layers included, the classifier never), a deep copy of the dense model loses 50% of that
group's output channels, lowest L1 filter norm first, *physically*, through the same cut as the real
prune stage (:func:`~robprune.prune.channel.structured.cut_group`: BN entries and the next layer's inputs go
with them, so the damage is the one a real cut does; zeroing would keep BN's β and the biases alive).
damage = L_adv(pruned copy; AE) − L_adv(dense; AE), the loss MRS is measured with.

Each score is compared with the damage by Spearman's rank correlation: MRS (group mean, as the
allocation sees it), L1 (mean over the group's output channels of the filter L1 norm Σ|w|, mean over
coupled members; not divided by fan-in) and Taylor (mean over the channels of Molchanov et al.'s
(Σ g·w)², CVPR 2019 Eq. 8, g = ∂L_adv/∂w on AE). Stability: the calibration set AND the MRS are
recomputed for each of ``damage_seeds`` (the damage stays the one measured on the main AE), giving ρ per
seed and the mean pairwise Spearman of the MRS rankings across seeds.

Cost: one deep copy, one trace, one cut and one forward pass over AE per group, one gradient pass
for Taylor, plus one calibration set + MRS per extra seed.
"""
from __future__ import annotations

import copy
import itertools
import statistics
import time
import warnings
from typing import Callable, Sequence

import torch
from torch import nn

from robprune.prune.channel.importance import FilterNormImportance, TaylorImportance, weight_gradients
from robprune.prune.channel.sensitivity import Sensitivity, adversarial_loss, group_scores
from robprune.prune.channel.structured import PrunableGroup, build_groups, cut_group

DAMAGE_RATIO = 0.5  # fraction of a group's output channels removed for its damage
SCORES = ("mrs", "l1", "taylor")  # per-layer scores compared with the damage


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's ρ in [-1, 1]; None when undefined (fewer than 2 items, or a constant input)."""
    if len(a) < 2:
        return None
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConstantInputWarning: the None below says it
        rho = float(spearmanr(a, b).statistic)
    return None if rho != rho else rho


def dense_groups(model: nn.Module, example: torch.Tensor) -> list[PrunableGroup]:
    """Every prunable group of ``model`` (no exclusions but the classifier); model mode as found."""
    was_training = model.training
    try:
        return build_groups(model, example, exclude_stem=False, exclude_linear=False)[1]
    finally:
        model.train(was_training)


def prune_alone_damage(model: nn.Module, root: str, result: Sensitivity, *, ratio: float, batch_size: int) -> float:
    """L_adv increase on AE (result.x_adv, result.y) after removing ``ratio`` of group ``root``'s output
    channels by L1 norm on a deep copy (the dense model is not touched)."""
    pruned = copy.deepcopy(model).eval()
    dg, groups = build_groups(pruned, result.x_adv[:1], exclude_stem=False, exclude_linear=False)
    group = next(g for g in groups if g.root == root)
    cut_group(dg, group, FilterNormImportance(p=1)(group.tp_group), ratio)
    pruned.eval()
    return adversarial_loss(pruned, result.x_adv, result.y, batch_size) - result.baseline_loss


def layer_proxies(model: nn.Module, groups: list[PrunableGroup], result: Sensitivity, *,
                  device: torch.device, batch_size: int) -> dict[str, dict[str, float]]:
    """{root: {"l1", "taylor"}}: group means of the per-channel L1 norm and Taylor importance."""
    grads = weight_gradients(model, result.x_adv, result.y, device=device, batch_size=batch_size)
    taylor = TaylorImportance({m: g.to(m.weight.device) for m, g in grads.items()})
    l1 = FilterNormImportance(p=1)
    return {g.root: {"l1": float(l1(g.tp_group).mean()), "taylor": float(taylor(g.tp_group).mean())} for g in groups}


def group_mrs(result: Sensitivity, groups: list[PrunableGroup]) -> dict[str, float]:
    """{root: mean MRS of the group's members} for one Sensitivity."""
    return group_scores({n: row["mrs"] for n, row in result.layers.items()},
                        [{"root": g.root, "members": list(g.members)} for g in groups])


def seed_stability(compute: Callable, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, main: Sensitivity,
                   groups: list[PrunableGroup], damage: list[float], seeds: Sequence[int], device: torch.device) -> dict:
    """ρ(MRS_s, damage) for every calibration seed s (AE and MRS recomputed; ``main`` reused for its own
    seed), its mean ± sample std, and the mean pairwise Spearman of the MRS rankings across seeds."""
    started, by_seed = time.perf_counter(), []
    for seed in seeds:
        result = main if int(seed) == int(main.info.get("seed", -1)) else compute(model, x, y, device=device, seed=int(seed))
        by_seed.append(list(group_mrs(result, groups).values()))
    rhos = [spearman(mrs, damage) for mrs in by_seed]
    pairs = [spearman(a, b) for a, b in itertools.combinations(by_seed, 2)]
    defined, pairs = [r for r in rhos if r is not None], [p for p in pairs if p is not None]
    return {"seeds": [int(s) for s in seeds], "spearman_mrs_damage": rhos,
            "mean": statistics.fmean(defined) if defined else None,
            "std": statistics.stdev(defined) if len(defined) > 1 else None,
            "mrs_rank_agreement": statistics.fmean(pairs) if pairs else None, "mrs_by_seed": by_seed,
            "seconds": round(time.perf_counter() - started, 3)}


def damage_check(compute: Callable, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, main: Sensitivity,
                 seeds: Sequence[int], device: torch.device, batch_size: int = 256, ratio: float = DAMAGE_RATIO) -> dict:
    """The scores.json ``damage`` block: {ratio, criterion, layers: [{name, members, mrs, damage, l1,
    taylor}], spearman: {mrs, l1, taylor}, stability, seconds}. compute: the instantiated
    ``prune.scores`` partial (called again with seed=s); main: its result on the dense ``model`` (on
    ``device``, eval mode). The model's weights, .grad and mode are left as found."""
    started, order = time.perf_counter(), {name: i for i, name in enumerate(main.layers)}
    groups = sorted(dense_groups(model, main.x_adv[:1]), key=lambda g: order[g.root])  # module order
    mrs = group_mrs(main, groups)
    proxies = layer_proxies(model, groups, main, device=device, batch_size=batch_size)
    rows = [{"name": g.root, "members": list(g.members), "mrs": mrs[g.root],
             "damage": prune_alone_damage(model, g.root, main, ratio=ratio, batch_size=batch_size),
             **proxies[g.root]} for g in groups]
    seconds_cuts = round(time.perf_counter() - started, 3)
    damage = [r["damage"] for r in rows]
    stability = seed_stability(compute, model, x, y, main=main, groups=groups, damage=damage, seeds=seeds, device=device)
    return {"ratio": ratio, "criterion": "l1", "layers": rows,
            "spearman": {key: spearman([r[key] for r in rows], damage) for key in SCORES}, "stability": stability,
            "seconds": {"cuts": seconds_cuts, "seeds": stability["seconds"],
                        "total": round(time.perf_counter() - started, 3)}}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def markdown_section(block: dict) -> str:
    """The damage check as a scores.md section: per-layer table, ρ per score, stability over seeds."""
    lines = ["", f"## Damage check: prune one layer alone by {block['ratio']:.0%} of its channels (L1), Δ L_adv on AE", "",
             "| layer | members | MRS | damage | L1 | Taylor |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['name']} | {', '.join(r['members'])} | {r['mrs']:.4g} | {r['damage']:.4g} | {r['l1']:.4g} | "
              f"{r['taylor']:.4g} |" for r in block["layers"]]
    rho, st = block["spearman"], block["stability"]
    lines += ["", "Spearman ρ with the damage: " + ", ".join(f"{k} {_fmt(rho[k])}" for k in SCORES), "",
              f"MRS over calibration seeds {st['seeds']}: ρ = {', '.join(_fmt(r) for r in st['spearman_mrs_damage'])}"
              f" (mean {_fmt(st['mean'])} ± {_fmt(st['std'])}); MRS rank agreement across seeds "
              f"(mean pairwise Spearman) {_fmt(st['mrs_rank_agreement'])}", ""]
    return "\n".join(lines)
