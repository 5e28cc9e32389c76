"""Compose configs outside ``hydra.main`` (validation before a run or sweep starts, re-evaluation, tests)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, OmegaConf, open_dict

from robprune.config import config_dir
from robprune.errors import ConfigError
from robprune.schema import unknown_key


def compose(overrides: Iterable[str] = (), *, with_hydra: bool = False) -> DictConfig:
    """The root config with ``overrides`` applied (Hydra syntax), without the ``hydra`` node unless
    ``with_hydra`` (then its sweeper params can be read; nothing in it is resolved).

    Composition errors become one-line ConfigErrors (unknown option, unknown key, override syntax).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    from robprune.declarations import store_declarations

    store_declarations()
    overrides = list(overrides)
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = hydra_compose("config", overrides=overrides, return_hydra_config=with_hydra)
    except MissingConfigException as err:
        raise ConfigError(_missing_option(err)) from None
    except OverrideParseException as err:
        raise ConfigError(_parse_error(OverridesParser.create(), overrides, err)) from None
    except ConfigCompositionException as err:
        raise ConfigError(_composition_error(err, overrides)) from None
    except ValueError as err:  # Hydra's own check of a group override's value ('eval=3'), raised as a plain ValueError
        if "Config group override must be" not in str(err):
            raise
        raise ConfigError(_group_value_error(OverridesParser.create(), overrides)) from None
    if not with_hydra:
        with open_dict(cfg):
            cfg.pop("hydra", None)
    return cfg


# taken from a saved run's config.yaml unless overridden: what the model is and was made with (the recipes do not
# change an evaluation or an export, but the config written beside it must describe the model, and fit its modality)
FROM_RUN = ("dataset", "data", "model", "seed", "train", "average", "prune", "quant", "finetune")


def compose_saved(ckpt_dir: Path, overrides: list[str], sections: tuple[str, ...] = FROM_RUN) -> DictConfig:
    """The root config with ``overrides`` whose ``sections`` come from ``ckpt_dir/config.yaml`` (a run
    directory's resolved config) unless an override names them; just ``compose(overrides)`` for a
    checkpoint without one (``robprune eval`` and ``robprune export``)."""
    from robprune.results import load_run_config

    cfg = compose(overrides)
    if (Path(ckpt_dir) / "config.yaml").exists():
        saved = load_run_config(ckpt_dir)  # checked against the run's metrics.json: a damaged config is refused
        with open_dict(cfg):
            for section in sections:
                if section in saved and not any(o.lstrip("+~").startswith(section) for o in overrides):
                    cfg[section] = saved[section]
                elif section == "average" and section in cfg and section not in saved:
                    del cfg[section]  # a run without weight averaging: none in its evaluation's config either
    return cfg


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _group_value_error(parser, overrides: list[str]) -> str:
    """'eval=3 is not an option of eval; pick one of: ...' for a group override whose value Hydra parsed as a
    number, a bool or a mapping instead of an option's name."""
    for text in overrides:
        override = parser.parse_overrides([text])[0]
        group = override.key_or_group.split("@")[0]
        folder = config_dir() / group
        if folder.is_dir() and not isinstance(override.value(), (str, list)):
            options = sorted(p.stem for p in folder.glob("*.yaml"))
            return (f"{override.key_or_group}={override.get_value_element_as_str()} is not an option of {group}; "
                    f"pick one of: {', '.join(options)}")
    return "a config group override names no option (a number or a mapping instead of a name); check the overrides against conf/"


