"""Pruning, two families that share only :mod:`.context` (what a method may use), :mod:`.stats` (what it
did, in numbers) and :mod:`.masks` (zeros kept through fine-tuning); an import contract keeps them
independent (pyproject.toml, ``lint-imports``).

- :mod:`robprune.prune.channel`: channel pruning of image CNNs in three parts (docs/style.md):
  importance (``importance.py``) scores channels, allocation (``allocation.py`` on ``budget.py``) sets
  per-group ratios, the cut (``structured.py``, a leaf) removes channels with Torch-Pruning; the policy
  (``policy.py``) composes them, ``methods.py`` into what ``conf/prune/*.yaml`` selects. Also gradual
  AdaSAP (``gradual.py``), HYDRA's score optimisation (``hydra.py``), MRPF's sensitivities (``sensitivity.py``), cached once per dense model by the
  scores stage (``scores.py``) with their damage check (``damage.py``), and unstructured global
  magnitude (``unstructured.py``).
- :mod:`robprune.prune.layerwise`: layer-wise pruning of transformer text classifiers: OBS, SparseGPT and
  magnitude solvers, N:M patterns (``nm.py``), the streaming driver and the ``conf/prune`` methods.

This module holds the entry points: :func:`prune_model`, :func:`check_prune_config`, :class:`PruneContext`
and the method functions the conf ``_target_``s name."""
from __future__ import annotations

import functools

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from robprune.config import instantiate
from robprune.errors import ConfigError
from robprune.prune.channel.gradual import adasap
from robprune.prune.channel.hydra import hydra
from robprune.prune.channel.methods import channel_pruning, l1_filter, mrs, no_pruning
from robprune.prune.channel.unstructured import global_magnitude
from robprune.prune.context import PruneContext
from robprune.prune.layerwise.methods import kr_obs, magnitude, sparsegpt
from robprune.registry import PRUNERS

# keys of a conf/prune node that are not options of the method: the scores stage's node, and Hydra's
# defaults list when a YAML file is loaded without composition (tests, scripts)
NOT_OPTIONS = ("scores", "calibration", "defaults")

__all__ = ["PruneContext", "adasap", "channel_pruning", "check_prune_config", "global_magnitude", "hydra", "kr_obs", "l1_filter",
           "magnitude", "mrs", "no_pruning", "prune_model", "sparsegpt"]


def prune_model(model: nn.Module, prune_cfg: DictConfig, context: PruneContext | None = None, *,
                example_inputs: torch.Tensor | None = None) -> dict:
    """Prune ``model`` IN PLACE with the method ``prune_cfg`` selects (a ``conf/prune`` node).

    context: what the method may use (example inputs, calibration set, device, seed, cached scores);
    ``example_inputs=x`` alone is shorthand for ``PruneContext(x)``. example_inputs: (N, C, H, W)
    pixels in [0, 1] on the model's device (only the shape matters; the first example traces the
    dependency graph). The config's ``scores`` node is the scores stage's business and is not passed to
    the method (nor is a ``defaults`` list). ``model.training`` is left as it was.

    Returns a JSON-serialisable dict:
      method, structured (channels physically removed?), masked (weights zeroed under a mask),
      ratio_semantics ('params' | 'channel'), channel_ratio (the configured per-layer ratio, None under
      'params'), sparsity_target (the configured parameter sparsity, None under 'channel');
      sparsity: achieved parameter sparsity = 1 − W_after / W_before, where W counts the nonzero weight
        elements of ALL Conv2d and Linear modules (excluded stem and classifier included; biases and
        BN not) — docs/methods/conventions.md#sparsity; channel_ratio_achieved (structured methods);
      prunable_before/after: those W counts; params_before/after: all parameters (incl. BN, biases);
      layers: [{name, channels_before, channels_after, group, ratio[, mrs, s, z]}] per Conv2d (s, z: the
        allocation rule's floored score and standardised log score under prune.rule=bounded);
      ratios: {group root: channel ratio}; groups: [{root, members, channels}] that were prunable;
      history: Torch-Pruning's pruning history, [[module name, is_out_channel_cut, [indices]], ...],
        replayable on the dense model with ``DependencyGraph.load_pruning_history``.
    """
    if context is None:
        if example_inputs is None:
            raise TypeError("prune_model needs a PruneContext or example_inputs")
        context = PruneContext(example_inputs)
    return _method(prune_cfg)(model, context)


def _method(prune_cfg: DictConfig):
    """The bound method of a conf/prune node (its scores and defaults keys left out).

    The options are resolved while the node is still attached to the run's config, so an interpolation
    such as ``${oc.select:experiment.ratio,0.5}`` reads the run's value (a detached copy would silently
    take the default while the stage's cache key used the real one); a missing ``???`` value stays
    missing, so instantiation names the key."""
    options = {}
    for key in prune_cfg:
        if key in NOT_OPTIONS:
            continue
        if OmegaConf.is_missing(prune_cfg, key):
            options[key] = "???"
            continue
        try:
            value = prune_cfg[key]
            options[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        except OmegaConfBaseException as err:
            raise ConfigError(f"prune.{key}: cannot resolve its value ({err.__class__.__name__}: "
                              f"{str(err).splitlines()[0]}); set prune.{key} on the command line") from None
    return instantiate(OmegaConf.create(options), "prune")


def check_prune_config(prune_cfg: DictConfig) -> None:
    """Validate a conf/prune node's options without a model or data: ConfigError naming the key.
    Meant for :func:`robprune.validate.validate`, so a sweep with a bad value fails before training."""
    from robprune.prune.channel.methods import check_options

    method = _method(prune_cfg)
    entry = PRUNERS.find(method.func) if isinstance(method, functools.partial) else None
    if entry is not None and entry.meta.get("options") is not None:  # a channel pruner's cross-key rules
        check_options(method, entry.meta["options"], entry.meta.get("fixed", {}))
