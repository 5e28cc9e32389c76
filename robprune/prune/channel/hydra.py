"""HYDRA (Sehwag et al., NeurIPS 2020, arXiv 2002.10509; docs/methods/hydra.md): pruning as score
optimisation under the robust training objective.

The weights of the dense robust model stay frozen; every prunable unit gets a real-valued score s, and
the forward uses θ ⊙ m(s), where m keeps the k units with the largest |s| in each layer (k = (1 − r)·n,
HYDRA's pruning step) and passes the gradient w.r.t. m to s unchanged (straight-through, as in the
authors' ``GetSubnet``, models/layers.py, taken from Ramanujan et al. 2020's edge-popup). The scores
start at s_i = θ_i / max|θ| · sqrt(6 / fan_in) (HYDRA's scaled initialisation, the authors'
``initialize_scaled_score``: proportional to the weight magnitude at Kaiming-uniform scale) and are trained for ``score_epochs`` with the run's robust
objective through the one training loop (``context.train``), with their own optimizer. Then the mask is
fixed: ``granularity: weight`` zeroes the weights (the zeros are the mask through fine-tuning,
:mod:`robprune.prune.masks`), ``granularity: channel`` (one score per output channel of a prunable
group) removes the channels physically with Torch-Pruning. Fine-tuning is the finetune stage.

The masks are ``torch.nn.utils.parametrize`` parametrizations of the frozen parameters, so the loop,
the objectives and the attacks see an ordinary model whose only trainable tensors are the scores.
"""
from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import nn
from torch.nn.utils import parametrize

from robprune.errors import ConfigError
from robprune.options import BOOL, FRACTION, STR, TRAINING, Choice, Float, Int
from robprune.prune.channel.allocation import AllocationInput, uniform_sparsity
from robprune.prune.channel.budget import ParamBudget
from robprune.prune.channel.methods import achieved_channel_ratio
from robprune.prune.channel.structured import build_groups, json_history, layer_rows
from robprune.prune.channel.unstructured import candidate_layers
from robprune.prune.context import PruneContext
from robprune.prune.stats import conv_channels, count_params, layer_table, parameter_sparsity, prunable_weight_count
from robprune.registry import PRUNERS
from robprune.train.sharpness import neuron_map

GRANULARITIES = ("weight", "channel")


class TopK(torch.autograd.Function):
    """m(s): 1 for the ``k`` largest entries of ``scores`` (ties by position, first wins), else 0; the
    backward passes the incoming gradient to ``scores`` unchanged (straight-through, HYDRA's pruning step)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int) -> torch.Tensor:
        mask = torch.zeros(scores.numel(), dtype=scores.dtype, device=scores.device)
        mask[torch.argsort(scores.detach().flatten(), descending=True, stable=True)[:k]] = 1
        return mask.view_as(scores)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The mask of the k largest |s| (the authors' code ranks |s|, so the gradient reaching s is sign(s)·g)."""
    return TopK.apply(scores.abs(), k)


def scaled_scores(weight: torch.Tensor) -> torch.Tensor:
    """HYDRA's scaled initialisation (docs/methods/hydra.md#scores): s = θ / max|θ| · sqrt(6 / fan_in), fan_in = weight[0].numel()."""
    top = weight.detach().abs().max()
    return weight.detach() / (top if top > 0 else 1) * math.sqrt(6.0 / max(1, weight[0].numel()))


class WeightScores(nn.Module):
    """Parametrization θ -> θ ⊙ m(s) of one Conv2d/Linear weight, s of θ's shape, k weights kept."""

    def __init__(self, weight: torch.Tensor, keep: int):
        super().__init__()
        self.scores, self.keep = nn.Parameter(scaled_scores(weight)), int(keep)

    def mask(self) -> torch.Tensor:
        return top_k_mask(self.scores, self.keep)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask()


