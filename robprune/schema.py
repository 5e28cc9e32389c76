"""The schema of every config group, written once: which keys a node may hold and what each value must be.

A node is described by a dict {key: spec}; a spec is a :class:`Value` (a leaf: type, range, choices),
a nested dict, :data:`TARGET` (a node with a ``_target_``: its keys are the parameters of the callable,
see :mod:`robprune.validate`), :class:`MapOf` (free names, each value of one spec; ``eval.attacks``) or
:data:`ANY` (checked elsewhere, e.g. quant values by ``robprune.quant.spec_from_config``).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from robprune.attacks.autoattack import AA_ATTACKS, AA_NORMS, AA_VERSIONS
from robprune.attacks.common import LOSSES
from robprune.attacks.pgd import COMPAT, STARTS
from robprune.attacks.threat import NORMS
from robprune.corruptions import SOURCES
from robprune.errors import ConfigError
from robprune.models.timm import STEMS
from robprune.prune.channel.importance import CRITERIA
from robprune.prune.channel.methods import ALLOCATIONS, NORMALIZATIONS, RATIO_SEMANTICS, RULES
from robprune.prune.channel.sensitivity import PERTURBATIONS
from robprune.train.recipe import SCHEDULES

ANY = "any"
TARGET = "target"
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
         "path": "a path", "list": "a list"}


@dataclass(frozen=True)
class Value:
    """A leaf: kind (int | float | bool | str | path | list), optional bounds (``low``/``high``, open
    or closed), ``choices``, ``null`` (None allowed), ``item`` (spec of each list element) and
    ``example`` (a valid value shown in the fix)."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    null: bool = False
    item: "Value | None" = None
    example: str = ""

    def check(self, value: Any, key: str) -> None:
        """Raise ConfigError naming ``key`` and the fix unless ``value`` fits."""
        if value is None:
            if not self.null:
                raise ConfigError(f"{key} must not be null; {self._fix(key)}")
            return
        if self.choices is not None:
            if not any(isinstance(c, bool) == isinstance(value, bool) and c == value for c in self.choices):
                raise ConfigError(f"{key} must be one of {', '.join(_show(c) for c in self.choices)}, "
                                  f"got {value!r}{_close(value, self.choices)}; {self._fix(key)}")
            return
        if not _is_kind(value, self.kind):
            raise ConfigError(f"{key} must be {KINDS[self.kind]}{' or null' if self.null else ''}, got {value!r}; {self._fix(key)}")
        if self.kind == "list" and self.item is not None:
            for i, element in enumerate(value):
                self.item.check(element, f"{key}[{i}]")
        if self.kind in ("int", "float") and not self._in_range(value):
            raise ConfigError(f"{key} must be {self._range()}{' or null' if self.null else ''}, got {value!r}; {self._fix(key)}")

    def _in_range(self, v: float) -> bool:
        ok_low = self.low is None or (v > self.low if self.low_open else v >= self.low)
        ok_high = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return ok_low and ok_high

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"

    def _fix(self, key: str) -> str:
        example = self.example or (_show(self.choices[0]) if self.choices else {"int": "1", "float": "0.1", "bool": "true"}.get(self.kind, "<value>"))
        return f"e.g. {key}={example}"


@dataclass(frozen=True)
class MapOf:
    """A node whose keys are free names (attack names) and whose values all follow ``item``."""

    item: Any


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "path":
        return isinstance(value, (str, int)) and not isinstance(value, bool)
    if kind == "list":
        from omegaconf import ListConfig

        return isinstance(value, (list, tuple, ListConfig))
    return True


def _show(choice: Any) -> str:
    return "null" if choice is None else str(choice).lower() if isinstance(choice, bool) else str(choice)


def _close(value: Any, choices) -> str:
    near = difflib.get_close_matches(str(value), [str(c) for c in choices if c is not None], n=1)
    return f" (did you mean {near[0]}?)" if near else ""


def unknown_key(key: str, parent: str, allowed) -> ConfigError:
    """The error for a key that the schema of ``parent`` does not have, with difflib's nearest key."""
    allowed = sorted(k for k in allowed if k not in HYDRA_KEYS)
    name = key.rsplit(".", 1)[-1]
    near = difflib.get_close_matches(name, allowed, n=1)
    where = parent or "the root config"
    hint = f"did you mean {parent + '.' if parent else ''}{near[0]}?" if near else "remove it"
    return ConfigError(f"{key} is not a key of {where} ({hint}); keys: {', '.join(allowed) or '(none)'}")


