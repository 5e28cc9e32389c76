"""The layout of the root config: which groups and keys a composed config holds and what each value must be.

A node is described by a dict {key: spec}; a spec is a :class:`Value` (a leaf: type, range, choices),
a nested dict, :data:`TARGET` (a node with a ``_target_``: its keys are the parameters of the callable,
see :mod:`robprune.validate`), :class:`MapOf` (free names, each value of one spec; ``eval.attacks``) or
:data:`ANY` (checked elsewhere, e.g. quant values by ``robprune.quant.spec_from_config``).
"""
from __future__ import annotations

import dataclasses

from robprune.corruptions import SOURCES
from robprune.errors import ConfigError
from robprune.options import (ANY, BOOL, EPS, FRACTION, HYDRA_KEYS, PATH, SEED, SIZE, STEPS, STR, TARGET,  # noqa: F401
                               TRAINING, Choice, Float, Int, MapOf, Value, declared, spec_of)
from robprune.options import unknown_key as _unknown_key
from robprune.prune.channel.sensitivity import PERTURBATIONS
from robprune.registry import DATASETS, REGISTRIES, Entry, locate, target_entry
from robprune.quant.modules import METHODS as QUANT_METHODS
from robprune.quant.modules import QuantSpec
from robprune.train.fast import LookaheadOptions, MonitorOptions
from robprune.train.recipe import SCHEDULES
from robprune.train.trainer import TrainerOptions
from robprune.train.sharpness import SharpnessOptions

# ---- groups without a _target_ -------------------------------------------------------------------
SCHEDULE = {"name": Choice(*SCHEDULES), "milestones": Value("list", item=Int(0)), "gamma": Float(0),
            "warmup": Float(0, high=1, high_open=True, example="0.1"),  # warmup: linear only, fraction of all steps
            # triangle only (airbench): lr factor at the first step, where it peaks at 1 (fraction of all steps), at the last
            "start": Float(0, example="0.2"), "peak": Float(0, high=1, low_open=True, example="0.23"), "end": Float(0, example="0.07")}
SHARPNESS = spec_of(SharpnessOptions)  # declared in robprune.train.sharpness
TRAIN = {"epochs": Int(0, example="2"), "objective": TARGET, "optimizer": TARGET, "schedule": SCHEDULE,
         "sharpness": SHARPNESS, "clip_grad_norm": Float(0, low_open=True, null=True, example="1.0"),
         # the fast recipes (docs/methods/recipes.md#fast-recipes): declared in robprune.train.fast and robprune.train.recipe
         "lookahead": spec_of(LookaheadOptions), "monitor": spec_of(MonitorOptions), "alternate_flip": BOOL,
         "norm_bias_lr_scale": Float(0, low_open=True, null=True, example="64")}
QUANT = {**spec_of(QuantSpec), "method": Choice("none", *QUANT_METHODS),  # declared by robprune.quant.QuantSpec
         "calibration": {"n_examples": Int(1, null=True, example="1024"), "batch_size": SIZE}, "train": TRAIN}
DATA = {"root": PATH, "download": BOOL, "batch_size": Int(1, example="128"), "cache_dir": PATH,
        "num_workers": Int(0, example="8"), "gpu_decode": Choice("auto", True, False), "skip_bad": BOOL}  # robprune.data.stream.Loading
LATENCY = {"batch_size": SIZE, "repeats": Int(1, example="20"), "warmup": Int(0, example="3")}
CORRUPTIONS = {"source": Choice(*SOURCES), "root": PATH, "frost_textures": PATH,
               "names": Value("list", item=STR, example="[fog,snow]"), "severities": Value("list", item=Int(), example="[1,2,3,4,5]"),
               "n_examples": Int(1, null=True, example="1000")}  # names, severities, root: robprune.corruptions.check_node
EVAL = {"attacks": MapOf(TARGET), "n_examples": MapOf(Int(1, null=True, example="200")), "batch_size": Int(1, example="256"),
        "block_size": Int(1, example="1000"), "large_eps_check": BOOL, "large_eps_n": Int(1, example="100"), "latency": LATENCY, "corruptions": CORRUPTIONS,
        "max_length": Int(2, example="64"), "sets": MapOf(ANY)}  # max_length: text evaluation (tokens per attacked sentence); sets: dataset nodes, checked by robprune.evaluate.shift
DATASET = {"name": STR, "root": PATH, "download": BOOL, "train_split": STR, "test_split": STR,
           "num_classes": Int(1, null=True, example="10"), "mean": Value("list", item=Float(0, high=1)),
           "std": Value("list", item=Float(0, low_open=True)), "eps": EPS, "eps_l2": Float(0, example="0.5"),
           "augment": {"crop_padding": Int(0, example="4"), "hflip": BOOL,
                       "resized_crop": Value("list", item=Float(0, high=1), null=True, example="[0.08,1.0]")},
           "version": Value("str", null=True, example="2012")}  # dataset.version: part of every key (robprune.data.build)


# keys that were options once, and what replaced them: their own one-line hint instead of "not a key"
REPLACED = {"model": {"pretrained": "published weights are model.init=pretrained now (docs/how-to/start-from-a-model.md); "
                                    "use model.init=pretrained"}}


def unknown_key(key: str, parent: str, allowed):
    """:func:`robprune.options.unknown_key`, or the hint of a key that :data:`REPLACED` names."""
    name = key.rsplit(".", 1)[-1]
    if name in REPLACED.get(parent, {}):
        return ConfigError(f"{key} is not an option of {parent} any more: {REPLACED[parent][name]}", key=key)
    return _unknown_key(key, parent, allowed)


