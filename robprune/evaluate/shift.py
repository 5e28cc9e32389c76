"""Accuracy under a dataset shift: the final model's clean accuracy on other test sets of the same classes,
e.g. ImageNet-V2 for an ImageNet model (``eval.sets``; docs/metrics.md#dataset-shift).

``eval.sets.<name>`` is a whole dataset node (compose one with ``- /dataset@sets.<name>: imagenet_v2`` in an
eval config); its ``test_split`` (slice it to evaluate fewer points) is read the way the run's own data is,
streamed or in memory. Metrics: ``clean_acc/<name>`` and ``n_eval/<name>``. Every point counts (no attack),
and the numbers never enter ``robust_acc/worst``: a shift is not a threat model.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from robprune.data import build_data
from robprune.data.manifest import default_cache
from robprune.data.tensors import as_pixels
from robprune.errors import ConfigError


def sets_of(eval_cfg) -> dict:
    return dict((eval_cfg.get("sets") or {}).items())


def build_set(name: str, node, num_classes: int | None):
    """The set's data (both splits are listed; only the test split is read), checked against the run's classes.
    Its data warnings (a test-only set names its one split twice: an 'overlap') stay in its audit, unrecorded."""
    data = build_data(node, cache_dir=default_cache())
    if num_classes is not None and int(data.num_classes) != int(num_classes):
        raise ConfigError(f"eval.sets.{name} has {data.num_classes} classes but the run's dataset has {num_classes}; "
                          f"a shifted test set must use the same classes, e.g. eval.sets.{name}.num_classes={num_classes}")
    return data


def check_sets(eval_cfg, num_classes: int) -> None:
    for name, node in sets_of(eval_cfg).items():
        build_set(name, node, num_classes)


def fingerprints(eval_cfg) -> list:
    """[name, test-split fingerprint] of every set, for the eval stage's key."""
    from robprune.graph import data_fingerprint

    return [[name, data_fingerprint(build_set(name, node, None), "test")] for name, node in sets_of(eval_cfg).items()]


@torch.no_grad()
def evaluate_sets(model, eval_cfg, *, num_classes: int, device, batch_size: int) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for name, node in sets_of(eval_cfg).items():
        data = build_set(name, node, num_classes)
        x, y = as_pixels(data.test_x), data.test_y
        correct = 0
        for i in range(0, len(y), batch_size):
            rows = torch.arange(i, min(i + batch_size, len(y)))
            correct += int((model(x[rows].to(device)).argmax(1).cpu() == y[rows]).sum())
        metrics[f"clean_acc/{name}"] = correct / len(y) if len(y) else math.nan
        metrics[f"n_eval/{name}"] = int(len(y))
    return metrics
