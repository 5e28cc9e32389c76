"""The pruner policy (Torch-Pruning's "pruner"): score every group, allocate per-group ratios, cut.

It sits above its three parts, which know nothing of it: importance objects (:mod:`.importance`),
allocators (:mod:`.allocation`, on the analytic :class:`~.budget.ParamBudget`) and the cut
(:mod:`.structured`, a leaf).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch_pruning as tp
from torch import nn

from robprune.prune.channel.allocation import AllocationInput
from robprune.prune.channel.budget import ParamBudget
from robprune.prune.channel.structured import build_groups, cut_group, json_history, layer_rows
from robprune.prune.stats import conv_channels, count_params, parameter_sparsity, prunable_weight_count

Allocator = Callable[[AllocationInput], dict[str, float]]  # fn(AllocationInput) -> {group root: channel ratio}


def structured_prune(model: nn.Module, *, example_inputs: torch.Tensor, importance: tp.importance.Importance,
                     allocate: Allocator, exclude_stem: bool, exclude_linear: bool, min_channels: int = 1) -> dict:
    """Score, allocate and cut, IN PLACE. Leaves ``model.training`` as it was.

    example_inputs: (N, C, H, W) on the model's device; only the first example is traced.
    allocate: ``fn(AllocationInput) -> {group root: channel ratio}`` (see :mod:`robprune.prune.channel.allocation`).
    min_channels: channels every group keeps (>= 1).
    Scores are computed for all groups on the unpruned model before any cut (Li et al. 2017's
    "independent" strategy), so the order of cuts does not change which channels go.
    Returns the info dict described in :func:`robprune.prune.prune_model` (minus method keys).
    """
    was_training = model.training
    before, weights_before, params_before = conv_channels(model), prunable_weight_count(model), count_params(model)
    try:
        dg, groups = build_groups(model, example_inputs, exclude_stem=exclude_stem, exclude_linear=exclude_linear)
        scores = {group.root: importance(group.tp_group) for group in groups}
        budget = ParamBudget(model, groups, min_keep=min_channels)
        ratios = allocate(AllocationInput(groups, scores, budget))
        for group in groups:
            cut_group(dg, group, scores[group.root], ratios[group.root], min_keep=min_channels)
    finally:
        model.train(was_training)
    weights_after = prunable_weight_count(model)
    return {"structured": True, "history": json_history(dg), "ratios": ratios,
            "groups": [{"root": g.root, "members": list(g.members), "channels": g.channels} for g in groups],
            "sparsity": parameter_sparsity(weights_before, weights_after),
            "prunable_before": weights_before, "prunable_after": weights_after,
            "params_before": params_before, "params_after": count_params(model),
            "layers": layer_rows(before, conv_channels(model), groups, ratios)}
