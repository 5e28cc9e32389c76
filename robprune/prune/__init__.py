"""Pruning in three parts (docs/style.md): importance (``importance.py``) scores channels, allocation
(``allocation.py``) sets per-group ratios, the cut (``structured.py``) removes channels with
Torch-Pruning. ``methods.py`` composes them into what ``conf/prune/*.yaml`` selects."""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from robprune.config import instantiate
from robprune.prune.methods import l1_filter, no_pruning

__all__ = ["prune_model", "l1_filter", "no_pruning"]


def prune_model(model: nn.Module, prune_cfg: DictConfig, *, example_inputs: torch.Tensor) -> dict:
    """Prune ``model`` IN PLACE with the method ``prune_cfg`` selects (a ``conf/prune`` node).

    example_inputs: (N, C, H, W) pixels in [0, 1] on the model's device (only the shape matters; the
    first example traces the dependency graph). ``model.training`` is left as it was.

    Returns a JSON-serialisable dict:
      method, structured (channels physically removed?), channel_ratio (the config value),
      ratio_semantics;
      sparsity: achieved parameter sparsity = 1 − W_after / W_before, where W counts the weight
        elements of ALL Conv2d and Linear modules (excluded stem and classifier included; biases and
        BN not) — methods.md §0;
      prunable_before/after: those W counts; params_before/after: all parameters (incl. BN, biases);
      layers: [{name, channels_before, channels_after}] per Conv2d;
      ratios: {group root: channel ratio}; groups: [{root, members, channels}] that were prunable;
      history: Torch-Pruning's pruning history, [[module name, is_out_channel_cut, [indices]], ...],
        replayable on the dense model with ``DependencyGraph.load_pruning_history``.
    """
    method = instantiate(prune_cfg, "prune")
    return method(model, example_inputs=example_inputs)
