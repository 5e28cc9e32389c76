"""Config helpers: where conf/ lives, the one allow-listed ``instantiate``, and value validation.

Every object built from a config goes through :func:`instantiate`, which refuses any ``_target_``
outside :data:`ALLOWED_TARGETS`, so a config file received from someone else cannot make robprune
import and call arbitrary code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from robprune.errors import ConfigError

# Prefixes a ``_target_`` may start with. Extend this (not a second helper) when adding a method.
ALLOWED_TARGETS: tuple[str, ...] = (
    "robprune.",
    "torch.optim.",
)


def config_dir() -> Path:
    """conf/ inside the installed wheel, else the repository's top-level conf/."""
    packaged = Path(__file__).parent / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "conf"


def _check_targets(node: Any, path: str) -> None:
    if isinstance(node, DictConfig):
        target = node.get("_target_") if "_target_" in node else None
        if target is not None and not any(str(target).startswith(p) for p in ALLOWED_TARGETS):
            group = (path or "_target_").split(".")[0]
            raise ConfigError(
                f"{path}._target_ = {target!r} is not allowed: targets must start with one of "
                f"{', '.join(ALLOWED_TARGETS)}; use one of robprune's own (pick an option of '{group}'), "
                f"or add the prefix to robprune.config.ALLOWED_TARGETS if you trust it"
            )
        for key in node.keys():
            _check_targets(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            _check_targets(node._get_node(i), f"{path}[{i}]")


def instantiate(cfg: DictConfig, path: str, **kwargs: Any) -> Any:
    """hydra.utils.instantiate after checking every nested ``_target_`` against the allow-list.

    path: the config key of ``cfg`` (e.g. ``"train.optimizer"``), used in error messages.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    _check_targets(cfg, path)
    try:
        return hydra_instantiate(cfg, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"{path}: cannot build {cfg.get('_target_')!r}: {cause}") from None


def to_container(cfg: Any) -> Any:
    """Plain, resolved Python containers for a config node (or the value itself)."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def require_range(value: float, key: str, low: float, high: float, *, high_open: bool = True) -> float:
    """Raise ConfigError unless low <= value < high (or <= high when high_open=False)."""
    ok = value >= low and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{key} must be in [{low}, {high}{bracket}, got {value}; fix it on the command line, e.g. {key}={(low + high) / 2:g}")
    return value


def require_positive(value: float, key: str, *, allow_zero: bool = False) -> float:
    if value < 0 or (value == 0 and not allow_zero):
        rule = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key} must be {rule}, got {value}; set it on the command line, e.g. {key}=1")
    return value