class ChannelScores(nn.Module):
    """Parametrization of one parameter whose rows are output channels of a group: row j is multiplied by
    m(s)[rows[j]] (rows[j] = −1: not in the group, kept). ``scores`` is the group's (C,) score vector,
    shared by every member conv/linear, bias and norm γ/β of the group (so a cut channel is exactly zero)."""

    def __init__(self, scores: nn.Parameter, keep: int, rows: torch.Tensor):
        super().__init__()
        self.scores, self.keep = scores, int(keep)
        self.register_buffer("rows", rows.clamp(min=0), persistent=False)
        self.register_buffer("inside", (rows >= 0).float(), persistent=False)

    def forward(self, param: torch.Tensor) -> torch.Tensor:
        row_mask = top_k_mask(self.scores, self.keep)[self.rows] * self.inside + (1 - self.inside)
        return param * row_mask.reshape((-1,) + (1,) * (param.dim() - 1))


def weight_keeps(layers: dict[str, nn.Module], sparsity: float, total: int) -> dict[str, int]:
    """k per layer: the layer-wise ratio r = sparsity · total / available (excluded layers keep all, so the
    others lose more, as in global_magnitude) and k = n − round(r·n); ConfigError when a layer would keep
    none (the target is not reachable layer-wise)."""
    available = sum(m.weight.numel() for m in layers.values())
    ratio = float(sparsity) * total / available if available else 1.0
    keeps = {name: m.weight.numel() - round(ratio * m.weight.numel()) for name, m in layers.items()}
    if ratio >= 1 or any(k < 1 for k in keeps.values()):
        raise ConfigError(f"prune.sparsity={sparsity:g} is not reachable with HYDRA's layer-wise top-k: at most "
                          f"{weight_limit(layers, total):.4f} of the Conv2d/Linear weights can go with every pruned layer "
                          f"keeping one; lower prune.sparsity or set prune.exclude_stem=false, prune.exclude_linear=false")
    return keeps


def weight_limit(layers: dict[str, nn.Module], total: int) -> float:
    """The largest sparsity the weight variant reaches: every candidate layer keeps one weight (about)."""
    return sum(m.weight.numel() - 1 for m in layers.values()) / total if total else 0.0


def _freeze(model: nn.Module) -> dict[nn.Parameter, bool]:
    """Switch off every parameter's gradient; returns the previous flags (restored by :func:`_thaw`)."""
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in flags:
        p.requires_grad_(False)
    return flags


def _thaw(flags: dict[nn.Parameter, bool]) -> None:
    for p, flag in flags.items():
        p.requires_grad_(flag)


