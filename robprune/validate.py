"""Check a composed config before any work starts, so a wrong value fails in a second with one line
naming the key and the fix, not an hour later deep inside torch.

:func:`validate` is config-only (the CLI runs it on every sweep value before Hydra starts a job);
:func:`check_before_stages` needs the dense model (the pipeline calls it before the first stage).
The schemas live in :mod:`robprune.schema`; this module walks the config against them. The pruning
checks (combinations, reachability on the model) live in :mod:`robprune.validate_prune`.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from robprune import schema
from robprune.config import _check_targets, config_dir
from robprune.corruptions import check_node as check_corruptions
from robprune.errors import ConfigError
from robprune.registry import ATTACKS, DATASETS, MODELS, OBJECTIVES, PRUNERS, locate, target_entry
from robprune.schema import ANY, BOOL, TARGET, MapOf, Value, unknown_key
from robprune.tracking import check_logger
from robprune.validate_prune import check_before_stages, check_prune_combinations, reachable_sparsity

DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
GROUP_ROOTS = ("defaults", "hydra")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid input: a missing ``???``, a ``_target_`` outside the
    allow-list, a key no schema has, a wrong type, range or choice, an impossible combination
    (pruning, attacks, eval subsets, quantisation, splits) or a device that is not there."""
    try:
        missing = OmegaConf.missing_keys(cfg)
    except OmegaConfBaseException:  # a broken interpolation: the walk below names its key
        missing = set()
    if missing:
        key = sorted(missing)[0]
        raise ConfigError(f"{key} is required but not set; pass it on the command line, e.g. {key}=<value>")
    try:
        _check_targets(cfg, "")  # before any target is imported to read its signature
        try:
            check_modality(cfg)  # before the walk: a mismatch (PGD on text) would show as an unresolvable ${dataset.eps}
        except (OmegaConfBaseException, ValueError, TypeError):  # a value it reads does not resolve or has a wrong
            # type (train.epochs=abc): the walk names the key
            check_node(cfg, {**schema.ROOT, **dict.fromkeys(study_nodes(), ANY)}, "")
            check_modality(cfg)
        check_node(cfg, {**schema.ROOT, **dict.fromkeys(study_nodes(), ANY)}, "")
        check_device(cfg.device)
        check_trainer(cfg)
        check_combinations(cfg)
        check_logger(cfg.get("logger"))  # logger=mlflow without the package
        OmegaConf.to_container(cfg, resolve=True)  # what the run writes as config.yaml at its end: resolvable now
    except OmegaConfBaseException as err:  # a value no check above reads by its key (a study's knob): still one line
        key = getattr(err, "full_key", None) or "a key"
        raise ConfigError(f"{key}: cannot resolve its value ({type(err).__name__}: {_first_line(err)}); set it on "
                          "the command line", key=None) from None


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else ""


def check_trainer(cfg: DictConfig) -> None:
    """trainer.devices against this machine, bf16 on a GPU without it, objectives DDP cannot average
    (robprune.train.trainer); GPU-only options on a CPU only fall back (the run logs a note)."""
    import torch

    from robprune.train.trainer import check_objective, resolve

    name = str(cfg.device)
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)
    trainer = resolve(cfg.get("trainer"), device)
    for key in ("train", "finetune"):
        if cfg.get(key) is not None:
            check_objective(cfg[key], key, trainer)
    during = (cfg.get("prune") or {}).get("during_training")
    if during is not None:
        check_objective(during, "prune.during_training", trainer)
    ingredients = (cfg.get("average") or {}).get("ingredients") or {}
    for name, entry in ingredients.items():  # a weight-average ingredient's recipe over train
        if isinstance(entry, DictConfig) and entry.get("objective") is not None:
            check_objective(entry, f"average.ingredients.{name}", trainer)


@functools.lru_cache(maxsize=1)
def study_nodes() -> tuple[str, ...]:
    """Root keys that experiment and compress files define beyond the groups (``adverfine``): a study's
    knobs, read through interpolations; their content is the study's business."""
    import yaml

    keys = set()
    for folder in ("experiment", "compress"):
        for path in sorted((config_dir() / folder).glob("*.yaml")):
            keys |= set(yaml.safe_load(path.read_text()) or {})
    return tuple(sorted(keys - set(schema.ROOT) - set(GROUP_ROOTS)))


