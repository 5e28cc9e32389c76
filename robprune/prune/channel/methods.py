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
from typing import Annotated

from torch import nn

from robprune.errors import ConfigError
from robprune.options import BOOL, FRACTION, STR, TARGET, Choice, Float, Int, Value, check_fields, option
from robprune.prune.channel.allocation import (BoundedRule, bounded_ratios, check_normalization, global_by_score,
                                               inverse_ratios, rule_terms, uniform_ratios, uniform_sparsity)
from robprune.prune.channel.importance import make_importance
from robprune.prune.channel.policy import structured_prune
from robprune.prune.channel.sensitivity import group_scores
from robprune.prune.context import PruneContext
from robprune.registry import CRITERIA as IMPORTANCES
from robprune.registry import PRUNERS
from robprune.prune.stats import conv_channels, count_params, layer_table, prunable_weight_count

RATIO_SEMANTICS = ("params", "channel")
ALLOCATIONS = ("uniform", "global", "mrs")
RULES = ("bounded", "inverse")   # allocation mrs: how scores become ratios
NORMALIZATIONS = ("bisection", "mean")
# what a registered method fixes over the config's options (so they are not options of that method)
L1_FILTER = {"criterion": "l1"}
MRS = {"allocation": "mrs"}
SCORES_NODE = {"scores": TARGET}  # the scores stage's node (MRS scores or Taylor's calibration set), not an option


@dataclass(frozen=True)
class ChannelPruning:
    """Options of structured channel pruning (prune=l1_filter, l2_filter, taylor, random), declared once:
    the schema of their conf files, their defaults and what the method is built with (docs/concepts/registry-and-options.md)."""

    method: str = option("channel", STR, help="name recorded in results (the registered name)")
    criterion: str = option("l1", Value("str", example="l1"), help="importance inside a group, a registered criterion: "
                            "l1 | l2 (filter norms, Li et al. 2017) | taylor (Molchanov et al. 2019, Eq. 8, on the "
                            "calibration set) | random | any other registered one")
    allocation: str = option("uniform", Choice(*ALLOCATIONS), help="with sparsity: uniform = one shared ratio found by "
                             "bisection | global = one threshold on mean-normalised scores | mrs (prune=mrs)")
    sparsity: float | None = option(None, FRACTION, help="global fraction of Conv2d/Linear weights removed "
                                    "(params semantics); null = use channel_ratio")
    channel_ratio: float | None = option(None, FRACTION, help="fraction of output channels removed per prunable "
                                         "group (channel semantics); used when sparsity is null")
    ratio_semantics: str | None = option(None, Choice(None, *RATIO_SEMANTICS), help="params (sparsity) | channel "
                                         "(channel_ratio) | null = params when sparsity is set, else channel "
                                         "(docs/methods/conventions.md#sparsity)")
    r_max: float = option(0.95, Float(0, high=1, high_open=True, example="0.95"),
                          help="largest channel ratio a group may get when allocating to a sparsity")
    min_channels: int = option(1, Int(1), help="output channels every group keeps")
    exclude_stem: bool = option(True, BOOL, help="never prune the first conv (in ResNets this also keeps its "
                                "residual-coupled convs)")
    exclude_linear: bool = option(True, BOOL, help="Linear layers (incl. the classifier) are not pruned; their inputs "
                                  "shrink with the conv before")

    def semantics(self) -> str:
        """'params' or 'channel' after checking that exactly one amount applies (ConfigError otherwise);
        single keys' types and ranges are their declarations' (checked when built, :func:`channel_options`)."""
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
        IMPORTANCES.entry(self.criterion, key="prune.criterion")  # a registered criterion (its module imported)
        if self.allocation == "mrs":
            self.check_mrs()
        return semantics

    def check_mrs(self) -> None:
        """Cross-key rules of the MRS allocation (none without it)."""


