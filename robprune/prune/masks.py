"""Weight masks as a training hook: keeps unstructured pruning's zeros zero through fine-tuning.

Design (no checkpoint format change): the mask is not stored; the zeros are. A masked-pruned
checkpoint holds exact zeros where weights were removed, and :func:`finetune_hooks` re-derives the
mask from them when fine-tuning starts (model.json's ``prune.masked`` says to). The hook multiplies the
weights by the mask after every optimizer step, so momentum, Adam moments or weight decay cannot
revive a removed weight; the fine-tuned checkpoint again holds the zeros, and so on.

It lives with pruning (both families leave masked zeros) rather than in :mod:`robprune.train`: the
training library knows no pruning, and the stages hand this hook to :func:`robprune.train.fit`.
"""
from __future__ import annotations

import torch
from torch import nn

from robprune.prune.stats import PRUNABLE_TYPES


class WeightMask:
    """Hook for :func:`robprune.train.fit`: ``after_step(model)`` zeroes masked Conv2d/Linear weights.

    masks: {module name: bool tensor of the weight's shape, True = kept}.
    """

    def __init__(self, masks: dict[str, torch.Tensor]):
        self.masks = masks
        self._bound: tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None = None  # (id(model), [(weight, mask)])

    @classmethod
    def from_zeros(cls, model: nn.Module) -> "WeightMask":
        """Mask = (weight != 0) for every Conv2d/Linear weight that has any exact zero."""
        masks = {name: m.weight.detach() != 0 for name, m in model.named_modules()
                 if isinstance(m, PRUNABLE_TYPES) and bool((m.weight == 0).any())}
        return cls(masks)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        for weight, mask in self._pairs(model):
            weight.mul_(mask)

    def _pairs(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight, mask as the weight's dtype on its device), looked up once per model: after_step runs
        every optimizer step, so the module lookup and the bool -> float copy are not repeated there."""
        if self._bound is None or self._bound[0] != id(model) or any(
                m.device != w.device for w, m in self._bound[1][:1]):
            modules = dict(model.named_modules())
            pairs = [(modules[name].weight, mask.to(modules[name].weight.device, modules[name].weight.dtype))
                     for name, mask in self.masks.items()]
            self._bound = (id(model), pairs)
        return self._bound[1]

    def bind(self, optimizer, model: nn.Module) -> None:
        """Hand the masks to a two-pass optimizer (SAM-style), which must neither perturb nor revive them."""
        if hasattr(optimizer, "masks"):
            optimizer.masks.update({w: m.bool() for w, m in self._pairs(model)})

    def sparsity(self) -> float:
        """Fraction of masked-out elements over the masked layers (0 when there are none)."""
        total = sum(m.numel() for m in self.masks.values())
        return sum(int((~m).sum()) for m in self.masks.values()) / total if total else 0.0


def finetune_hooks(model: nn.Module, meta: dict) -> list:
    """Hooks the fine-tuning of a loaded checkpoint needs: a :class:`WeightMask` re-derived from the
    zeros when its pruning was a mask (model.json ``prune.masked``), else none."""
    return [WeightMask.from_zeros(model)] if (meta.get("prune") or {}).get("masked") else []
