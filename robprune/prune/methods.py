"""Pruning methods a ``conf/prune/<name>.yaml`` selects: ``_target_`` names one of these functions and
``_partial_: true`` binds its options, so each is called as ``fn(model, example_inputs=x)`` and returns
the info dict of :func:`robprune.prune.prune_model`. A method composes an importance, an allocator
and a cut; a new one (L2, Taylor, random, MRS-adaptive) is a few lines here plus a YAML file."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from robprune.config import require_range
from robprune.errors import ConfigError
from robprune.measure import count_params
from robprune.prune.allocation import uniform_ratios
from robprune.prune.importance import FilterNormImportance
from robprune.prune.stats import conv_channels, layer_table, prunable_weight_count
from robprune.prune.structured import structured_prune

# methods.md §0; 'params' (a global parameter fraction) arrives with MRS-adaptive allocation.
RATIO_SEMANTICS = ("channel",)


def check_channel_options(channel_ratio: float, ratio_semantics: str) -> None:
    """ConfigError unless channel_ratio is in [0, 1) and ratio_semantics is supported."""
    require_range(float(channel_ratio), "prune.channel_ratio", 0, 1)
    if ratio_semantics not in RATIO_SEMANTICS:
        raise ConfigError(f"prune.ratio_semantics={ratio_semantics!r} is not supported by this method; "
                          f"use one of {', '.join(RATIO_SEMANTICS)}, e.g. prune.ratio_semantics=channel")


def l1_filter(model: nn.Module, *, example_inputs: torch.Tensor, channel_ratio: float = 0.5,
              ratio_semantics: str = "channel", exclude_stem: bool = True, exclude_linear: bool = True,
              method: str = "l1_filter") -> dict:
    """L1-norm filter pruning (Li et al., ICLR 2017; Adver-Fine's compression, methods.md §1): in every
    prunable group remove floor(channel_ratio · C) output channels with the smallest filter L1 norm.
    Prunes ``model`` IN PLACE; see :func:`robprune.prune.prune_model` for the returned dict."""
    check_channel_options(channel_ratio, ratio_semantics)
    info = structured_prune(model, example_inputs=example_inputs, importance=FilterNormImportance(p=1),
                            allocate=partial(uniform_ratios, channel_ratio=channel_ratio),
                            exclude_stem=exclude_stem, exclude_linear=exclude_linear)
    return {"method": method, "channel_ratio": float(channel_ratio), "ratio_semantics": ratio_semantics, **info}


def no_pruning(model: nn.Module, *, example_inputs: torch.Tensor, method: str = "none") -> dict:
    """The dense baseline: leaves ``model`` untouched and records zero sparsity."""
    channels, weights, params = conv_channels(model), prunable_weight_count(model), count_params(model)
    return {"method": method, "structured": False, "channel_ratio": 0.0, "history": [], "ratios": {},
            "groups": [], "sparsity": 0.0, "prunable_before": weights, "prunable_after": weights,
            "params_before": params, "params_after": params, "layers": layer_table(channels, channels)}