def _unparametrize(model: nn.Module) -> None:
    """Drop every parametrization, leaving the original (frozen) tensors in place."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=False)


def optimise_weight_scores(model: nn.Module, layers: dict[str, nn.Module], keeps: dict[str, int], train) -> tuple:
    """Score optimisation, unstructured: returns ({layer name: bool mask, True = kept}, training log).
    The weights are untouched (their gradients are off); BN running statistics follow the training mode."""
    flags = _freeze(model)
    try:
        scorers = {}
        for name, m in layers.items():
            scorers[name] = WeightScores(m.weight, keeps[name])
            parametrize.register_parametrization(m, "weight", scorers[name])
        history = train(model)
        with torch.no_grad():
            masks = {name: s.mask().bool().cpu() for name, s in scorers.items()}
    finally:
        _unparametrize(model)
        _thaw(flags)
    return masks, history


def optimise_channel_scores(model: nn.Module, groups, keeps: dict[str, int], train) -> tuple:
    """Score optimisation, one score per output channel of each prunable group: returns ({group root: bool
    (C,) kept channels}, training log)."""
    neurons = neuron_map(model, groups)
    flags = _freeze(model)
    owners = {p: (m, n) for m in model.modules() for n, p in m.named_parameters(recurse=False)}
    try:
        offsets, off, scores = {}, 0, {}
        for g in groups:
            offsets[g.root], off = off, off + g.channels
            weight = g.module.weight.detach()
            scores[g.root] = nn.Parameter(scaled_scores(weight).flatten(1).norm(p=1, dim=1))
        for param, ids in neurons.rows.items():
            root = next(g.root for g in groups if ((ids >= offsets[g.root]) & (ids < offsets[g.root] + g.channels)).any())
            local = torch.where(ids >= 0, ids - offsets[root], torch.full_like(ids, -1))
            module, name = owners[param]
            parametrize.register_parametrization(module, name, ChannelScores(scores[root], keeps[root], local.to(param.device)))
        history = train(model)
        with torch.no_grad():
            kept = {root: top_k_mask(s, keeps[root]).bool().cpu() for root, s in scores.items()}
    finally:
        _unparametrize(model)
        _thaw(flags)
    return kept, history


def full_eps(node):
    """The score node with its objective's ε ramp off: the scores start from a robust model, so they train at
    the full ε from the first step (HYDRA has no ramp; docs/methods/hydra.md#resolutions). The ramp of
    train.objective, which the node interpolates, is for training from scratch."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    objective = plain.get("objective")
    if isinstance(objective, dict) and objective.get("eps_ramp_epochs"):
        plain["objective"] = {**objective, "eps_ramp_epochs": 0}
    return OmegaConf.create(plain)


def check_hydra(granularity: str, score_epochs: int, score_lr: float) -> None:
    """The options the model does not matter for (ConfigError naming the key); the schema checks them too."""
    if granularity not in GRANULARITIES:
        raise ConfigError(f"prune.granularity must be weight or channel, got {granularity!r}")
    if isinstance(score_epochs, bool) or int(score_epochs) < 1:
        raise ConfigError(f"prune.score_epochs must be >= 1 (epochs of score optimisation), got {score_epochs}")
    if not float(score_lr) > 0:
        raise ConfigError(f"prune.score_lr must be > 0 (the scores' learning rate), got {score_lr}")


@PRUNERS.register("hydra", modality="image", family="channel")
def hydra(model: nn.Module, context: PruneContext, *,
          method: Annotated[str, STR, "name recorded in results"] = "hydra",
          sparsity: Annotated[float, FRACTION, "fraction of ALL Conv2d/Linear weights removed (the one definition "
                              "of every method)"] = 0.9,
          granularity: Annotated[str, Choice(*GRANULARITIES), "weight = one score per weight, masks (unstructured) | "
                                 "channel = one score per output channel of a prunable group, cut physically"] = "weight",
          score_epochs: Annotated[int, Int(1, example="20"), "epochs of score optimisation (weights frozen)"] = 20,
          score_lr: Annotated[float, Float(0, low_open=True, example="0.1"), "the scores' learning rate (SGD, cosine; "
                              "HYDRA: 0.1)"] = 0.1,
          exclude_stem: Annotated[bool, BOOL, "never prune the first conv"] = False,
          exclude_linear: Annotated[bool, BOOL, "never prune Linear layers (channel: Linear outputs)"] = False,
          r_max: Annotated[float, Float(0, high=1, high_open=True, example="0.95"), "channel: largest channel ratio a "
                           "group may get"] = 0.95,
          min_channels: Annotated[int, Int(1), "channel: output channels every group keeps"] = 1,
          during_training: Annotated[dict | None, TRAINING, "the score optimisation: a train node (objective, "
                                     "optimizer over the scores, schedule, epochs)"] = None) -> dict:
    """HYDRA, IN PLACE: optimise per-layer top-k scores with the weights frozen (``during_training`` through
    ``context.train``), then fix the mask: zeros (weight) or a physical cut (channel). Returns the info dict
    of :func:`robprune.prune.prune_model` plus ``train_log``."""
    if context.train is None:
        raise ConfigError("prune=hydra optimises scores by training: run it through `robprune run` (the prune_train stage)")
    check_hydra(granularity, score_epochs, score_lr)
    if during_training is None:
        raise ConfigError("prune.during_training must be set for prune=hydra (the score optimisation's train node)")
    node = full_eps(during_training)
    train = lambda m: context.train(m, node, [])  # noqa: E731
    total, params = prunable_weight_count(model), count_params(model)
    before = conv_channels(model)
    common = {"method": method, "granularity": granularity, "ratio_semantics": "params", "sparsity_target": float(sparsity),
              "score_epochs": int(score_epochs), "score_lr": float(score_lr), "prunable_before": total,
              "params_before": params}
    if granularity == "weight":
        return {**common, **_weight_variant(model, float(sparsity), total, exclude_stem, exclude_linear, train)}
    return {**common, **_channel_variant(model, context, float(sparsity), total, before, r_max, min_channels, exclude_stem,
                                         exclude_linear, train)}


def _weight_variant(model, sparsity, total, exclude_stem, exclude_linear, train) -> dict:
    layers = candidate_layers(model, exclude_stem=exclude_stem, exclude_linear=exclude_linear)
    keeps = weight_keeps(layers, sparsity, total)
    masks, history = optimise_weight_scores(model, layers, keeps, train)
    with torch.no_grad():
        for name, m in layers.items():
            m.weight.mul_(masks[name].to(m.weight.device, m.weight.dtype))
    removed = sum(int((~mask).sum()) for mask in masks.values())
    channels = conv_channels(model)
    per_layer = {n: 1.0 - float(masks[n].float().mean()) for n in masks}
    return {"structured": False, "masked": True, "channel_ratio": None, "history": [], "ratios": {}, "groups": [],
            "sparsity": removed / total if total else 0.0, "prunable_after": total - removed,
            "params_after": count_params(model), "weight_sparsity": per_layer, "train_log": history,
            "layers": [{**row, "weight_sparsity": per_layer.get(row["name"], 0.0)} for row in layer_table(channels, channels)]}


def _channel_variant(model, context, sparsity, total, before, r_max, min_channels, exclude_stem, exclude_linear, train) -> dict:
    was_training = model.training
    dg, groups = build_groups(model, context.example_inputs, exclude_stem=exclude_stem, exclude_linear=exclude_linear)
    model.train(was_training)
    budget = ParamBudget(model, groups, min_keep=int(min_channels))
    ratios = uniform_sparsity(AllocationInput(groups, {}, budget), sparsity=sparsity, r_max=float(r_max))
    removed = budget.removed_channels(ratios)
    kept, history = optimise_channel_scores(model, groups, {g.root: g.channels - removed[g.root] for g in groups}, train)
    model.eval()
    with torch.no_grad():  # the cut: the channels whose score lost (their outputs were zero during optimisation)
        for g in groups:
            drop = torch.nonzero(~kept[g.root]).flatten().tolist()
            if drop:
                dg.get_pruning_group(g.module, dg.get_pruner_of_module(g.module).prune_out_channels, drop).prune()
    model.train(was_training)
    after = prunable_weight_count(model)
    layers = layer_rows(before, conv_channels(model), groups, ratios)
    return {"structured": True, "masked": False, "history": json_history(dg), "ratios": ratios, "channel_ratio": None,
            "groups": [{"root": g.root, "members": list(g.members), "channels": g.channels} for g in groups],
            "sparsity": parameter_sparsity(total, after),
            "prunable_after": after, "params_after": count_params(model), "layers": layers,
            "channel_ratio_achieved": achieved_channel_ratio(layers), "train_log": history}


def check_single_process(cfg) -> None:
    """prune=hydra with trainer.devices > 1 is a ConfigError: the masks are parametrizations, which
    cannot be pickled to the ranks (torch refuses to serialise parametrized modules)."""
    from robprune.registry import target_entry

    entry = target_entry(PRUNERS, cfg.prune.get("_target_"))
    devices = (cfg.get("trainer") or {}).get("devices", 1)
    if entry is not None and entry.obj is hydra and int(devices or 1) > 1:
        raise ConfigError(f"prune=hydra trains its scores in one process; trainer.devices={devices} is not supported "
                          "(its masks cannot be sent to other processes); use trainer.devices=1")
