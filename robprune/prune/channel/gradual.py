"""Pruning during training (AdaSAP, docs/methods/adasap.md#step-1 (steps 1-2)): train with the adaptive sharpness-aware
perturbation and remove channels gradually, as masks, every ``prune_interval`` iterations over
``prune_steps`` steps; at the end the masked channels are removed physically with Torch-Pruning.

Amount and accounting are those of ``l1_filter``: ``sparsity`` is the global fraction of Conv2d/Linear
weights removed, reached by one shared channel ratio found by bisection on the exact count
(:func:`robprune.prune.channel.allocation.uniform_sparsity`); step k of K masks round(n_l·k/K) of the n_l
channels group l loses in the end. Inside a group the channels with the lowest importance go, ranked
afresh at every step on the current weights: ``criterion: l2`` (filter L2 norm, Li et al. 2017 with
p = 2) or ``taylor`` (first-order Taylor on the last training gradient, Molchanov et al. 2019, Eq. 8).

A masked channel has its filter rows, bias and norm-layer γ/β at zero, so it outputs exactly zero and
its physical removal does not change the network's function; the masks are re-applied after every
optimizer step (momentum or the SAM perturbation cannot revive them).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import torch
from torch import nn

from robprune.errors import ConfigError
from robprune.prune.channel.allocation import AllocationInput, uniform_sparsity
from robprune.prune.channel.budget import ParamBudget
from robprune.prune.channel.importance import FilterNormImportance, TaylorImportance
from robprune.prune.channel.methods import ChannelPruning, achieved_channel_ratio
from robprune.prune.channel.structured import build_groups, json_history, layer_rows
from robprune.prune.context import PruneContext
from robprune.prune.stats import (
    conv_channels,
    count_params,
    parameter_sparsity,
    prunable_weight_count,
)
from robprune.train.sharpness import NeuronMap, neuron_map
from robprune.options import BOOL, FRACTION, STR, TRAINING, Choice, Float, Int
from robprune.registry import PRUNERS

GRADUAL_CRITERIA = ("l2", "taylor")


class GradualChannelMasks:
    """Training hook: every ``interval`` optimizer steps, one more of ``steps`` pruning steps masks the
    lowest-importance live channels of each group until group l has lost ``targets[root]`` channels.

    groups: :class:`~robprune.prune.channel.structured.PrunableGroup` list of the (unpruned) model.
    """

    def __init__(self, model: nn.Module, groups, targets: dict[str, int], *, criterion: str, interval: int, steps: int,
                 regroup: dict | None = None):
        self.groups, self.targets, self.criterion = groups, targets, criterion
        self.regroup = regroup  # build_groups' arguments: a data-parallel rank re-traces its replica (attach)
        self.interval, self.steps = int(interval), int(steps)
        self.iteration, self.done = 0, 0
        self.neurons: NeuronMap = neuron_map(model, groups)
        self.kept = {g.root: torch.ones(g.channels, dtype=torch.bool) for g in groups}  # channel masks
        self.masks: dict[nn.Parameter, torch.Tensor] = {}  # {parameter: bool, its shape}, shared with the optimizer
        self._offsets, off = {}, 0
        for g in groups:
            self._offsets[g.root] = off
            off += g.channels
        self.optimizer = None

    def __getstate__(self) -> dict:
        """For a data-parallel rank (robprune.train.trainer): Torch-Pruning's groups hold autograd nodes and
        cannot be pickled; the rank re-traces its replica in :meth:`attach`."""
        if self.regroup is None:
            raise TypeError("GradualChannelMasks without regroup arguments cannot be sent to another process")
        state = dict(self.__dict__)
        for name in ("groups", "neurons", "masks", "optimizer"):
            state[name] = None
        return state

    def attach(self, model: nn.Module) -> None:
        """Rebuild groups, neuron map and masks on ``model`` (a rank's replica) after unpickling."""
        if self.groups is not None:
            return
        _, self.groups = build_groups(model, self.regroup["example_inputs"].to(next(model.parameters()).device),
                                      exclude_stem=self.regroup["exclude_stem"], exclude_linear=self.regroup["exclude_linear"])
        self.neurons, self.masks = neuron_map(model, self.groups), {}
        if self.done:
            self._rebuild_masks()

    def bind(self, optimizer, model: nn.Module) -> None:
        """Called by the training stage once the optimizer exists: a sharpness-aware one gets the neuron
        map (AdaSAP radii) and the masks (no perturbation of pruned channels)."""
        self.optimizer = optimizer
        if hasattr(optimizer, "set_neurons"):
            optimizer.set_neurons(self.neurons)
        if hasattr(optimizer, "masks"):
            optimizer.masks = self.masks

    def _importance(self, group) -> torch.Tensor:
        if self.criterion == "taylor":
            grads = {item.dep.target.module: item.dep.target.module.weight.grad for item in group.tp_group
                     if isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear))
                     and item.dep.target.module.weight.grad is not None}
            if grads:
                return TaylorImportance(grads)(group.tp_group)
        return FilterNormImportance(p=2)(group.tp_group)

    @torch.no_grad()
    def prune_step(self) -> None:
        """Mask round(target·k/K) channels per group (k = steps done so far + 1)."""
        self.done += 1
        for g in self.groups:
            want = round(self.targets[g.root] * self.done / self.steps)
            kept = self.kept[g.root]
            have = int((~kept).sum())
            if want <= have:
                continue
            scores = self._importance(g).clone()
            scores[~kept] = float("inf")  # already masked: stay masked, never re-ranked
            drop = torch.argsort(scores, stable=True)[: want - have]
            kept[drop] = False
        self._rebuild_masks()

    def _rebuild_masks(self) -> None:
        alive = torch.cat([self.kept[g.root] for g in self.groups]) if self.groups else torch.ones(0, dtype=torch.bool)
        for p, ids in self.neurons.rows.items():
            rows = torch.ones(len(ids), dtype=torch.bool)
            sel = ids >= 0
            rows[sel] = alive[ids[sel]]
            mask = rows.reshape((-1,) + (1,) * (p.dim() - 1)).expand_as(p).to(p.device)
            if p in self.masks:
                self.masks[p].copy_(mask)
            else:
                self.masks[p] = mask.clone()
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for p, mask in self.masks.items():
            p.mul_(mask)

    def after_step(self, model: nn.Module) -> None:
        self.iteration += 1
        if self.done < self.steps and self.iteration % self.interval == 0:
            self.prune_step()
        elif self.masks:
            self.apply()

    def state(self) -> dict:
        """What data-parallel training hands back from rank 0 (robprune.train.trainer): masks and counters."""
        return {"kept": {k: v.clone() for k, v in self.kept.items()}, "iteration": self.iteration, "done": self.done}

    def load_state(self, state: dict) -> None:
        self.kept = {k: v.clone() for k, v in state["kept"].items()}
        self.iteration, self.done = int(state["iteration"]), int(state["done"])
        self._rebuild_masks()

    def removed(self) -> dict[str, list[int]]:
        return {root: torch.nonzero(~kept).flatten().tolist() for root, kept in self.kept.items()}


