"""Compose configs outside ``hydra.main`` (validation before a run or sweep starts, re-evaluation, tests)."""
from __future__ import annotations

from typing import Iterable

from omegaconf import DictConfig, open_dict

from robprune.config import config_dir
from robprune.errors import ConfigError


def compose(overrides: Iterable[str] = ()) -> DictConfig:
    """The root config with ``overrides`` applied (Hydra syntax), without the ``hydra`` node.

    Composition errors become one-line ConfigErrors (unknown option, unknown key).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = hydra_compose("config", overrides=list(overrides))
    except MissingConfigException as err:
        raise ConfigError(_missing_option(err)) from None
    except (ConfigCompositionException, OverrideParseException) as err:
        first = str(err).strip().splitlines()[0]
        cause = f" ({str(err.__cause__).splitlines()[0]})" if err.__cause__ else ""
        raise ConfigError(f"{first}{cause}; check the spelling, or prefix the key with + to add a new one") from None
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def _missing_option(err) -> str:
    missing = getattr(err, "missing_cfg_file", "") or ""
    options = getattr(err, "options", None) or []
    if "/" in missing:
        group, option = missing.rsplit("/", 1)
        return (f"unknown option {group}={option}; available in '{group}': {', '.join(sorted(options)) or '(none)'}")
    return str(err).strip().splitlines()[0]


def expand_overrides(overrides: list[str]) -> list[list[str]]:
    """One override list per value of every sweep (others at their first value): enough to check each value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as err:
        raise ConfigError(str(err).strip().splitlines()[0]) from None
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


def check_overrides(overrides: list[str]) -> None:
    """Compose and validate every value of the command line before Hydra starts any job."""
    from robprune.validate import validate

    for combo in expand_overrides([o for o in overrides if not o.startswith("hydra.")]):
        validate(compose(combo))


__all__ = ["compose", "expand_overrides", "check_overrides"]
