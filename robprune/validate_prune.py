"""The pruning checks of :mod:`robprune.validate`: combinations of a prune node's keys (config only) and,
once the dense model exists, whether ``prune.sparsity`` is reachable on it (:func:`check_before_stages`).

Ranges and choices of single keys are their declarations' (:mod:`robprune.options`); the MRS rule's
cross-key ranges (r_min <= r_max, r_max_small) are checked by
:meth:`robprune.prune.channel.methods.ChannelPruning.check_mrs`, which validation reaches through
:func:`robprune.prune.check_prune_config`.
"""
from __future__ import annotations

from omegaconf import DictConfig

from robprune.errors import ConfigError
from robprune.registry import CRITERIA as IMPORTANCES
from robprune.registry import MODELS, PRUNERS, Entry, target_entry

NOT_OPTIONS = ("scores", "calibration", "defaults")  # keys of a prune node that are not options of the method


def check_prune_combinations(node: DictConfig) -> None:
    """Combinations robprune.prune.check_prune_config does not see without a model."""
    entry = channel_entry(node)
    if entry is None:
        return
    scores = str((node.get("scores") or {}).get("_target_", ""))
    allocation = node.get("allocation", entry.meta["fixed"].get("allocation", "uniform"))
    criterion = node.get("criterion")
    if criterion in IMPORTANCES and IMPORTANCES.entry(criterion).meta.get("needs_scores") and not scores:
        raise ConfigError(f"prune.criterion={criterion} needs a scores node that makes the calibration set; use "
                          f"prune={criterion} if it is a pruner, or set prune.criterion=l1")
    if allocation == "mrs":
        if not scores.endswith("mrs_scores"):
            raise ConfigError("prune.allocation=mrs needs MRS scores (prune.scores._target_=robprune.prune.channel.sensitivity."
                              "mrs_scores); use prune=mrs, or set prune.allocation=uniform")


def pruner(node: DictConfig) -> "Entry | None":
    """The registered pruning method a prune node builds (robprune.registry.PRUNERS), or None."""
    return target_entry(PRUNERS, node.get("_target_"))


def channel_entry(node: DictConfig) -> "Entry | None":
    """The registration of a one-shot channel pruner (options declared by a dataclass), or None."""
    entry = pruner(node)
    return entry if entry is not None and entry.meta.get("options") is not None else None


def reachable_sparsity(prune_cfg: DictConfig, model, example_inputs) -> float | None:
    """The largest parameter sparsity (docs/methods/conventions.md#sparsity) ``prune_cfg`` can reach on ``model``; None when
    the config sets no parameter target (channel ratios, no pruning). model: the dense model (left
    untouched: a copy is traced); example_inputs: (N, C, H, W) pixels in [0, 1], only the shape matters."""
    import copy

    from robprune.config import to_container

    from robprune.prune import adasap, global_magnitude, hydra

    entry = pruner(prune_cfg)
    options = {k: v for k, v in to_container(prune_cfg).items() if k not in NOT_OPTIONS and not k.startswith("_")}
    if entry is None:
        return None
    if entry.obj is global_magnitude:
        from robprune.prune.channel.unstructured import candidate_layers
        from robprune.prune.stats import prunable_weight_count

        layers = candidate_layers(model, exclude_stem=bool(options.get("exclude_stem", False)),
                                  exclude_linear=bool(options.get("exclude_linear", False)))
        total = prunable_weight_count(model)
        return sum(m.weight.numel() for m in layers.values()) / total if total else 0.0
    if entry.obj is hydra:  # HYDRA: layer-wise top-k (weight) or adasap's uniform channel allocation (channel)
        return _hydra_limit(model, example_inputs, options)
    if entry.obj is adasap:  # pruning during training: the same uniform allocation, after training
        options = {k: v for k, v in options.items() if k != "during_training"}
    elif channel_entry(prune_cfg) is None:
        return None
    opts = _cut_options(entry, options)
    if opts.semantics() != "params":
        return None
    return _channel_limit(copy.deepcopy(model).cpu(), example_inputs[:1].cpu(), opts)


HYDRA_CUT = ("exclude_stem", "exclude_linear", "r_max", "min_channels", "sparsity")  # hydra's options the channel cut reads