@dataclass(frozen=True)
class MRSPruning(ChannelPruning):
    """prune=mrs (MRPF, docs/methods/mrpf.md#step-4): the channel options plus how the MRS scores become
    per-group ratios."""

    normalization: str = option("bisection", Choice(*NORMALIZATIONS), help="how c is set: bisection = c hits sparsity "
                                "| mean = c from channel_ratio S (bounded: c = S; inverse: r_l = S·L·(1/s_l)/Σ_j 1/s_j)")
    rule: str = option("bounded", Choice(*RULES), help="MRS → ratio (docs/methods/mrpf.md#step-4): bounded r_l = "
                       "clip(c − lam·z_l, r_min, r_max_l) | inverse r_l = clip(c/s_l, 0, r_max) (the old rule)")
    lam: float = option(0.4, Float(0, example="0.4"), help="bounded: λ, channel ratio moved per unit of z_l = "
                        "standardised log score (std over groups)")
    r_min: float = option(0.0, Float(0, high=1, high_open=True, example="0"), help="bounded: smallest channel ratio a "
                          "group may get, at most r_max and r_max_small")
    r_max_small: float = option(0.5, Float(0, high=1, high_open=True, example="0.5"), help="bounded: r_max_l of small "
                                "groups (never above r_max)")
    small_fraction: float = option(0.02, Float(0, high=1, high_open=True, example="0.02"), help="bounded: a group is small "
                                   "when its layers hold under this fraction of the Conv2d/Linear weights")
    score_floor: float = option(0.1, Float(0, high=1, low_open=True, example="0.1"), help="bounded: s_l = max(MRS_l, "
                                "score_floor · median MRS) before the log")

    def check_mrs(self) -> None:
        """The amount the normalisation needs, and r_min <= min(r_max, r_max_small): otherwise the ratio range
        is empty (ConfigError naming the key)."""
        check_normalization(self.normalization, self.sparsity, self.channel_ratio)
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


def channel_options(options: dict, declaration: type = None) -> "MRSPruning":
    """The options of a channel pruner from config keys, as ``declaration`` (default :class:`MRSPruning`:
    every channel option, the MRS rule's at their defaults unless set); ConfigError naming an unknown key or
    a value its declaration refuses."""
    declaration = declaration or MRSPruning
    fields = declaration.__dataclass_fields__
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ConfigError(f"prune.{unknown[0]} is not an option of channel pruning; options: {', '.join(fields)}")
    opts = declaration(**options)
    check_fields(opts, "prune")
    return opts


def check_options(method, declaration: type, fixed: dict) -> None:
    """Check a bound channel method's options without a model (so a sweep fails before any training).
    method: the functools.partial that ``instantiate(prune_cfg)`` returns; declaration: the dataclass its
    registration declares them with; fixed: what the registration fixes."""
    channel_options({**fixed, **method.keywords}, declaration).semantics()


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


@PRUNERS.register("l1_filter", modality="image", family="channel", options=ChannelPruning, fixed=L1_FILTER,
                  nodes=SCORES_NODE)
def l1_filter(model: nn.Module, context: PruneContext, **options) -> dict:
    """L1-norm filter pruning (Li et al., ICLR 2017; Adver-Fine's compression, docs/methods/adverfine.md): in every
    prunable group remove the output channels with the smallest filter L1 norm, floor(channel_ratio·C)
    of them, or a shared ratio found by bisection to reach a parameter ``sparsity``."""
    return channel_pruning(model, context, **{"method": "l1_filter", **L1_FILTER, **options})


@PRUNERS.register("mrs", modality="image", family="channel", options=MRSPruning, fixed=MRS, nodes=SCORES_NODE)
def mrs(model: nn.Module, context: PruneContext, **options) -> dict:
    """MRPF (arXiv 2410.15176, docs/methods/mrpf.md#step-4 (steps 4-5)): per-group ratios from the cached MRS scores
    (``rule: bounded``, r_l = clip(c − λ·z_l, r_min, r_max_l), or ``inverse``; c by bisection to the
    parameter ``sparsity``, or ``normalization: mean``), L1 filter norm inside each group (group norm
    for coupled groups)."""
    return channel_pruning(model, context, **{"method": "mrs", **MRS, **options})


@PRUNERS.register("none", modality=("image", "text"), family="none")
def no_pruning(model: nn.Module, context: PruneContext | None = None, *,
               method: Annotated[str, STR, "name recorded in results"] = "none",
               sparsity: float | None = None, channel_ratio: float | None = None) -> dict:
    """The dense baseline: leaves ``model`` untouched and records zero sparsity. ``sparsity`` and
    ``channel_ratio`` are accepted and ignored, so an experiment that sets them (mrpf_mnist) can also
    run ``prune=none`` as the dense reference of its sweep."""
    channels, weights, params = conv_channels(model), prunable_weight_count(model), count_params(model)
    return {"method": method, "structured": False, "channel_ratio": 0.0, "history": [], "ratios": {},
            "groups": [], "sparsity": 0.0, "prunable_before": weights, "prunable_after": weights,
            "params_before": params, "params_after": params, "layers": layer_table(channels, channels)}


# l2_filter, taylor and random: channel_pruning with the criterion their conf file sets
for _name in ("l2_filter", "taylor", "random"):
    PRUNERS.add(_name, channel_pruning, modality="image", family="channel", options=ChannelPruning, fixed={},
                nodes=SCORES_NODE)
