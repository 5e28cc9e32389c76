"""Pieces every attack shares: argument checks with readable errors, the input gradient, and guards
that put the model back exactly as the attack found it."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from robprune.errors import ConfigError

LOSSES = ("ce", "dlr")


def check_eps(eps: float) -> float:
    if eps < 0:
        raise ConfigError(f"attack.eps must be >= 0, got {eps}; it is in pixel units of [0, 1] images, e.g. attack.eps=0.03137")
    return float(eps)


def check_choice(value, key: str, choices) -> None:
    if value not in choices:
        allowed = ", ".join(str(c) for c in choices)
        raise ConfigError(f"{key} must be one of {allowed}, got {value!r}")


def check_min(value: int, key: str, low: int) -> int:
    if value < low:
        raise ConfigError(f"{key} must be >= {low}, got {value}; set it on the command line, e.g. {key}={max(low, 10)}")
    return int(value)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits-ratio loss, per example (Croce & Hein 2020, eq. 5); needs >= 3 classes.

    logits: (N, K); y: (N,) -> (N,). Scale-invariant, so it is not fooled by logit rescaling.
    """
    z_sorted, _ = logits.sort(dim=1)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    top_is_y = (logits.argmax(1) == y).float()
    best_other = z_sorted[:, -2] * top_is_y + z_sorted[:, -1] * (1 - top_is_y)
    return -(z_y - best_other) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def per_example_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """(N, K), (N,) -> (N,) loss that the attack ascends."""
    if loss == "dlr":
        return dlr_loss(logits, y)
    return F.cross_entropy(logits, y, reduction="none")


def loss_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str):
    """Logits (N, K), per-example loss (N,) and its gradient w.r.t. x (N, C, H, W).

    Uses torch.autograd.grad on x only, so parameter ``.grad`` fields are never touched. The summed
    loss gives every example its own gradient, unscaled by the batch size.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        losses = per_example_loss(logits, y, loss)
        (grad,) = torch.autograd.grad(losses.sum(), [x])
    return logits.detach(), losses.detach(), grad.detach()


@contextmanager
def preserved_modes(model: nn.Module, *, eval_mode: bool) -> Iterator[None]:
    """Optionally switch to eval mode; afterwards restore every submodule's own ``training`` flag
    (not one flag for all: a model may carry frozen BN layers in eval mode inside a training model)."""
    modes = [(m, m.training) for m in model.modules()]
    if eval_mode:
        model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def preserved_grads(model: nn.Module) -> Iterator[None]:
    """For third-party attacks that call ``.backward()`` (FAB does): freeze parameters during the
    call, so no parameter gradient is computed, and restore each ``.grad`` object afterwards."""
    params = list(model.parameters())
    saved = [(p, p.grad, p.requires_grad) for p in params]
    for p in params:
        p.grad = None
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, grad, requires_grad in saved:
            p.requires_grad_(requires_grad)
            p.grad = grad
