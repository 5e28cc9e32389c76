"""Pruning methods a ``conf/prune/<name>.yaml`` selects: ``_target_`` names one of these functions and
``_partial_: true`` binds its options, so each is called as ``fn(model, context)`` (a
:class:`~robprune.prune.context.PruneContext`) and returns the info dict of
:func:`robprune.prune.prune_model`. A method composes an importance (``criterion``), an allocator
and a cut.

How much is removed (docs/methods/conventions.md#sparsity) is set by exactly one of two keys:
  ``sparsity``      global fraction of Conv2d/Linear weight elements removed (``ratio_semantics: params``);
  ``channel_ratio`` fraction of output channels removed in every prunable group (``ratio_semantics: channel``).
``sparsity``, when not null, takes precedence over a ``channel_ratio`` left at its default.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

from torch import nn

from robprune.config import require_range
from robprune.errors import ConfigError
from robprune.prune.channel.allocation import (BoundedRule, bounded_ratios, global_by_score, inverse_ratios, rule_terms,
                                               uniform_ratios, uniform_sparsity)
from robprune.prune.channel.importance import make_importance
from robprune.prune.channel.policy import structured_prune
from robprune.prune.channel.sensitivity import group_scores
from robprune.prune.context import PruneContext
from robprune.prune.stats import conv_channels, count_params, layer_table, prunable_weight_count

RATIO_SEMANTICS = ("params", "channel")
ALLOCATIONS = ("uniform", "global", "mrs")
RULES = ("bounded", "inverse")   # allocation mrs: how scores become ratios
NORMALIZATIONS = ("bisection", "mean")
# the options l1_filter and mrpf fix before the config's own (also what check_options assumes for them)
L1_FILTER = {"method": "l1_filter", "criterion": "l1"}
MRPF = {"method": "mrs", "criterion": "l1", "allocation": "mrs"}


@dataclass(frozen=True)
class ChannelPruning:
    """Options of structured channel pruning (the keys of conf/prune/{l1,l2}_filter, taylor, random, mrs)."""

    method: str = "channel"              # name recorded in results
    criterion: str = "l1"                # importance inside a group: l1 | l2 | taylor | random
    allocation: str = "uniform"          # uniform | global (by normalised score) | mrs (MRPF adaptive)
    sparsity: float | None = None        # global parameter sparsity target (ratio_semantics params)
    channel_ratio: float | None = None   # per-group channel ratio (ratio_semantics channel)
    ratio_semantics: str | None = None   # params | channel | None = inferred from which key is set
    normalization: str = "bisection"     # mrs only: bisection (c hits sparsity) | mean (c from channel_ratio)
    rule: str = "bounded"                # mrs only: bounded clip(c − λ·z_l, r_min, r_max_l) | inverse clip(c/s_l, 0, r_max)
    lam: float = 0.4                     # mrs bounded: λ, channel ratio per unit of standardised log score
    r_min: float = 0.0                   # mrs bounded: smallest per-group channel ratio
    r_max: float = 0.95                  # largest per-group channel ratio when allocating to a sparsity
    r_max_small: float = 0.5             # mrs bounded: r_max of groups holding under small_fraction of the weights
    small_fraction: float = 0.02         # mrs bounded: share of the Conv2d/Linear weights below which a group is small
    score_floor: float = 0.1             # mrs bounded: scores floored at this fraction of the median score
    min_channels: int = 1                # channels every group keeps
    exclude_stem: bool = True            # never prune the first conv
    exclude_linear: bool = True          # never prune Linear outputs

    def semantics(self) -> str:
        """'params' or 'channel' after checking that exactly one amount applies (ConfigError otherwise)."""
        inferred = "params" if self.sparsity is not None else "channel"
        semantics = self.ratio_semantics or inferred
        if semantics not in RATIO_SEMANTICS:
            raise ConfigError(f"prune.ratio_semantics must be params, channel or null, got {semantics!r}")
        if semantics == "params" and self.sparsity is None:
            raise ConfigError("prune.ratio_semantics=params needs prune.sparsity (a global parameter fraction), e.g. prune.sparsity=0.8")
        if semantics == "channel" and self.channel_ratio is None:
            raise ConfigError("set prune.sparsity (global parameter fraction) or prune.channel_ratio (per-layer "
                              "channel fraction), e.g. prune.sparsity=0.8")
        if semantics == "channel" and self.sparsity is not None:
            raise ConfigError(f"prune.ratio_semantics=channel but prune.sparsity={self.sparsity} is set too; "
                              f"set prune.sparsity=null to use prune.channel_ratio={self.channel_ratio}")
        require_range(float(self.sparsity if semantics == "params" else self.channel_ratio),
                      "prune.sparsity" if semantics == "params" else "prune.channel_ratio", 0, 1)
        require_range(float(self.r_max), "prune.r_max", 0, 1)
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(f"prune.allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if int(self.min_channels) < 1:
            raise ConfigError(f"prune.min_channels must be >= 1, got {self.min_channels}")
        if self.allocation == "mrs":
            self.check_mrs()
        return semantics

    def check_mrs(self) -> None:
        """The MRS rule's options: ranges and r_min <= min(r_max, r_max_small) (ConfigError naming the key)."""
        for key, choices in (("rule", RULES), ("normalization", NORMALIZATIONS)):
            if getattr(self, key) not in choices:
                raise ConfigError(f"prune.{key} must be {' or '.join(choices)}, got {getattr(self, key)!r}; "
                                  f"e.g. prune.{key}={choices[0]}")
        if float(self.lam) < 0:
            raise ConfigError(f"prune.lam must be >= 0, got {self.lam}; e.g. prune.lam=0.4")
        for key in ("r_min", "r_max_small", "small_fraction"):
            require_range(float(getattr(self, key)), f"prune.{key}", 0, 1)
        if not 0 < float(self.score_floor) <= 1:
            raise ConfigError(f"prune.score_floor must be in (0, 1], got {self.score_floor}; e.g. prune.score_floor=0.1")
        for key in ("r_max", "r_max_small"):
            if float(self.r_min) > float(getattr(self, key)):
                raise ConfigError(f"prune.r_min={self.r_min:g} exceeds prune.{key}={getattr(self, key):g}, so the ratio "
                                  f"range is empty; lower prune.r_min, e.g. prune.r_min=0")

    def bounded_rule(self) -> BoundedRule:
        """The options of :func:`robprune.prune.channel.allocation.bounded_ratios`."""
        return BoundedRule(lam=float(self.lam), r_min=float(self.r_min), r_max=float(self.r_max),
                           r_max_small=float(self.r_max_small), small_fraction=float(self.small_fraction),
                           score_floor=float(self.score_floor))