def dataset_keys(name: str) -> dict:
    """The keys only dataset ``name`` reads (its registration's ``keys``; conf/dataset/<name>.yaml)."""
    return DATASETS.entry(name).meta.get("keys", {}) if name in DATASETS else {}


def reads_files(name: str) -> bool:
    """Whether dataset ``name`` is read from files under dataset.root (its registration's ``files``)."""
    return not (name in DATASETS and DATASETS.entry(name).meta.get("files", True) is False)
# greedy weight averaging (robprune.stages.average): ingredient recipes merged over `train`, the scoring attack
INGREDIENT = {"epochs": Int(0, example="2"), "objective": ANY, "optimizer": ANY, "schedule": ANY,  # merged over train, then checked as a train node
              "clip_grad_norm": Float(0, low_open=True, null=True, example="1.0"), "seed": Int(example="1")}
AVERAGE = {"ingredients": MapOf(INGREDIENT), "attack": TARGET, "n_score": Int(1, example="100"), "batch_size": SIZE}
TRAINER = spec_of(TrainerOptions)  # declared by robprune.train.trainer.TrainerOptions
LOGGER = {"tensorboard": BOOL, "mlflow": ANY}  # mlflow: null or {tracking_uri, experiment}: robprune.tracking.check_logger
ROOT = {"dataset": DATASET, "model": TARGET, "train": TRAIN, "prune": TARGET, "quant": QUANT, "finetune": TRAIN,
        "eval": EVAL, "data": DATA, "seed": Int(example="0"), "train_seed": Int(example="0"), "device": ANY,
        "cache": BOOL, "cache_dir": Value("path", example="outputs/cache"), "quiet": Choice(False, True, 0, 1),
        "threads": Int(1, null=True, example="2"), "eval_out": PATH, "average": AVERAGE, "logger": LOGGER, "trainer": TRAINER}
REQUIRED = {"": tuple(k for k in ROOT if k not in ("average", "logger", "trainer")), "average": ("ingredients", "attack", "n_score", "batch_size"), "data": tuple(DATA), "train": ("epochs",), "finetune": ("epochs",),
            "eval": ("attacks", "batch_size", "latency"), "dataset": ("name", "train_split", "test_split"),
            "quant": ("method",)}

# ---- typed parameters of _target_ callables (unknown keys come from their signatures) --------------
SCORES = {"n_images": Int(1, example="1024"), "batch_size": SIZE, "seed": SEED, "attack": TARGET,
          "perturbation": Choice(*PERTURBATIONS), "alpha": Float(0, low_open=True, example="0.2"), "draws": Int(1),
          "steps": STEPS, "damage_check": BOOL, "damage_seeds": Value("list", item=Int(), example="[0,1,2]")}
OPTIMIZER = {"lr": Float(0, low_open=True, example="0.001"), "momentum": Float(0, example="0.9"),
             "weight_decay": Float(0, example="0.0005"), "nesterov": BOOL}
# a pruner's "during_training" node (prune=adasap, robprune.prune.channel.gradual): a train node plus the schedule
DURING_TRAINING = {**TRAIN, "prune_interval": Int(1, example="50"), "prune_steps": Int(1, example="10")}
TARGET_PARAMS = {  # callables that declare no options of their own (yet)
    "robprune.prune.channel.sensitivity.mrs_scores": SCORES, "robprune.prune.channel.sensitivity.calibration_set": SCORES,
}
PREFIX_PARAMS = {"torch.optim.": OPTIMIZER}


def registered(target: str) -> "Entry | None":
    """The registration a ``_target_`` resolves to, in any registry (None: not registered, or no import)."""
    for registry in REGISTRIES.values():
        entry = target_entry(registry, target)
        if entry is not None:
            return entry
    return None


def _declaration(target: str):
    """(what declares the options, what the registration fixes, the nodes it carries besides its options:
    its own and its registry's common options, e.g. a model's init and head)."""
    for registry in REGISTRIES.values():
        entry = target_entry(registry, target)
        if entry is not None:
            common = spec_of(registry.common) if registry.common is not None else {}
            return entry.meta.get("options", entry.obj), entry.meta.get("fixed", {}), {**common, **entry.meta.get("nodes", {})}
    try:
        return locate(target), {}, {}
    except (ImportError, AttributeError):
        return None, {}, {}


def explicit_keys(target: str) -> tuple[str, ...] | None:
    """The keys a node with this ``_target_`` may hold when its callable takes ``**options`` declared by a
    dataclass (channel pruners); None: read them from the callable's signature."""
    options, _, _ = _declaration(target)
    if options is None or not dataclasses.is_dataclass(options):
        return None
    return tuple(params_of(target))


def node_keys(target: str) -> tuple[str, ...]:
    """Keys a registration carries besides its options (a pruner's scores or calibration node)."""
    return tuple(_declaration(target)[2])

def params_of(target: str) -> dict:
    """{key: spec} of the typed parameters of a ``_target_``: the callable's own declaration
    (robprune.options), else the tables above (empty when none are declared)."""
    if target in TARGET_PARAMS:
        return TARGET_PARAMS[target]
    options, fixed, nodes = _declaration(target)
    if options is not None and declared(options):
        specs = {k: DURING_TRAINING if v == TRAINING else v for k, v in spec_of(options).items() if k not in fixed}
        return {**specs, **nodes}
    return next((spec for prefix, spec in PREFIX_PARAMS.items() if target.startswith(prefix)), {})