def value_at(node: DictConfig, key, path: str):
    """node[key], with a missing or unresolvable value as a ConfigError naming ``path``."""
    try:
        return node[key]
    except MissingMandatoryValue:
        raise ConfigError(f"{path} is required but not set; pass it on the command line, e.g. {path}=<value>") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: cannot resolve its value ({type(err).__name__}: {str(err).splitlines()[0]}); "
                          f"set {path} on the command line") from None


def check_node(node, spec: dict, path: str) -> None:
    """Every key of ``node`` is in ``spec`` and its value fits its spec."""
    if not isinstance(node, DictConfig):
        is_group = "." not in path and (config_dir() / path).is_dir()  # conf/<path>/ holds its options
        fix = (f"pick an option of its group, e.g. {path}=<option>" if is_group or not spec
               else f"set its keys instead, e.g. {path}.{next(iter(spec))}=<value>")
        raise ConfigError(f"{path} must be a group of keys, got {node!r}; {fix}", key=path)
    if path == "dataset":
        name = value_at(node, "name", "dataset.name") if "name" in node else None
        if name is not None and str(name) not in DATASETS:  # the keys it may hold depend on it: say this first
            near = difflib.get_close_matches(str(name), list(DATASETS.names()), n=1)
            raise ConfigError(f"dataset.name={name} is not a dataset robprune knows{f' (did you mean {near[0]}?)' if near else ''}; "
                              f"pick one with dataset=<option>: {', '.join(DATASETS.names())}", key="dataset.name")
        spec = {**spec, **schema.dataset_keys(str(name))}
    for key in schema.REQUIRED.get(path, ()):
        if key not in node:
            raise ConfigError(f"{path + '.' if path else ''}{key} is not set (removed with ~?); put it back, "
                              f"e.g. {path + '.' if path else ''}{key}=<value>, or pick an option of the group")
    # leaves first: a bad seed=abc is reported as seed, not as an attack seed interpolating it
    for key in sorted(node.keys(), key=lambda k: OmegaConf.is_config(node._get_node(k))):
        child = f"{path}.{key}" if path else str(key)
        if key not in spec:
            raise unknown_key(child, path, spec)
        check_spec(spec[key], value_at(node, key, child), child)


def check_spec(spec, value, path: str) -> None:
    if spec == ANY:
        return
    if callable(spec) and not isinstance(spec, (Value, MapOf)):  # a check of its own (text attacks' options)
        spec(value, path)
        return
    if spec == TARGET:
        check_target(value, path)
    elif isinstance(spec, MapOf):
        if not isinstance(value, DictConfig):
            raise ConfigError(f"{path} must be a group of named entries, got {value!r}; e.g. {path}={{}}")
        for key in value.keys():
            check_spec(spec.item, value_at(value, key, f"{path}.{key}"), f"{path}.{key}")
    elif isinstance(spec, dict):
        check_node(value, spec, path)
    else:
        spec.check(value, path)


def check_target(node, path: str) -> None:
    """A node built by ``instantiate``: its keys are parameters of the callable, typed where declared."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"{path} must be a node with a _target_ (built from a function), got {node!r}; "
                          f"pick an option of its group instead", key=path)
    target = str(node._target_)
    allowed, typed = allowed_keys(target, path), schema.params_of(target)
    for key in node.keys():
        child = f"{path}.{key}"
        if allowed is not None and key not in allowed:
            raise unknown_key(child, path, allowed)
        value = value_at(node, key, child)
        if key in ("_partial_", "_recursive_"):
            BOOL.check(value, child)
        elif key in typed:
            check_spec(typed[key], value, child)
        elif isinstance(value, DictConfig) and "_target_" in value:
            check_target(value, child)
    check_attack(node, path, target)


@functools.lru_cache(maxsize=None)
def _signature_keys(target: str) -> frozenset | None:
    """Parameter names a config may bind: not *args, not positional ones without a default (the
    runtime arguments such as model, x, y or params); None when the callable takes **kwargs."""
    params = inspect.signature(locate(target)).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    runtime = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return frozenset(p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL
                     and not (p.kind in runtime and p.default is inspect.Parameter.empty))


def allowed_keys(target: str, path: str) -> frozenset | None:
    """Keys a node with this ``_target_`` may hold: its declared options (and the nodes its registration
    carries), else its signature's; None = anything (a callable taking **kwargs, undeclared)."""
    explicit = schema.explicit_keys(target)
    if explicit is not None:
        return frozenset(explicit) | frozenset(schema.HYDRA_KEYS)
    try:
        keys = _signature_keys(target)
    except (ImportError, AttributeError, TypeError, ValueError) as err:
        raise ConfigError(f"{path}._target_={target!r} cannot be imported ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); check its spelling or pick an option "
                          f"of '{path.split('.')[0]}'") from None
    return None if keys is None else keys | frozenset(schema.node_keys(target)) | frozenset(schema.HYDRA_KEYS)


