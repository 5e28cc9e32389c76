"""Importance: a score per output channel of a coupled group (step 1 of "pruning in three parts").

Scorers are Torch-Pruning importance objects: called on a ``tp.Group`` holding the full index range of
its root, they return a 1-D tensor of one score per root output channel, low = removed first. A new
criterion is one class here (or a Torch-Pruning one, e.g. ``tp.importance.RandomImportance()``).
"""
from __future__ import annotations

import torch
import torch_pruning as tp
from torch_pruning.pruner import function

# Pruning functions that remove *output* filters; in-channel slices of the next layer and norm-layer
# parameters are consequences of the cut, not part of the filter criterion.
_OUT_FILTER_FNS = (function.prune_conv_out_channels, function.prune_linear_out_channels)


class FilterNormImportance(tp.importance.Importance):
    """Filter-norm criterion of Li et al., "Pruning Filters for Efficient ConvNets" (ICLR 2017), §3.1:
    s_j = Σ |F_j|^p over the kernel weights of output filter j (p=1: the paper's L1 norm; p=2: the
    squared L2 norm, same ranking as the L2 norm within one layer).

    Only output filters of Conv/Linear layers count: the next layer's input slice and BN γ are left
    out, so for a single conv the ranking is exactly the paper's. In a group coupled by a residual add
    (several convs whose outputs are summed, all losing the same channels) the score of channel j is
    the mean of s_j over those convs (Li et al. §4.4 prune such shared channels by one ranking;
    MRPF §3 step 5 "group norm for coupled groups").

    Returns: (C,) float32 scores on CPU, C = output channels of the group's root.
    """

    def __init__(self, p: int = 1):
        self.p = p

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor:
        total, count = None, 0
        for item in group:
            if item.dep.handler not in _OUT_FILTER_FNS:
                continue
            weight = item.dep.target.module.weight.detach()
            scores = weight[item.idxs].flatten(1).abs().pow(self.p).sum(1).float().cpu()
            if total is None:
                total = torch.zeros(len(group[0].idxs))
            # root_idxs map this layer's channels onto the root's numbering (identity for an add)
            total.scatter_add_(0, torch.as_tensor(item.root_idxs), scores)
            count += 1
        if total is None:
            raise ValueError("group has no Conv/Linear output filters to score")
        return total / count