@PRUNERS.register("adasap", modality="image", family="channel")
def adasap(model: nn.Module, context: PruneContext, *,
           method: Annotated[str, STR, "name recorded in results"] = "adasap",
           criterion: Annotated[str, Choice(*GRADUAL_CRITERIA), "importance inside a group, ranked afresh at every "
                                "pruning step: l2 (filter L2 norm) | taylor (first-order, last gradient)"] = "l2",
           sparsity: Annotated[float | None, FRACTION, "global fraction of Conv2d/Linear weights removed (params "
                               "semantics, one shared channel ratio)"] = 0.5,
           r_max: Annotated[float, Float(0, high=1, high_open=True, example="0.95"), "largest channel ratio a group "
                            "may get when allocating to the sparsity"] = 0.95,
           min_channels: Annotated[int, Int(1), "output channels every group keeps"] = 1,
           exclude_stem: Annotated[bool, BOOL, "never prune the first conv"] = True,
           exclude_linear: Annotated[bool, BOOL, "never prune Linear outputs"] = True,
           during_training: Annotated[dict | None, TRAINING, "the training the pruning happens in: a train node plus "
                                      "prune_interval and prune_steps"] = None) -> dict:
    """AdaSAP's warm-up with gradual pruning (Bair et al., ICLR 2024, §3.1-3.2), IN PLACE: trains the model
    with ``during_training`` (a train node whose ``sharpness`` is normally ``adasap``; ``none`` gives plain
    gradual pruning) through ``context.train`` while masking channels, then removes them physically.
    Returns the info dict of :func:`robprune.prune.prune_model`, plus ``train_log`` and ``schedule``."""
    if context.train is None:
        raise ConfigError("prune.method=adasap prunes during training: run it through `robprune run` (the prune_train stage)")
    if criterion not in GRADUAL_CRITERIA:
        raise ConfigError(f"prune.criterion must be one of {', '.join(GRADUAL_CRITERIA)} for pruning during training, got {criterion!r}")
    if sparsity is None:
        raise ConfigError("prune.sparsity must be set for prune=adasap (a global parameter fraction, e.g. 0.5)")
    node = during_training
    was_training = model.training
    before, weights_before, params_before = conv_channels(model), prunable_weight_count(model), count_params(model)
    dg, groups = build_groups(model, context.example_inputs, exclude_stem=exclude_stem, exclude_linear=exclude_linear)
    model.train(was_training)
    budget = ParamBudget(model, groups, min_keep=min_channels)
    ratios = uniform_sparsity(AllocationInput(groups, {}, budget), sparsity=float(sparsity), r_max=float(r_max))
    targets = budget.removed_channels(ratios)
    hook = GradualChannelMasks(model, groups, targets, criterion=criterion, interval=int(node["prune_interval"]),
                               steps=int(node["prune_steps"]),
                               regroup={"example_inputs": context.example_inputs.detach().cpu(),
                                        "exclude_stem": exclude_stem, "exclude_linear": exclude_linear})
    history = context.train(model, node, [hook])
    if hook.done < hook.steps:
        raise ConfigError(f"prune.during_training: only {hook.done} of prune_steps={hook.steps} pruning steps ran in "
                          f"{hook.iteration} iterations; raise prune.during_training.epochs or lower prune_interval")
    removed = hook.removed()
    model.eval()
    with torch.no_grad():  # the cut: masked channels go physically (their outputs are already zero)
        for g in groups:
            if removed[g.root]:
                prune_out = dg.get_pruner_of_module(g.module).prune_out_channels
                dg.get_pruning_group(g.module, prune_out, removed[g.root]).prune()
    model.train(was_training)
    weights_after = prunable_weight_count(model)
    layers = layer_rows(before, conv_channels(model), groups, ratios)
    opts = ChannelPruning(method=method, criterion=criterion, allocation="uniform", sparsity=sparsity, r_max=r_max,
                          min_channels=min_channels, exclude_stem=exclude_stem, exclude_linear=exclude_linear)
    return {"structured": True, "masked": False, "history": json_history(dg), "ratios": ratios,
            "groups": [{"root": g.root, "members": list(g.members), "channels": g.channels} for g in groups],
            "sparsity": parameter_sparsity(weights_before, weights_after), "prunable_before": weights_before,
            "prunable_after": weights_after, "params_before": params_before, "params_after": count_params(model),
            "layers": layers, "method": method, "ratio_semantics": "params", "criterion": criterion,
            "allocation": "uniform", "sparsity_target": float(sparsity), "channel_ratio": None,
            "channel_ratio_achieved": achieved_channel_ratio(layers), "options": asdict(opts),
            "schedule": {"prune_interval": hook.interval, "prune_steps": hook.steps, "iterations": hook.iteration,
                         "removed": {k: len(v) for k, v in removed.items()}},
            "train_log": history}


def iterations_needed(node) -> int:
    """Optimizer steps the schedule needs: prune_interval · prune_steps."""
    return int(node["prune_interval"]) * int(node["prune_steps"])


def check_schedule(prune_cfg, n_train: int, batch_size: int) -> None:
    """A schedule that cannot reach the target within the epochs is a ConfigError before any work."""
    node = prune_cfg.get("during_training")
    if node is None or "prune_steps" not in node:  # no pruning schedule inside (prune=hydra trains scores only)
        return
    for key in ("prune_interval", "prune_steps", "epochs"):
        if int(node.get(key) or 0) < 1:
            raise ConfigError(f"prune.during_training.{key} must be >= 1, got {node.get(key)}")
    per_epoch = -(-int(n_train) // int(batch_size))
    have, need = per_epoch * int(node.epochs), iterations_needed(node)
    if need > have:
        raise ConfigError(f"prune.during_training: prune_interval={node.prune_interval} x prune_steps={node.prune_steps} = "
                          f"{need} iterations, but epochs={node.epochs} x {per_epoch} batches = {have}; raise "
                          f"prune.during_training.epochs or lower prune_interval (e.g. prune_interval={max(1, have // int(node.prune_steps))})")