def _composition_error(err, overrides: list[str]) -> str:
    """'train.epoch is not a key of train (did you mean train.epochs?); keys: ...' for a key Hydra's
    struct mode refused; Hydra's first line (and its cause) otherwise."""
    cause = err.__cause__
    full_key = re.search(r"full_key: (\S+)", str(cause or ""))
    if full_key and "not in struct" in str(cause):
        key = full_key.group(1)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        rest = [o for o in overrides if not _touches(o, key)]
        keys = _keys_at(parent, rest)
        if keys is not None and key.rsplit(".", 1)[-1] in keys:  # the key exists: an ancestor is an interpolation
            return _interpolated_ancestor(key, rest) or str(unknown_key(key, parent, keys)).split(": ", 1)[1]
        if keys is not None:
            return str(unknown_key(key, parent, keys)).split(": ", 1)[1]
    twice = re.search(r"Multiple values for (\S+?)\.? To override|(\S+) appears more than once in the final defaults", str(err))
    group = twice and (twice.group(1) or twice.group(2))
    added = [o for o in overrides if group and o.startswith(f"+{group}=")]
    if added:  # '+compress=qat' where an experiment already picks compress
        return (f"{group} is already chosen by the experiment or the root config, so {added[0]} adds it a second time; "
                f"pick its option without the '+': {added[0][1:]}")
    there = re.search(r"Could not append to config\. An item is already at '([^']+)'", str(err))
    added = [o for o in overrides if there and o.startswith(f"+{there.group(1)}=")]
    if added:  # '+key=value' for a key the config already has
        return f"{there.group(1)} is already in the config, so {added[0]} cannot add it; set it without the '+': {added[0][1:]}"
    extra = f" ({_first_line(cause)})" if cause else ""
    return f"{_first_line(err)}{extra}; check the key and value against conf/"


def _interpolated_ancestor(key: str, overrides: list[str]) -> str | None:
    """'prune.during_training.objective is ${oc.select:train.objective,null}: ...' when an ancestor of ``key``
    is an interpolation, whose keys an override cannot set (Hydra refuses them as not in struct)."""
    try:
        cfg = compose(overrides)
    except ConfigError:
        return None
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent, leaf = ".".join(parts[:i - 1]), parts[i - 1]
        node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False) if parent else cfg
        if isinstance(node, DictConfig) and leaf in node and OmegaConf.is_interpolation(node, leaf):
            path = f"{parent}.{leaf}" if parent else leaf
            raw = node._get_node(leaf)._value()
            return (f"{key} cannot be set: {path} is the interpolation {raw}; set the key where it points, or "
                    f"replace {path} as a whole (e.g. {path}={{...}})")
    return None


def _touches(override: str, key: str) -> bool:
    name = override.lstrip("+~").split("=", 1)[0]
    return name == key or name.startswith(key + ".")


def _keys_at(path: str, overrides: list[str]) -> list[str] | None:
    """Keys of the node at ``path`` in the config composed from ``overrides`` (None if that fails)."""
    try:
        cfg = compose(overrides)
    except ConfigError:
        return None
    node = OmegaConf.select(cfg, path, throw_on_resolution_failure=False) if path else cfg
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else None


def _missing_option(err) -> str:
    missing = getattr(err, "missing_cfg_file", "") or ""
    options = getattr(err, "options", None) or []
    if "/" in missing:
        group, option = missing.rsplit("/", 1)
        import difflib

        options = sorted(options)
        near = (difflib.get_close_matches(option, options, n=1) or options[:1] or ["<option>"])[0]
        return f"unknown option {group}={option}; available in '{group}': {', '.join(options) or '(none)'}; e.g. {group}={near}"
    return str(err).strip().splitlines()[0]


def expand_overrides(overrides: list[str]) -> list[list[str]]:
    """One override list per value of every sweep (others at their first value): enough to check each value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except OverrideParseException as err:
        raise ConfigError(_parse_error(parser, overrides, err)) from None
    choices = []
    for ov in parsed:
        if ov.is_sweep_override():
            key = ov.get_key_element()
            choices.append([f"{key}={v}" for v in ov.sweep_string_iterator()])
        else:
            choices.append([ov.input_line])
    firsts = [c[0] for c in choices]
    lists = [firsts]
    for i, values in enumerate(choices):
        lists += [firsts[:i] + [v] + firsts[i + 1:] for v in values[1:]]
    return lists if lists else [[]]


def _parse_error(parser, overrides: list[str], err) -> str:
    """'cannot parse seed=[1 (...)' naming the first override Hydra's grammar refuses."""
    from hydra.errors import OverrideParseException

    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as one:
            key = override.lstrip("+~").split("=", 1)[0]
            return (f"cannot parse {override} ({_first_line(one)}); quote values with brackets, commas or spaces, "
                    f"e.g. {key}='<value>'")
    return _first_line(err)