def allocator(options: ChannelPruning, semantics: str, context: PruneContext):
    """The allocator the options select, with its options bound."""
    if options.allocation == "mrs":
        return partial(_mrs_allocate, options=options, context=context)
    if options.allocation == "global" and semantics != "params":
        raise ConfigError("prune.allocation=global ranks channels across layers to a parameter target: set prune.sparsity")
    if semantics == "channel":
        return partial(uniform_ratios, channel_ratio=float(options.channel_ratio))
    fn = global_by_score if options.allocation == "global" else uniform_sparsity
    return partial(fn, sparsity=float(options.sparsity), r_max=float(options.r_max))


def _mrs_allocate(inp, *, options: ChannelPruning, context: PruneContext):
    """MRPF, docs/methods/mrpf.md#step-4: ratios from the groups' MRS by ``options.rule`` (bounded | inverse)."""
    layer_mrs = context.layer_mrs()
    if not layer_mrs:
        raise ConfigError("prune.allocation=mrs needs MRS scores: the prune config must have a 'scores' node that "
                          "computes them (use prune=mrs)")
    scores = group_scores(layer_mrs, [{"root": g.root, "members": g.members} for g in inp.groups])
    amount = {"sparsity": options.sparsity, "channel_ratio": options.channel_ratio, "normalization": options.normalization}
    if options.rule == "inverse":
        return inverse_ratios(inp, group_scores=scores, r_max=float(options.r_max), **amount)
    return bounded_ratios(inp, group_scores=scores, rule=options.bounded_rule(), **amount)


