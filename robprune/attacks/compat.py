"""Which attack convention a run used, for its results (metrics.json ``attack_compat``)."""
from __future__ import annotations

from omegaconf import DictConfig, ListConfig

from robprune.attacks.pgd import fgsm, pgd
from robprune.registry import ATTACKS, target_entry


def attack_compat(cfg: DictConfig) -> dict[str, str | None]:
    """{config path of every PGD/FGSM attack node: its ``compat`` value} over the whole config, e.g.
    ``{"train.objective.attack": None, "eval.attacks.pgd20": "adverfine"}``. None = the correct
    pixel-space convention; 'adverfine' = Adver-Fine's code (ε in normalised units, no random
    start, no clamp; see :func:`robprune.attacks.pgd`). Nodes under ``hydra`` are skipped."""
    found: dict[str, str | None] = {}
    _walk(cfg, "", found)
    return found


def _walk(node, path: str, found: dict) -> None:
    if isinstance(node, DictConfig):
        entry = target_entry(ATTACKS, str(node._target_)) if "_target_" in node else None
        if entry is not None and entry.obj in (pgd, fgsm):  # the attacks with a compat option
            found[path] = node.get("compat")
        for key in node.keys():
            if path or key != "hydra":
                _walk(node[key], f"{path}.{key}" if path else str(key), found)
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            _walk(item, f"{path}[{i}]", found)