def Int(low=None, *, high=None, null=False, example="") -> Value:  # noqa: N802  (spec constructors read like types)
    return Value("int", low=low, high=high, null=null, example=example)


def Float(low=None, *, high=None, low_open=False, high_open=False, null=False, example="") -> Value:  # noqa: N802
    return Value("float", low=low, high=high, low_open=low_open, high_open=high_open, null=null, example=example)


def Choice(*choices, example="") -> Value:  # noqa: N802
    return Value("str", choices=tuple(choices), null=None in choices, example=example)


BOOL = Value("bool")
STR = Value("str")
PATH = Value("path", null=True)
FRACTION = Float(0, high=1, high_open=True, null=True, example="0.5")
EPS = Float(0, example="0.03137")
STEPS = Int(1, example="10")
SIZE = Int(1, example="64")
SEED = Int(null=True, example="0")

# ---- groups without a _target_ -------------------------------------------------------------------
SCHEDULE = {"name": Choice(*SCHEDULES), "milestones": Value("list", item=Int(0)), "gamma": Float(0),
            "warmup": Float(0, high=1, high_open=True, example="0.1")}  # warmup: linear only, fraction of all steps
SHARPNESS = {"method": Choice("none", "sam", "asam", "adasap"), "rho": Float(0, low_open=True, example="0.05"),
             "eta": Float(0, example="0.01"), "rho_min": Float(0, low_open=True, example="0.01"),
             "rho_max": Float(0, low_open=True, example="2.0"), "importance": Choice("l2", "taylor"), "normalize": Choice("global", "neuron"),
             "clip_grad_norm": Float(0, low_open=True, null=True, example="1.0")}  # rho_min <= rho_max: robprune.train.sharpness
TRAIN = {"epochs": Int(0, example="2"), "objective": TARGET, "optimizer": TARGET, "schedule": SCHEDULE,
         "sharpness": SHARPNESS, "clip_grad_norm": Float(0, low_open=True, null=True, example="1.0")}
QUANT = {"method": ANY, "bits": ANY, "per_channel": ANY, "observer": ANY, "ema_decay": ANY, "freeze_ranges": ANY,
         "calibration": {"n_examples": Int(1, null=True, example="1024"), "batch_size": SIZE}, "train": TRAIN}
DATA = {"root": PATH, "download": BOOL, "batch_size": Int(1, example="128"), "cache_dir": PATH}
LATENCY = {"batch_size": SIZE, "repeats": Int(1, example="20"), "warmup": Int(0, example="3")}
CORRUPTIONS = {"source": Choice(*SOURCES), "root": PATH, "frost_textures": PATH,
               "names": Value("list", item=STR, example="[fog,snow]"), "severities": Value("list", item=Int(), example="[1,2,3,4,5]"),
               "n_examples": Int(1, null=True, example="1000")}  # names, severities, root: robprune.corruptions.check_node
EVAL = {"attacks": MapOf(TARGET), "n_examples": MapOf(Int(1, null=True, example="200")), "batch_size": Int(1, example="256"),
        "large_eps_check": BOOL, "large_eps_n": Int(1, example="100"), "latency": LATENCY, "corruptions": CORRUPTIONS,
        "max_length": Int(2, example="64")}  # max_length: text evaluation (tokens per attacked sentence)
DATASET = {"name": STR, "root": PATH, "download": BOOL, "train_split": STR, "test_split": STR,
           "num_classes": Int(1, null=True, example="10"), "mean": Value("list", item=Float(0, high=1)),
           "std": Value("list", item=Float(0, low_open=True)), "eps": EPS, "eps_l2": Float(0, example="0.5"),
           "augment": {"crop_padding": Int(0, example="4"), "hflip": BOOL}}
FILELESS = ("digits", "synthetic")  # datasets that need no dataset.root folder
TEXT_DATASET = {"modality": Choice("text"), "max_length": Int(2, example="64"), "tokenizer": Value("str", null=True, example="minilm-l6"),
                "heldout_split": Value("str", null=True, example="'train[8000:8500]'")}