def _hydra_limit(model, example_inputs, options: dict) -> float:
    """The largest sparsity prune=hydra reaches: every pruned layer keeps one weight (weight), or every group
    cut at r_max (channel)."""
    import copy

    from robprune.prune.channel.hydra import weight_limit
    from robprune.prune.channel.methods import channel_options
    from robprune.prune.channel.unstructured import candidate_layers
    from robprune.prune.stats import prunable_weight_count

    if options.get("granularity", "weight") == "weight":
        layers = candidate_layers(model, exclude_stem=bool(options.get("exclude_stem", False)),
                                  exclude_linear=bool(options.get("exclude_linear", False)))
        return weight_limit(layers, prunable_weight_count(model))
    opts = channel_options({k: v for k, v in options.items() if k in HYDRA_CUT})
    return _channel_limit(copy.deepcopy(model).cpu(), example_inputs[:1].cpu(), opts)


def _cut_options(entry: Entry, options: dict):
    """The channel-pruning options (:class:`~robprune.prune.channel.methods.MRSPruning`) of a channel
    pruner's config: what its registration fixes, then its keys. Keys that only its own options dataclass
    declares (a ChannelPruning subclass with a new option, checked by check_prune_config against that
    dataclass) are left out: the allocation and the cut do not read them."""
    from robprune.prune.channel import methods

    known = methods.MRSPruning.__dataclass_fields__
    own = getattr(entry.meta.get("options"), "__dataclass_fields__", {})
    values = {**entry.meta.get("fixed", {}), **options}
    return methods.channel_options({k: v for k, v in values.items() if k in known or k not in own})


def _bounded(opts) -> bool:
    """Whether the allocation caps small groups at r_max_small (allocation mrs with rule bounded)."""
    return opts.allocation == "mrs" and opts.rule == "bounded"


def _channel_limit(model, example_inputs, opts) -> float:
    """Sparsity with every prunable group cut at its largest ratio: the top of every allocator's bisection
    (uniform, global and inverse MRS ratios reach r_max in every group at their upper bracket; bounded
    MRS ratios reach r_max_l = min(r_max_small, r_max) in the groups under small_fraction of the weights)."""
    from robprune.prune.channel.allocation import group_caps
    from robprune.prune.channel.budget import ParamBudget
    from robprune.prune.channel.structured import build_groups

    _, groups = build_groups(model, example_inputs, exclude_stem=opts.exclude_stem, exclude_linear=opts.exclude_linear)
    budget = ParamBudget(model, groups, min_keep=int(opts.min_channels))
    if _bounded(opts):
        caps = group_caps(groups, budget, r_max=float(opts.r_max), r_max_small=float(opts.r_max_small),
                          small_fraction=float(opts.small_fraction))
    else:
        caps = {g.root: float(opts.r_max) for g in groups}
    return budget.sparsity(caps)


def check_before_stages(cfg: DictConfig, model, example_inputs) -> None:
    """The checks that need the model: prune.sparsity must be reachable on it (r_max, and r_max_small for
    small groups under the bounded MRS rule, cap channel ratios; exclude_stem / exclude_linear keep layers).
    model: the dense, untrained model the run builds (not modified); example_inputs: (N, C, H, W) pixels
    in [0, 1]. Raises ConfigError naming the key. For a timm model the cut is also tried once
    (:func:`check_cut_fits`)."""
    check_cut_fits(cfg, model, example_inputs)
    check_n_m_fits(cfg.prune, model)
    limit = reachable_sparsity(cfg.prune, model, example_inputs)
    sparsity = cfg.prune.get("sparsity")
    if limit is None or sparsity is None or float(sparsity) <= limit + 1e-9:
        return
    keys = ("r_max", "r_max_small", "small_fraction", "exclude_stem", "exclude_linear")
    if cfg.prune.get("granularity") == "weight":  # prune=hydra's weight variant: top-k per layer, no channel ratio
        keys = ("exclude_stem", "exclude_linear")
    if cfg.prune.get("rule", "bounded") != "bounded":
        keys = tuple(k for k in keys if k not in ("r_max_small", "small_fraction"))
    keeps = ", ".join(f"prune.{k}={str(cfg.prune[k]).lower()}" for k in keys if k in cfg.prune)
    raise ConfigError(f"prune.sparsity={float(sparsity):g} is not reachable on this model: at most {limit:.4f} of the "
                      f"Conv2d/Linear weights can be removed with {keeps}; lower it, e.g. prune.sparsity={_floor2(limit)}")