def check_attack(node: DictConfig, path: str, target: str) -> None:
    """Combinations inside one attack node; a text attack checks its own parameters (budgets > 0, ...)."""
    if is_text_attack(node):
        params = {k: value_at(node, k, f"{path}.{k}") for k in node.keys() if k not in schema.HYDRA_KEYS}
        locate(target).check_params(where=path, **OmegaConf.to_container(OmegaConf.create(params), resolve=True))
    from robprune.attacks import autoattack, pgd
    from robprune.attacks.autoattack import AA_ATTACKS

    obj = locate(target)
    if obj is autoattack and node.get("version") == "custom" and not node.get("attacks"):
        raise ConfigError(f"{path}.version=custom needs {path}.attacks, a list from {', '.join(AA_ATTACKS)}; "
                          f"e.g. {path}.attacks=[apgd-ce,square]")
    if obj is pgd and node.get("step_scale") is not None and node.get("step_size") is not None:
        raise ConfigError(f"{path}.step_size={node.step_size} and {path}.step_scale={node.step_scale} are both set; keep "
                          f"one (step_scale: the step in multiples of eps), e.g. {path}.step_size=null")
    if obj is pgd and node.get("compat") == "adverfine" and node.get("norm", "linf") != "linf":
        raise ConfigError(f"{path}.compat=adverfine reproduces an L∞ attack only, but {path}.norm={node.norm}; "
                          f"set {path}.norm=linf or {path}.compat=null")


def check_device(value) -> None:
    """device: auto | cpu | cuda | cuda:N | mps, and the device must be present on this machine."""
    if not isinstance(value, str) or not DEVICE.match(value):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {value!r}; e.g. device=auto")
    import torch

    if value.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= count:
            seen = "no CUDA GPU is visible" if count == 0 else f"only cuda:0..cuda:{count - 1} are visible"
            raise ConfigError(f"device={value} but {seen} on this machine; use device=auto or device=cpu")
    if value == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but Apple's MPS backend is not available on this machine; use device=auto or device=cpu")


def check_combinations(cfg: DictConfig) -> None:
    """Checks across keys, and the ones other modules own (pruning, quantisation, splits)."""
    from robprune.data import parse_split
    from robprune.prune import check_prune_config
    from robprune.quant import spec_from_config

    for key in ("train", "finetune"):
        check_recipe(cfg[key], key)
        check_fast_options(cfg[key], key, cfg.dataset)
    if cfg.prune.get("during_training") is not None:
        check_recipe(cfg.prune.during_training, "prune.during_training")
        check_fast_options(cfg.prune.during_training, "prune.during_training", cfg.dataset)
    if cfg.quant.get("method") == "qat" and "train" in cfg.quant:
        check_recipe(cfg.quant.train, "quant.train")
    check_eval_subsets(cfg.eval)
    if cfg.get("average") is not None:
        check_average(cfg)
    if cfg.eval.get("corruptions") is not None:
        check_corruptions(cfg.eval.corruptions)
    check_model(cfg.model)
    check_prune_combinations(cfg.prune)
    check_prune_config(cfg.prune)
    spec_from_config(cfg.get("quant"))
    for key in ("train_split", "test_split"):
        check_split_not_empty(str(cfg.dataset[key]), parse_split(str(cfg.dataset[key]), key=f"dataset.{key}")[1], key)
    check_data_root(cfg.dataset)


