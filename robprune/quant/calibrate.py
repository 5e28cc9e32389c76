"""Calibration of activation ranges on a seeded subset of the TRAINING data (docs/methods/adverfine.md#step-2
resolution: Adver-Fine's code calibrated on the test set; robprune never does)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from robprune.quant.modules import wrappers


@contextmanager
def observer_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Temporarily set every activation observer of ``model`` to ``mode``; restored afterwards."""
    observers = [w.input_quant.observer for w in wrappers(model)]
    saved = [o.mode for o in observers]
    for o in observers:
        o.mode = mode
    try:
        yield
    finally:
        for o, m in zip(observers, saved):
            o.mode = m


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256, device: torch.device | str = "cpu") -> int:
    """Observe the activation ranges of ``model`` (already quantised, on ``device``) on images x.

    x: (N, C, H, W) uint8 in [0, 255] or float pixels in [0, 1], on any device (moved per batch).
    Runs in eval mode (BatchNorm statistics are not touched); observers update on every batch
    whatever their mode; modes and ``model.training`` are restored. Returns N.
    """
    was_training = model.training
    model.eval()
    try:
        with observer_mode(model, "calibrate"):
            for start in range(0, x.shape[0], batch_size):
                batch = x[start:start + batch_size].to(device)
                model(batch.float() / 255.0 if batch.dtype == torch.uint8 else batch)  # any float input as is
    finally:
        model.train(was_training)
    return int(x.shape[0])
