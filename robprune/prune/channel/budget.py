"""Analytic parameter budget: the achieved global parameter sparsity of a structured cut, computed from
channel counts without cutting (so allocation can bisect on it cheaply).

Sparsity is the recorded one (docs/methods/conventions.md#sparsity, :mod:`robprune.prune.stats`): 1 − W_after / W_before
over the weight elements of every Conv2d and Linear. Removing k of a group's C channels removes, from
every Conv/Linear the group touches, k·n/C output (or input) rows, where n is the number of indices
the group maps onto that module (n = C for a plain conv; C·H·W for a Linear behind a flatten).
A module's weight after the cut is numel · (1 − out_removed/out) · (1 − in_removed/in).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import nn

from robprune.prune.channel.structured import PrunableGroup, channels_to_remove
from robprune.prune.stats import PRUNABLE_TYPES, prunable_weight_count


@dataclass(frozen=True)
class _Touch:
    """One group's effect on one module: ``per_channel`` rows of dimension out (or in) per root channel."""

    module: str
    is_out: bool
    per_channel: float


def _dims(module: nn.Module) -> tuple[int, int, int]:
    """(out, in, numel) of a Conv2d/Linear weight; grouped convs count their out dimension only
    (their in-channels move with the out-channels, so the in-factor would double count)."""
    if isinstance(module, nn.Conv2d):
        return module.out_channels, (module.in_channels if module.groups == 1 else 0), module.weight.numel()
    return module.out_features, module.in_features, module.weight.numel()


class ParamBudget:
    """Achieved parameter sparsity of cutting ``groups`` with given ratios (exact for the cut of
    :func:`robprune.prune.channel.structured.cut_group`; the tests compare it against real cuts).

    groups: the prunable groups (full-index Torch-Pruning groups); min_keep: channels every group keeps.
    """

    def __init__(self, model: nn.Module, groups: Sequence[PrunableGroup], *, min_keep: int = 1):
        names = {m: n for n, m in model.named_modules()}
        self.total = prunable_weight_count(model)
        self.min_keep = int(min_keep)
        self.dims = {names[m]: _dims(m) for m in model.modules() if isinstance(m, PRUNABLE_TYPES)}
        self.groups = {g.root: g.channels for g in groups}
        self.touches: dict[str, list[_Touch]] = {}
        for g in groups:
            seen, touches = set(), []
            for item in g.tp_group:
                module = item.dep.target.module
                if not isinstance(module, PRUNABLE_TYPES):
                    continue
                is_out = bool(item.dep.handler.__name__ == "prune_out_channels")
                if (names[module], is_out) in seen:
                    continue
                seen.add((names[module], is_out))
                touches.append(_Touch(names[module], is_out, len(item.idxs) / g.channels))
            self.touches[g.root] = touches

    def removed_channels(self, ratios: dict[str, float]) -> dict[str, int]:
        """{group root: channels removed} for ``ratios`` (floor, ≥ min_keep channels stay)."""
        return {root: channels_to_remove(c, ratios.get(root, 0.0), min_keep=self.min_keep) for root, c in self.groups.items()}

    def sparsity(self, ratios: dict[str, float]) -> float:
        """Achieved global parameter sparsity in [0, 1] for {group root: channel ratio}."""
        out_rm = dict.fromkeys(self.dims, 0.0)
        in_rm = dict.fromkeys(self.dims, 0.0)
        for root, k in self.removed_channels(ratios).items():
            for t in self.touches[root]:
                (out_rm if t.is_out else in_rm)[t.module] += k * t.per_channel
        after = 0.0
        for name, (out, inp, numel) in self.dims.items():
            keep_in = 1.0 - in_rm[name] / inp if inp else 1.0
            after += numel * (1.0 - out_rm[name] / out) * keep_in
        return 1.0 - after / self.total if self.total else 0.0