def check_average(cfg: DictConfig) -> None:
    """Greedy weight averaging: text data with a held-out part, at least one ingredient, each ingredient's
    recipe (train merged with its entries) a valid train node, a text attack to score them."""
    from robprune.train.recipe import merge_recipe

    node = cfg.average
    if str(cfg.dataset.get("modality", "image")) != "text":
        raise ConfigError("average scores its ingredients under a text attack; use it with a text dataset "
                          "(e.g. +experiment=kr_sst2), or remove average")
    if not node.ingredients:
        raise ConfigError("average.ingredients is empty (K = 0); list at least one, e.g. "
                          "average.ingredients={lr3e5: {optimizer: {lr: 3.0e-5}}}")
    if cfg.dataset.get("heldout_split") is None:
        raise ConfigError("average needs held-out training sentences to score the ingredients; set "
                          "dataset.heldout_split, e.g. dataset.heldout_split='train[8000:8500]'")
    for name in node.ingredients:
        entry = OmegaConf.to_container(node.ingredients[name], resolve=True)
        merged = merge_recipe(cfg.train, {k: v for k, v in entry.items() if k != "seed"})
        check_node(merged, schema.TRAIN, f"average.ingredients.{name}")
        check_recipe(merged, f"average.ingredients.{name}")
    if not is_text_attack(node.attack):
        raise ConfigError(f"average.attack ({node.attack.get('_target_')}) must be a text attack; e.g. "
                          "override /attack@average.attack: textfooler")


def check_model(node: DictConfig) -> None:
    """A model's own checks of its node (its registration's ``check`` hook: a timm name in timm's registry, a
    RobustBench zoo name, threat and dataset), before any work; each imports its package only then."""
    entry = target_entry(MODELS, node.get("_target_"))
    hook = entry.meta.get("check") if entry is not None else None
    if hook is not None:
        hook(OmegaConf.to_container(node, resolve=True))


def modality_of(registry, node, default: str = "image") -> tuple[str, ...]:
    """The modalities a registered thing takes (``meta['modality']``, one or several)."""
    entry = target_entry(registry, node.get("_target_") if isinstance(node, DictConfig) else None)
    value = entry.meta.get("modality", default) if entry is not None else default
    return value if isinstance(value, tuple) else (value,)


def is_text_attack(node) -> bool:
    return "text" in modality_of(ATTACKS, node)


def check_modality(cfg: DictConfig) -> None:
    """Model, attacks, objectives, pruning and quantisation must fit the data's modality (images or
    text): e.g. PGD on SST-2, a CNN on SST-2 or TextFooler on MNIST is one line before any work. What
    each registered thing takes is its registration's ``modality`` (robprune.registry)."""
    text = str(cfg.dataset.get("modality", "image")) == "text"
    kind = "text" if text else "image"
    data_name = f"dataset={cfg.dataset.name} ({kind})"
    if kind not in modality_of(MODELS, cfg.model):
        fix = " or ".join(f"model={n}" for n in MODELS.names(modality=kind)) if text else "an image model, e.g. model=cnn8"
        raise ConfigError(f"model._target_={cfg.model.get('_target_')} does not take {kind} inputs but {data_name}; use {fix}")
    for name in (cfg.eval.get("attacks") or {}):
        node = cfg.eval.attacks[name]
        if is_text_attack(node) != text:
            raise ConfigError(f"eval.attacks.{name} ({node.get('_target_', '')}) is {'an image' if text else 'a text'} attack but "
                              f"{data_name}; use eval={'text' if text else 'default'}")
    for key in ("train", "finetune"):
        objective = cfg[key].get("objective")
        if int(cfg[key].get("epochs") or 0) == 0 or objective is None:
            continue
        if kind not in modality_of(OBJECTIVES, objective, default=kind):
            fix = f"{key}=text_finetune or {key}=freelb" if text else f"{key}=standard or {key}=pgd_at"
            raise ConfigError(f"{key}.objective ({objective.get('_target_')}) does not apply to {data_name}; use {fix}")
    if kind not in modality_of(PRUNERS, cfg.prune, default=kind):
        name = cfg.prune.get("method", cfg.prune.get("_target_"))
        if text:
            fix = " or ".join(f"prune={n}" for n in PRUNERS.names(modality="text"))
            raise ConfigError(f"prune={name} prunes image models (channels of convolutions), not a text model; use "
                              f"{fix} with a text dataset")
        raise ConfigError(f"prune={name} prunes transformer text models layer by layer, not {cfg.model.get('_target_')} "
                          f"on {data_name}; use prune=global_magnitude or a channel pruner (prune=l1_filter) for images")
    if text:
        _check_text_compression(cfg)