def check_overrides(overrides: list[str]) -> None:
    """Compose and validate every value of the command line before Hydra starts any job, including
    the grid an experiment declares under ``hydra.sweeper.params`` (what ``-m`` would run)."""
    from robprune.validate import validate

    overrides = [o for o in overrides if not o.startswith("hydra.")]
    combos = expand_overrides(overrides)
    first = compose(combos[0], with_hydra=True)
    axes = sweeper_overrides(first, overrides)
    if axes:
        combos = expand_overrides(overrides + axes)
    with open_dict(first):
        first.pop("hydra", None)
    fit_experiment(first, combos[0])
    for combo in combos[1:]:
        fit_experiment(compose(combo), combo)


def fit_experiment(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """Validate ``cfg``, first fitting an experiment's settings to the group options the command line swapped in.

    An experiment's file sets keys for the options it composes: TRADES' ``finetune.objective.beta``, PGD-AT's
    ``train.objective.eps_ramp_epochs``, its attacks' steps under ``eval.attacks``. When the command line replaces
    such an option (``+experiment=mrpf_cifar10 finetune=pgd_at``), a key of the experiment's that the new option
    does not take is dropped, and one it cannot run with (``finetune.epochs`` with ``finetune=none``) gets the new
    option's own value. Each change is returned as a one-line note, which the run logs and records in
    metrics.json's ``warnings``. A key the command line sets itself is never changed: its error stands, as does
    every other error (docs/concepts/how-a-run-works.md#swapping-an-option-of-an-experiment).
    """
    from robprune.validate import validate

    experiment = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").split("=", 1)[0] == "experiment"), None)
    swapped = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides
               if "=" in o and not o.startswith(("+", "~")) and "." not in o.split("=", 1)[0]
               and (config_dir() / o.split("=", 1)[0]).is_dir()}
    notes: list[str] = []
    written = OmegaConf.load(config_dir() / "experiment" / f"{experiment}.yaml") if experiment and swapped else None
    alone = None  # the swapped options composed without the experiment: what each key is there
    for _ in range(200):
        try:
            validate(cfg)
            return notes
        except ConfigError as err:
            key = getattr(err, "key", None)
            group = str(key).split(".", 1)[0]
            if (written is None or key is None or group not in swapped or any(_touches(o, key) for o in overrides)
                    or not _written(written, key)):
                raise
            if alone is None:
                alone = compose([f"{g}={o}" for g, o in swapped.items()])
            parent, leaf = key.rsplit(".", 1) if "." in key else ("", key)
            node = OmegaConf.select(cfg, parent) if parent else cfg
            there = OmegaConf.select(alone, key, default=_ABSENT, throw_on_resolution_failure=False)
            with open_dict(node):
                if there is _ABSENT:
                    del node[leaf]
                    notes.append(f"{key} (set by experiment {experiment}) dropped: {group}={swapped[group]} does not take it")
                elif node[leaf] != there:
                    node[leaf] = there
                    notes.append(f"{key} (set by experiment {experiment}) reset to {there}, the value of "
                                 f"{group}={swapped[group]}")
                else:
                    raise
    raise ConfigError(f"{experiment}: too many settings of the experiment do not fit the options swapped in; "
                      f"pick options the experiment lists")


_ABSENT = object()


def _written(node, key: str) -> bool:
    """Whether a config file's node sets ``key`` (a dotted path), its values unresolved."""
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node._get_node(part)
    return True


def sweeper_overrides(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """``key=v1,v2`` for every axis of ``cfg.hydra.sweeper.params`` that ``overrides`` do not set."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
    given = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    return [f"{k}={v}" for k, v in (params or {}).items() if str(k) not in given]


# Hydra's flags that take a value as the next argument (``--cfg job``, ``-p prune``, ``--info plugins``)
FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--info", "-i", "--config-path", "-cp", "--config-name", "-cn",
                    "--config-dir", "-cd", "--experimental-rerun")


def overrides_of(args: list[str]) -> list[str]:
    """The config overrides of a ``robprune run`` command line: every argument that is not a Hydra flag or
    a flag's value (``--cfg job`` is a flag and its value, ``--cfg=job`` one flag)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in FLAGS_WITH_VALUE
        else:
            out.append(arg)
    return out


__all__ = ["compose", "expand_overrides", "check_overrides", "overrides_of"]
