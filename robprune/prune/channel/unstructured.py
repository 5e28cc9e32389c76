"""Unstructured baseline: global magnitude pruning with masks (docs/methods/baselines.md).

The cut zeroes weights; nothing is removed, so the saved checkpoint has the dense architecture and the
zeros themselves are the mask. Fine-tuning keeps them: :class:`robprune.prune.masks.WeightMask`
re-derives the mask from the exact zeros at the start of fine-tuning and re-applies it after every
optimizer step. Sparsity has the one recorded meaning: fraction of Conv2d/Linear weight elements that
are zero (removed) — docs/methods/conventions.md#sparsity.
"""
from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from robprune.config import require_range
from robprune.errors import ConfigError
from robprune.prune.context import PruneContext
from robprune.prune.stats import PRUNABLE_TYPES, conv_channels, count_params, layer_table, prunable_weight_count
from robprune.options import BOOL, FRACTION, STR, Choice
from robprune.registry import PRUNERS


def candidate_layers(model: nn.Module, *, exclude_stem: bool, exclude_linear: bool) -> dict[str, nn.Module]:
    """{name: module} of the Conv2d/Linear layers whose weights may be zeroed."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    convs = [n for n, m in layers.items() if isinstance(m, nn.Conv2d)]
    drop = set(convs[:1] if exclude_stem else []) | {n for n, m in layers.items() if exclude_linear and isinstance(m, nn.Linear)}
    return {n: m for n, m in layers.items() if n not in drop}


@torch.no_grad()
def magnitude_masks(layers: dict[str, nn.Module], n_zero: int) -> dict[str, torch.Tensor]:
    """Global magnitude criterion (Han et al. 2015): the ``n_zero`` weights with the smallest |w| over
    all ``layers`` together get mask 0. Ties broken by position (stable sort), so masks are
    deterministic. Returns {name: bool mask of the weight's shape, True = kept}."""
    flat = torch.cat([m.weight.detach().abs().flatten().cpu() for m in layers.values()])
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:n_zero]] = False
    masks, start = {}, 0
    for name, m in layers.items():
        n = m.weight.numel()
        masks[name] = keep[start:start + n].view_as(m.weight)
        start += n
    return masks


@PRUNERS.register("global_magnitude", modality="image", family="channel")
def global_magnitude(model: nn.Module, context: PruneContext, *,
                     sparsity: Annotated[float, FRACTION, "fraction of ALL Conv2d/Linear weight elements zeroed (same "
                                         "definition as structured sparsity)"] = 0.9,
                     method: Annotated[str, STR, "name recorded in results"] = "global_magnitude",
                     exclude_stem: Annotated[bool, BOOL, "true = keep the first conv's weights (the others then lose "
                                             "more)"] = False,
                     exclude_linear: Annotated[bool, BOOL, "true = keep every Linear's weights"] = False,
                     ratio_semantics: Annotated[str, Choice("params"), "always params: weights, not channels, are "
                                                "removed"] = "params") -> dict:
    """Zero the globally smallest-magnitude weights, IN PLACE, so that a fraction ``sparsity`` of ALL
    Conv2d/Linear weight elements is zero (excluded layers keep theirs, so the others lose more).
    Returns the info dict of :func:`robprune.prune.prune_model` with structured=False, masked=True."""
    require_range(float(sparsity), "prune.sparsity", 0, 1)
    if ratio_semantics != "params":
        raise ConfigError(f"prune.ratio_semantics must be params for global_magnitude (it removes weights, not channels), got {ratio_semantics!r}")
    layers = candidate_layers(model, exclude_stem=exclude_stem, exclude_linear=exclude_linear)
    total, available = prunable_weight_count(model), sum(m.weight.numel() for m in layers.values())
    n_zero = round(float(sparsity) * total)
    if n_zero > available:
        raise ConfigError(f"prune.sparsity={sparsity} needs {n_zero:,} zero weights but only {available:,} are prunable "
                          f"with these exclusions; lower prune.sparsity or set prune.exclude_linear=false")
    masks = magnitude_masks(layers, n_zero)
    with torch.no_grad():
        for name, m in layers.items():
            m.weight.mul_(masks[name].to(m.weight.device, m.weight.dtype))
    zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, PRUNABLE_TYPES))
    channels, params = conv_channels(model), count_params(model)
    per_layer = {n: 1.0 - float(masks[n].float().mean()) for n in masks}
    return {"method": method, "structured": False, "masked": True, "ratio_semantics": "params",
            "channel_ratio": None, "sparsity_target": float(sparsity), "history": [], "ratios": {}, "groups": [],
            "sparsity": zeros / total if total else 0.0, "prunable_before": total, "prunable_after": total - zeros,
            "params_before": params, "params_after": params,
            "layers": [{**row, "weight_sparsity": per_layer.get(row["name"], 0.0)} for row in layer_table(channels, channels)],
            "weight_sparsity": per_layer}