def _check_text_compression(cfg: DictConfig) -> None:
    from robprune.prune.layerwise.nm import parse_n_m

    parse_n_m(cfg.prune.get("n_m"))  # 'N:M' with 0 < N < M; whether M divides the layers: check_before_stages
    if str(cfg.quant.get("method", "none")) != "none":
        raise ConfigError(f"quant={cfg.quant.method} quantises image models only; use quant=none with a text dataset")
    if cfg.eval.get("corruptions") is not None:
        raise ConfigError("eval.corruptions are image corruptions; remove them (eval=text) for a text dataset")


def check_split_not_empty(spec: str, part, key: str) -> None:
    """A slice whose bounds are of one kind and sign, stop <= start, is empty whatever the split's size."""
    start, stop = part.start, part.stop
    if start is None or stop is None or start.percent != stop.percent or (start.value < 0) != (stop.value < 0):
        return
    if stop.value <= start.value:
        raise ConfigError(f"dataset.{key}={spec!r} selects an empty slice (stop <= start); "
                          f"e.g. dataset.{key}='{spec.split('[')[0]}[:1000]'")


def check_data_root(node: DictConfig) -> None:
    """A dataset read from files, without download, needs its folder to exist."""
    if not schema.reads_files(str(node.name)) or node.get("download"):
        return
    root = node.get("root")
    if root is None or not Path(str(root)).expanduser().is_dir():
        raise ConfigError(f"dataset.root={root} is not a folder (dataset {node.name!r} is read from files); "
                          f"pass data.root=<folder with the {node.name} files>, or data.download=true")


def check_recipe(node: DictConfig, key: str) -> None:
    """A training recipe that runs (epochs > 0) names its objective, optimizer and schedule; its
    sharpness node (SAM / ASAM / AdaSAP) is consistent (rho_min <= rho_max)."""
    from robprune.train.sharpness import check_node as check_sharpness

    if node.get("sharpness") is not None:
        check_sharpness(node.sharpness, f"{key}.sharpness")
    if int(node.get("epochs") or 0) > 0:
        for part in ("objective", "optimizer", "schedule"):
            if part not in node:
                raise ConfigError(f"{key}.{part} is not set but {key}.epochs={node.epochs}; pick a recipe with "
                                  f"{key.split('.')[0]}=pgd_at or {key.split('.')[0]}=standard, or set {key}.epochs=0",
                                  key=f"{key}.epochs")


def check_fast_options(node: DictConfig, key: str, dataset: DictConfig) -> None:
    """The fast recipes' keys (docs/methods/recipes.md#fast-recipes): lookahead and monitor against their
    declarations; alternating flips need images held in memory, the monitor images."""
    from robprune.registry import DATASETS
    from robprune.train.fast import LookaheadOptions, MonitorOptions, options

    options(LookaheadOptions, node.get("lookahead"), f"{key}.lookahead")
    watch = options(MonitorOptions, node.get("monitor"), f"{key}.monitor")
    text = str(dataset.get("modality", "image")) == "text"
    if watch.n_examples > 0 and text:
        raise ConfigError(f"{key}.monitor attacks images (FGSM and PGD) but dataset={dataset.name} is text; "
                          f"set {key}.monitor.n_examples=0")
    if node.get("alternate_flip"):
        name = str(dataset.get("name"))
        streamed = name in DATASETS.names(modality="image") and DATASETS.get(name).storage(dataset) == "stream"
        if text or streamed:
            raise ConfigError(f"{key}.alternate_flip needs images held in memory, but dataset={name} is "
                              f"{'text' if text else 'streamed from disk'}; set {key}.alternate_flip=false")


def check_eval_subsets(node: DictConfig) -> None:
    """An eval.n_examples.<name> that looks like a misspelt attack of eval.attacks is an error.

    A subset size for an attack the eval config does not run is otherwise left alone: an experiment
    sets ``n_examples.autoattack`` and a user who swaps in ``eval=pgd`` keeps it, harmlessly."""
    import difflib

    attacks = list((node.get("attacks") or {}).keys())
    for name in (node.get("n_examples") or {}).keys():
        near = difflib.get_close_matches(str(name), attacks, n=1) if name not in attacks else []
        if near:
            raise ConfigError(f"eval.n_examples.{name} names no attack of eval.attacks (did you mean "
                              f"eval.n_examples.{near[0]}?); attacks: {', '.join(attacks)}")


__all__ = ["validate", "check_before_stages", "reachable_sparsity", "check_device"]
