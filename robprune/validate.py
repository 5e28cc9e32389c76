"""Check a composed config before any work starts, so a wrong value fails in a second with one line
naming the key, not an hour later deep inside torch."""
from __future__ import annotations

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from robprune.config import require_positive, require_range
from robprune.errors import ConfigError

# key suffix -> check; applied to every node found anywhere in the config tree
FRACTIONS = ("channel_ratio", "sparsity")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid value (missing ???, ranges, attack budgets, splits)."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        key = sorted(missing)[0]
        raise ConfigError(f"{key} is required but not set; pass it on the command line, e.g. {key}=<value>")
    _walk(cfg, "")
    from robprune.prune import check_prune_config

    check_prune_config(cfg.prune)  # a bad pruning option fails before the dense model trains
    from robprune.quant import spec_from_config

    spec_from_config(cfg.get("quant"))  # quant.bits in [2, 16], method, observer: fail before any training
    from robprune.data import parse_split

    for key in ("train_split", "test_split"):
        parse_split(str(cfg.dataset[key]), key=f"dataset.{key}")


def _walk(node, path: str) -> None:
    if isinstance(node, DictConfig):
        target = str(node.get("_target_", "")) if "_target_" in node else ""
        if target.startswith("robprune.attacks."):
            _check_attack(node, path)
        for key in node.keys():
            child = f"{path}.{key}" if path else str(key)
            try:
                value = node[key]
            except MissingMandatoryValue:
                raise ConfigError(f"{child} is required but not set; pass it on the command line, e.g. {child}=<value>") from None
            if key in FRACTIONS and value is not None:
                require_range(float(value), child, 0.0, 1.0)
            if key == "epochs" and value is not None:
                require_positive(int(value), child, allow_zero=True)
            _walk(value, child)
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            _walk(item, f"{path}[{i}]")


def _check_attack(node: DictConfig, path: str) -> None:
    if "eps" in node and node.eps is not None and float(node.eps) < 0:
        raise ConfigError(f"{path}.eps must be >= 0 (pixel units), got {node.eps}; e.g. {path}.eps=0.03137 for 8/255")
    if "steps" in node and node.steps is not None and int(node.steps) < 1:
        raise ConfigError(f"{path}.steps must be >= 1, got {node.steps}; e.g. {path}.steps=10")