def channel_options(options: dict) -> ChannelPruning:
    """ChannelPruning from config keys; ConfigError naming an unknown key."""
    unknown = sorted(set(options) - set(ChannelPruning.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"prune.{unknown[0]} is not an option of channel pruning; options: "
                          f"{', '.join(ChannelPruning.__dataclass_fields__)}")
    return ChannelPruning(**options)


def check_options(method) -> None:
    """Check a bound method's options without a model (so a sweep fails before any training).
    method: the functools.partial that ``instantiate(prune_cfg)`` returns."""
    defaults = {l1_filter: L1_FILTER, mrpf: MRPF, channel_pruning: {}}
    if method.func in defaults:
        opts = channel_options({**defaults[method.func], **method.keywords})
        opts.semantics()


def channel_pruning(model: nn.Module, context: PruneContext, **options) -> dict:
    """Structured channel pruning, IN PLACE: score channels with ``criterion``, allocate per-group
    ratios (``allocation``; to a parameter ``sparsity`` or a ``channel_ratio``), cut with
    Torch-Pruning. See :class:`ChannelPruning` for the options and :func:`robprune.prune.prune_model`
    for the returned dict."""
    opts = channel_options(options)
    semantics = opts.semantics()
    importance = make_importance(opts.criterion, context, model)
    info = structured_prune(model, example_inputs=context.example_inputs, importance=importance,
                            allocate=allocator(opts, semantics, context), exclude_stem=opts.exclude_stem,
                            exclude_linear=opts.exclude_linear, min_channels=int(opts.min_channels))
    _attach_mrs(info, context, opts)
    return {**info, "method": opts.method, "ratio_semantics": semantics, "criterion": opts.criterion,
            "allocation": opts.allocation,
            "sparsity_target": float(opts.sparsity) if semantics == "params" else None,
            "channel_ratio": float(opts.channel_ratio) if semantics == "channel" else None,
            "channel_ratio_achieved": achieved_channel_ratio(info["layers"]), "options": asdict(opts)}


def _attach_mrs(info: dict, context: PruneContext, opts: ChannelPruning) -> None:
    """Add each layer's MRS (when scores exist) to the per-layer rows, so results hold score and ratio side
    by side; under allocation mrs also its group's terms: s (the floored group score) and z (its
    standardised log score, the ratio's input under rule bounded; None under inverse)."""
    mrs = context.layer_mrs()
    if not mrs:
        return
    terms = {}
    if opts.allocation == "mrs":
        terms = rule_terms(group_scores(mrs, info["groups"]), rule=opts.rule, score_floor=float(opts.score_floor))
    for row in info["layers"]:
        row["mrs"] = mrs.get(row["name"])
        row.update(terms.get(row.get("group"), {}))


def achieved_channel_ratio(layers: list[dict]) -> float:
    """Fraction of output channels removed over the convs of prunable groups (0 when none are)."""
    rows = [r for r in layers if r.get("group") is not None]
    before = sum(r["channels_before"] for r in rows)
    return 1.0 - sum(r["channels_after"] for r in rows) / before if before else 0.0


def l1_filter(model: nn.Module, context: PruneContext, **options) -> dict:
    """L1-norm filter pruning (Li et al., ICLR 2017; Adver-Fine's compression, docs/methods/adverfine.md): in every
    prunable group remove the output channels with the smallest filter L1 norm, floor(channel_ratio·C)
    of them, or a shared ratio found by bisection to reach a parameter ``sparsity``."""
    return channel_pruning(model, context, **{**L1_FILTER, **options})


def mrpf(model: nn.Module, context: PruneContext, **options) -> dict:
    """MRPF (arXiv 2410.15176, docs/methods/mrpf.md#step-4 (steps 4-5)): per-group ratios from the cached MRS scores
    (``rule: bounded``, r_l = clip(c − λ·z_l, r_min, r_max_l), or ``inverse``; c by bisection to the
    parameter ``sparsity``, or ``normalization: mean``), L1 filter norm inside each group (group norm
    for coupled groups)."""
    return channel_pruning(model, context, **{**MRPF, **options})


def no_pruning(model: nn.Module, context: PruneContext | None = None, *, method: str = "none",
               sparsity: float | None = None, channel_ratio: float | None = None) -> dict:
    """The dense baseline: leaves ``model`` untouched and records zero sparsity. ``sparsity`` and
    ``channel_ratio`` are accepted and ignored, so an experiment that sets them (mrpf_mnist) can also
    run ``prune=none`` as the dense reference of its sweep."""
    channels, weights, params = conv_channels(model), prunable_weight_count(model), count_params(model)
    return {"method": method, "structured": False, "channel_ratio": 0.0, "history": [], "ratios": {},
            "groups": [], "sparsity": 0.0, "prunable_before": weights, "prunable_after": weights,
            "params_before": params, "params_after": params, "layers": layer_table(channels, channels)}