def check_n_m_fits(prune_cfg: DictConfig, model) -> None:
    """A layer-wise pruner's N:M pattern must divide the input width of every encoder Linear it prunes."""
    from torch import nn

    from robprune.prune.layerwise.nm import check_n_m_fits as check_fits, parse_n_m

    pattern = parse_n_m(prune_cfg.get("n_m")) if "n_m" in prune_cfg else None
    encoder = getattr(getattr(getattr(model, "hf", None), "base_model", None), "encoder", None)
    if pattern is None or encoder is None:
        return
    names = {module: name for name, module in model.named_modules()}
    check_fits(pattern, ((names[m], m.in_features) for m in encoder.modules() if isinstance(m, nn.Linear)))


def check_calibration(prune_cfg: DictConfig, n_train: int) -> None:
    """A layer-wise pruner's calibration and held-out sentences must fit in the training split."""
    node = prune_cfg.get("calibration")
    if node is not None and int(node.n) + int(node.heldout) > n_train:
        raise ConfigError(f"prune.calibration.n={node.n} + prune.calibration.heldout={node.heldout} sentences exceed the "
                          f"training split's {n_train}; lower prune.calibration.n or widen dataset.train_split")


def check_cut_fits(cfg: DictConfig, model, example_inputs) -> None:
    """Channel pruning of a timm model (config-selected architectures robprune's tests do not cover):
    Torch-Pruning's dependency graph does not keep every architecture consistent, so a copy of the dense
    model is cut once, half the channels of every prunable group, and run on one example. ConfigError when
    that fails (RegNet's grouped convs, MobileViT-v2's split attention) or changes the output shape, and
    when a prunable group holds an attention projection (a module with ``num_heads``): its channels would
    be cut across heads, which can run and be wrong (MobileViT with prune.exclude_linear=false)."""
    import copy

    import torch

    from robprune.config import to_container
    from robprune.prune.channel.structured import build_groups, cut_group

    from robprune.prune import adasap, hydra

    entry = pruner(cfg.prune)
    hydra_cut = entry is not None and entry.obj is hydra and cfg.prune.get("granularity") == "channel"
    cuts = entry is not None and (entry.obj is adasap or hydra_cut or channel_entry(cfg.prune) is not None)  # adasap cuts after training
    from robprune.models.timm import timm_model

    model_entry = target_entry(MODELS, cfg.model.get("_target_"))
    if model_entry is None or model_entry.obj is not timm_model or not cuts:
        return
    options = {k: v for k, v in to_container(cfg.prune).items() if k not in NOT_OPTIONS and not k.startswith("_")
               and k != "during_training"}
    opts = _cut_options(entry, {k: v for k, v in options.items() if k in HYDRA_CUT} if hydra_cut else options)
    name, trial, x = cfg.model.get("name"), copy.deepcopy(model).cpu().eval(), example_inputs[:1].cpu()
    with torch.no_grad():
        expected = trial(x).shape
    try:
        dg, groups = build_groups(trial, x, exclude_stem=opts.exclude_stem, exclude_linear=opts.exclude_linear)
        _check_heads(trial, groups, name, exclude_linear=opts.exclude_linear)
        for group in groups:
            cut_group(dg, group, torch.zeros(group.channels), 0.5, min_keep=int(opts.min_channels))
        with torch.no_grad():
            shape = trial.eval()(x).shape
    except (RuntimeError, IndexError, ValueError, TypeError, AttributeError, KeyError) as err:
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"model.name={name}: Torch-Pruning's channel removal does not fit this architecture (cutting "
                          f"half the channels of every prunable group fails: {type(err).__name__}: {reason}); pick "
                          f"another model (resnet*, vgg*_bn, mobilevit_xxs/xs/s, efficientnet_*, mobilenetv3_*) or "
                          f"prune=global_magnitude (weight masks, no channel removal)") from None
    if shape != expected:
        raise ConfigError(f"model.name={name}: cutting channels changes the output shape from {tuple(expected)} to "
                          f"{tuple(shape)}; pick another model or prune=global_magnitude")


def _check_heads(model, groups, name, *, exclude_linear: bool) -> None:
    """ConfigError if a prunable group has a member inside a multi-head attention module."""
    members = [m for g in groups for m in g.members]
    fix = "pick another model or prune=global_magnitude" if exclude_linear else "set prune.exclude_linear=true"
    for path, module in model.named_modules():
        heads = getattr(module, "num_heads", None)
        inside = [m for m in members if m.startswith(f"{path}.")] if isinstance(heads, int) and path else []
        if inside:
            raise ConfigError(f"model.name={name}: channel pruning would cut {inside[0]} across the {heads} heads of "
                              f"{path} (Torch-Pruning's graph does not keep attention heads whole); {fix}")


def _floor2(x: float) -> str:
    return f"{int(x * 100) / 100:.2f}"
