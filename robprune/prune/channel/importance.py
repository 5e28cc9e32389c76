"""Importance: a score per output channel of a coupled group (step 1 of "pruning in three parts").

Scorers are Torch-Pruning importance objects: called on a ``tp.Group`` holding the full index range of
its root, they return a 1-D tensor of one score per root output channel, low = removed first. A new
criterion is one class plus its registration in :data:`robprune.registry.CRITERIA` (config name -> factory
taking the :class:`~robprune.prune.context.PruneContext` and the model; docs/how-to/add-pruner.md).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from robprune.errors import ConfigError
from robprune.prune.context import PruneContext
from robprune.prune.stats import PRUNABLE_TYPES, differentiable
from robprune.registry import CRITERIA as IMPORTANCES

# Pruning functions that remove *output* filters; in-channel slices of the next layer and norm-layer
# parameters are consequences of the cut, not part of the filter criterion.
_OUT_FILTER_FNS = (function.prune_conv_out_channels, function.prune_linear_out_channels)


class FilterImportance(tp.importance.Importance):
    """Base class: a score per output filter of each Conv/Linear member of a group, averaged over
    the members. In a group coupled by a residual add (several convs whose outputs are summed, all
    losing the same channels) the score of channel j is the mean of the members' scores (Li et al.
    2017 §4.4 prune such shared channels by one ranking; MRPF, docs/methods/mrpf.md#step-5 "group norm for coupled
    groups"). Subclasses implement :meth:`filter_scores`.

    Returns: (C,) float32 scores on CPU, C = output channels of the group's root.
    """

    def filter_scores(self, module: nn.Module, idxs: list[int]) -> torch.Tensor:
        """(len(idxs),) scores of output filters ``idxs`` of ``module``."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor:
        total, count = None, 0
        for item in group:
            if item.dep.handler not in _OUT_FILTER_FNS:
                continue
            scores = self.filter_scores(item.dep.target.module, item.idxs).float().cpu()
            if total is None:
                total = torch.zeros(len(group[0].idxs))
            # root_idxs map this layer's channels onto the root's numbering (identity for an add)
            total.scatter_add_(0, torch.as_tensor(item.root_idxs), scores)
            count += 1
        if total is None:
            raise ValueError("group has no Conv/Linear output filters to score")
        return total / count


class FilterNormImportance(FilterImportance):
    """Filter-norm criterion of Li et al., "Pruning Filters for Efficient ConvNets" (ICLR 2017), §3.1:
    s_j = Σ |F_j|^p over the kernel weights of output filter j (p=1: the paper's L1 norm; p=2: the
    squared L2 norm, same ranking as the L2 norm within one layer). Only output filters count: the
    next layer's input slice and BN γ are left out, so for a single conv the ranking is the paper's."""

    def __init__(self, p: int = 1):
        self.p = p

    def filter_scores(self, module: nn.Module, idxs: list[int]) -> torch.Tensor:
        return module.weight.detach()[idxs].flatten(1).abs().pow(self.p).sum(1)


class TaylorImportance(FilterImportance):
    """First-order Taylor importance (Molchanov et al., CVPR 2019, Eq. 8 with the filter as the
    parameter group): I_j = (Σ_{w ∈ F_j} g_w · w)², the squared first-order estimate of the change of
    the loss when filter j is removed; g = ∂L_adv/∂w on the calibration adversarial set.

    grads: {module: gradient of its weight}, computed on the unpruned model (see
    :func:`weight_gradients`); scores are taken before any cut, so shapes match.
    """

    def __init__(self, grads: dict[nn.Module, torch.Tensor]):
        self.grads = grads

    def filter_scores(self, module: nn.Module, idxs: list[int]) -> torch.Tensor:
        w, g = module.weight.detach()[idxs], self.grads[module][idxs]
        return (w * g).flatten(1).sum(1).pow(2)  # Molchanov et al. 2019, Eq. 8


class RandomImportance(FilterImportance):
    """Uniform random scores from a seeded generator (the random-pruning baseline, docs/methods/baselines.md);
    groups draw in graph order, so a seed fixes which channels go."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(int(seed))

    def filter_scores(self, module: nn.Module, idxs: list[int]) -> torch.Tensor:
        return torch.rand(len(idxs), generator=self.generator)

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor:
        return torch.rand(len(group[0].idxs), generator=self.generator)  # one draw per root channel


def weight_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: torch.device,
                     batch_size: int = 256) -> dict[nn.Module, torch.Tensor]:
    """∂L/∂W for every Conv2d/Linear weight, L = mean cross-entropy over (x, y) (the adversarial
    loss L_adv when x is the calibration adversarial set). x: (M, C, H, W) in [0, 1]; y: (M,).

    Runs in eval mode on ``device`` with torch.autograd.grad (parameter ``.grad`` untouched); the
    model is moved back to its original device and training mode. Returns gradients on the CPU.
    """
    modules = [m for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
    origin, was_training = next(model.parameters()).device, model.training
    model.to(device).eval()
    total = [torch.zeros_like(m.weight) for m in modules]
    try:
        with torch.enable_grad(), differentiable(m.weight for m in modules):
            for start in range(0, len(y), batch_size):
                xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
                loss = F.cross_entropy(model(xb), yb, reduction="sum") / len(y)
                for acc, g in zip(total, torch.autograd.grad(loss, [m.weight for m in modules])):
                    acc += g
    finally:
        model.to(origin).train(was_training)
    return {m: g.cpu() for m, g in zip(modules, total)}


def _taylor(context: PruneContext, model: nn.Module) -> TaylorImportance:
    if context.calib_x is None:
        raise ConfigError("prune.criterion=taylor needs the calibration adversarial set: the prune config must "
                          "have a 'scores' node (use prune=taylor, which has one)")
    return TaylorImportance(weight_gradients(model, context.calib_x, context.calib_y, device=context.device))


# config name (prune.criterion) -> factory(context, model) -> importance
# prune.criterion name -> factory (context, model) -> importance, registered in robprune.registry.CRITERIA
# (needs_scores: the criterion reads the scores stage's calibration set; a new criterion in its own module
# registers the same way, docs/how-to/add-pruner.md)
IMPORTANCES.add("l1", lambda context, model: FilterNormImportance(p=1))
IMPORTANCES.add("l2", lambda context, model: FilterNormImportance(p=2))
IMPORTANCES.add("taylor", _taylor, needs_scores=True)
IMPORTANCES.add("random", lambda context, model: RandomImportance(context.seed))


def make_importance(criterion: str, context: PruneContext, model: nn.Module) -> tp.importance.Importance:
    """The importance object for ``prune.criterion``; ConfigError naming the registered ones otherwise."""
    return IMPORTANCES.get(criterion, key="prune.criterion")(context, model)