DATASET_EXTRA = {  # keys only some datasets read (conf/dataset/<name>.yaml)
    "sst2": TEXT_DATASET, "imdb": TEXT_DATASET, "ag_news": TEXT_DATASET,
    "imagefolder": {"channels": Choice(1, 3, example="3"), "image_size": Int(1, null=True, example="32"),
                    "mean": Value("list", item=Float(0, high=1), null=True), "std": Value("list", item=Float(0, low_open=True), null=True)},
    "synthetic": {"num_train": Int(1, example="1024"), "num_test": Int(1, example="256"), "channels": Int(1, example="3"),
                  "image_size": Int(1, example="32"), "seed": Int(example="0")},
}
# greedy weight averaging (robprune.stages.average): ingredient recipes merged over `train`, the scoring attack
INGREDIENT = {"epochs": Int(0, example="2"), "objective": ANY, "optimizer": ANY, "schedule": ANY,  # merged over train, then checked as a train node
              "clip_grad_norm": Float(0, low_open=True, null=True, example="1.0"), "seed": Int(example="1")}
AVERAGE = {"ingredients": MapOf(INGREDIENT), "attack": TARGET, "n_score": Int(1, example="100"), "batch_size": SIZE}
TRAINER = {"devices": Int(1, example="2"), "precision": Choice("fp32", "bf16"), "channels_last": BOOL, "compile": BOOL,
           "sync_batchnorm": BOOL}  # devices against the machine: robprune.train.trainer.resolve
LOGGER = {"tensorboard": BOOL, "mlflow": ANY}  # mlflow: null or {tracking_uri, experiment}: robprune.tracking.check_logger
ROOT = {"dataset": DATASET, "model": TARGET, "train": TRAIN, "prune": TARGET, "quant": QUANT, "finetune": TRAIN,
        "eval": EVAL, "data": DATA, "seed": Int(example="0"), "train_seed": Int(example="0"), "device": ANY,
        "cache": BOOL, "cache_dir": Value("path", example="outputs/cache"), "quiet": Choice(False, True, 0, 1),
        "threads": Int(1, null=True, example="2"), "eval_out": PATH, "average": AVERAGE, "logger": LOGGER, "trainer": TRAINER}
REQUIRED = {"": tuple(k for k in ROOT if k not in ("average", "logger", "trainer")), "average": ("ingredients", "attack", "n_score", "batch_size"), "data": tuple(DATA), "train": ("epochs",), "finetune": ("epochs",),
            "eval": ("attacks", "batch_size", "latency"), "dataset": ("name", "train_split", "test_split"),
            "quant": ("method",)}

# ---- typed parameters of _target_ callables (unknown keys come from their signatures) --------------
PGD = {"eps": EPS, "steps": STEPS, "step_size": Float(0, null=True, example="0.01"), "norm": Choice(*NORMS),
       "random_start": Choice(*STARTS), "init_std": Float(0, example="0.001"), "restarts": Int(1), "early_stop": BOOL,
       "loss": Choice(*LOSSES), "compat": Choice(*COMPAT)}
AUTOATTACK = {"eps": EPS, "norm": Choice(*AA_NORMS), "version": Choice(*AA_VERSIONS),
              "attacks": Value("list", null=True, item=Choice(*AA_ATTACKS), example="[apgd-ce,square]"), "seed": SEED,
              "batch_size": SIZE, "n_iter": Int(1, null=True, example="100"), "n_queries": Int(1, null=True, example="5000")}
RAMP = {"eps_ramp_epochs": Float(0, example="0"), "adv_ratio": Float(0, high=1, low_open=True, example="1.0"),
        "beta": Float(0, example="6.0")}
PRUNE = {"method": STR, "criterion": Choice(*CRITERIA), "allocation": Choice(*ALLOCATIONS),
         "sparsity": FRACTION, "channel_ratio": FRACTION, "ratio_semantics": Choice(None, *RATIO_SEMANTICS),
         "normalization": Choice(*NORMALIZATIONS), "r_max": Float(0, high=1, high_open=True, example="0.95"),
         "min_channels": Int(1), "exclude_stem": BOOL, "exclude_linear": BOOL, "scores": TARGET,
         # allocation mrs (methods.md §2 step 4); r_min <= r_max, r_max_small is checked by ChannelPruning.check_mrs
         "rule": Choice(*RULES), "lam": Float(0, example="0.4"), "r_min": Float(0, high=1, high_open=True, example="0"),
         "r_max_small": Float(0, high=1, high_open=True, example="0.5"),
         "small_fraction": Float(0, high=1, high_open=True, example="0.02"),
         "score_floor": Float(0, high=1, low_open=True, example="0.1")}
