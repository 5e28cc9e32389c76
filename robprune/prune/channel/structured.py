"""The cut: physical channel removal with Torch-Pruning's dependency graph (step 3 of "pruning in
three parts"). Removing output channels of a conv also removes the matching BN entries and the next
layer's input channels; convs coupled by a residual add are one group and lose the same channels.

Exclusions remove whole groups: in ResNet-18 the stem's output is added to layer1's block outputs,
so excluding the stem also keeps ``layer1.*.conv2`` at full width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch_pruning as tp
from torch import nn

from robprune.prune.stats import layer_table

@dataclass(eq=False)
class PrunableGroup:
    """Layers whose output channels are removed together (one Torch-Pruning group)."""

    root: str                  # name of the module whose channel numbering indexes the group
    members: tuple[str, ...]   # Conv2d/Linear modules whose output channels go (several if residual-coupled)
    channels: int              # output channels of each member before pruning
    module: nn.Module = field(repr=False)
    tp_group: Any = field(repr=False)  # tp.Group with the full index range, for importance scoring


def excluded_modules(model: nn.Module, dg: tp.DependencyGraph, *, exclude_stem: bool,
                     exclude_linear: bool) -> list[nn.Module]:
    """Layers whose output channels are never removed.

    Always: any Conv2d/Linear whose output is the network output (the classifier), so the output
    shape is kept. ``exclude_stem``: the first Conv2d in module order. ``exclude_linear``: every
    Linear (Li et al. 2017 prune conv filters only).
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    excluded = [m for m in layers if m in dg.module2node and not dg.module2node[m].outputs]
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    if exclude_stem and convs:
        excluded.append(convs[0])
    if exclude_linear:
        excluded += [m for m in layers if isinstance(m, nn.Linear)]
    return excluded


def find_groups(model: nn.Module, dg: tp.DependencyGraph, excluded: list[nn.Module]) -> list[PrunableGroup]:
    """Every group rooted at a Conv2d/Linear that contains no excluded layer, in graph order; members are
    named as ``model.named_modules()`` names them (the names Torch-Pruning records in its history)."""
    names = {module: name for name, module in model.named_modules()}
    groups = []
    for group in dg.get_all_groups(ignored_layers=excluded, root_module_types=[nn.Conv2d, nn.Linear]):
        root = group[0].dep.target.module
        members = tuple(names[item.dep.target.module] for item in group
                        if dg.is_out_channel_pruning_fn(item.dep.handler)
                        and isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear)))
        groups.append(PrunableGroup(root=names[root], members=members,
                                    channels=dg.get_out_channels(root), module=root, tp_group=group))
    return groups


def channels_to_remove(channels: int, ratio: float, *, min_keep: int = 1) -> int:
    """floor(channels * ratio), capped so >= min_keep (at least 1) channels stay (ratio 0.5 of 32 → 16;
    of 33 → 16).

    The 1e-9 keeps 100 * 0.57 = 56.99999… from flooring to 56.
    """
    return max(0, min(math.floor(channels * ratio + 1e-9), channels - max(1, int(min_keep))))


def cut_group(dg: tp.DependencyGraph, group: PrunableGroup, scores: torch.Tensor, ratio: float, *,
              min_keep: int = 1) -> list[int]:
    """Remove the ``channels_to_remove`` lowest-scoring channels of ``group`` (ties: lower index goes
    first, so results are deterministic). Side effect: the model shrinks; dg records the cut in its
    pruning history. Returns the removed indices (root numbering)."""
    n_remove = channels_to_remove(group.channels, ratio, min_keep=min_keep)
    if n_remove == 0:
        return []
    removed = sorted(torch.argsort(scores, stable=True)[:n_remove].tolist())
    prune_out = dg.get_pruner_of_module(group.module).prune_out_channels
    dg.get_pruning_group(group.module, prune_out, removed).prune()
    return removed


def json_history(dg: tp.DependencyGraph) -> list[list]:
    """Torch-Pruning's history as plain JSON: [[module name, is_out_channel_cut, [indices]], ...]."""
    return [[str(name), bool(is_out), [int(i) for i in idxs]] for name, is_out, idxs in dg.pruning_history()]


def build_groups(model: nn.Module, example_inputs: torch.Tensor, *, exclude_stem: bool,
                 exclude_linear: bool) -> tuple[tp.DependencyGraph, list[PrunableGroup]]:
    """Trace the dependency graph (one example) and list the prunable groups. Torch-Pruning's tracing
    switches the model to eval mode and does not switch back; the caller restores the mode."""
    with torch.enable_grad():  # the dependency graph is traced through autograd
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs[:1], verbose=False)
    return dg, find_groups(model, dg, excluded_modules(model, dg, exclude_stem=exclude_stem, exclude_linear=exclude_linear))


def layer_rows(before: dict[str, int], after: dict[str, int], groups: Sequence[PrunableGroup],
               ratios: dict[str, float]) -> list[dict]:
    """Per conv: name, channels before/after, its group root (None = not prunable) and the allocated ratio."""
    group_of = {member: g.root for g in groups for member in g.members}
    rows = layer_table(before, after)
    for row in rows:
        root = group_of.get(row["name"])
        row.update(group=root, ratio=float(ratios[root]) if root is not None else 0.0)
    return rows