SCORES = {"n_images": Int(1, example="1024"), "batch_size": SIZE, "seed": SEED, "attack": TARGET,
          "perturbation": Choice(*PERTURBATIONS), "alpha": Float(0, low_open=True, example="0.2"), "draws": Int(1),
          "steps": STEPS, "damage_check": BOOL, "damage_seeds": Value("list", item=Int(), example="[0,1,2]")}
OPTIMIZER = {"lr": Float(0, low_open=True, example="0.001"), "momentum": Float(0, example="0.9"),
             "weight_decay": Float(0, example="0.0005")}
MODEL = {"width": Int(1, example="32"), "hidden": Int(1, example="128"), "width_mult": Float(0, low_open=True, example="1.0")}
DROP = Float(0, high=1, high_open=True, null=True, example="0.1")
TIMM = {"name": Value("str", example="resnet18"), "pretrained": BOOL, "stem": Choice(*STEMS), "drop_rate": DROP,
        "drop_path_rate": DROP}  # model.name itself is checked against timm's registry by robprune.validate
# prune=adasap (robprune.prune.channel.gradual): channel options plus the training it prunes during
DURING_TRAINING = {**TRAIN, "prune_interval": Int(1, example="50"), "prune_steps": Int(1, example="10")}
ADASAP = {k: PRUNE[k] for k in ("method", "sparsity", "r_max", "min_channels", "exclude_stem", "exclude_linear")}
ADASAP.update(criterion=Choice("l2", "taylor"), during_training=DURING_TRAINING)
# layer-wise language-model pruners (robprune.prune.layerwise.methods); calibration: the calib stage's node
LM_PRUNE = {"method": STR, "sparsity": FRACTION, "n_m": Value("str", null=True, example="2:4"),
            "rel_damp": Float(0, low_open=True, example="0.01"), "percdamp": Float(0, low_open=True, example="0.01"),
            "blocksize": Int(1, example="128"), "batch_size": SIZE, "scope": Choice("layer", "global"),
            "refit_head": BOOL, "calibration": {"n": Int(1, example="512"), "heldout": Int(0, example="64")}}
TARGET_PARAMS = {
    "robprune.attacks.pgd": PGD, "robprune.attacks.fgsm": {"eps": EPS, "norm": Choice("linf", "l2")},
    "robprune.attacks.autoattack": AUTOATTACK,
    "robprune.train.objectives.pgd_at": {**RAMP, "attack": TARGET},
    "robprune.train.objectives.mart": {**RAMP, "attack": TARGET},
    "robprune.train.objectives.trades": {**RAMP, "eps": EPS, "steps": STEPS, "step_size": PGD["step_size"], "norm": Choice("linf", "l2")},
    "robprune.prune.global_magnitude": {**PRUNE, "ratio_semantics": Choice("params")},
    "robprune.prune.channel.sensitivity.mrs_scores": SCORES, "robprune.prune.channel.sensitivity.calibration_set": SCORES,
    "robprune.models.timm_model": TIMM,
    "robprune.prune.adasap": ADASAP,
    **{f"robprune.prune.layerwise.methods.{name}": LM_PRUNE for name in ("kr_obs", "sparsegpt", "magnitude")},
}
PREFIX_PARAMS = {"torch.optim.": OPTIMIZER, "robprune.models.": MODEL, "robprune.prune.": PRUNE}
# callables taking **options: their keys, explicitly (robprune.prune.channel.methods.ChannelPruning's fields + scores)
CHANNEL_KEYS = tuple(k for k in PRUNE)
CHANNEL_TARGETS = tuple(f"robprune.prune.{name}" for name in ("channel_pruning", "l1_filter", "mrpf"))
EXPLICIT_KEYS = dict.fromkeys(CHANNEL_TARGETS, CHANNEL_KEYS)
EXPLICIT_KEYS.update({  # the layer-wise pruners: their parameters plus the calib stage's node
    "robprune.prune.layerwise.methods.kr_obs": ("method", "sparsity", "n_m", "rel_damp", "batch_size", "refit_head",
                                         "calibration"),
    "robprune.prune.layerwise.methods.sparsegpt": ("method", "sparsity", "n_m", "percdamp", "blocksize", "batch_size", "calibration"),
    "robprune.prune.layerwise.methods.magnitude": ("method", "sparsity", "n_m", "scope", "calibration")})


def params_of(target: str) -> dict:
    """{key: spec} of the typed parameters of a ``_target_`` (empty when none are declared)."""
    if target in TARGET_PARAMS:
        return TARGET_PARAMS[target]
    return next((spec for prefix, spec in PREFIX_PARAMS.items() if target.startswith(prefix)), {})
