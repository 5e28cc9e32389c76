"""Pieces every attack shares: argument checks with readable errors, the input gradient, and guards
that put the model back exactly as the attack found it."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from robprune.errors import ConfigError

LOSSES = ("ce", "dlr", "kl")


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


def kl_loss(logits: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """KL(p_clean ‖ softmax(logits)) per example, TRADES' inner objective (Zhang et al. 2019, Eq. 5).

    logits: (N, K); p_clean: (N, K) probabilities of the clean inputs, detached -> (N,) in [0, ∞).
    """
    return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="none").sum(1)


def loss_target(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """What :func:`per_example_loss` compares the logits with: the labels y (N,) for 'ce' and 'dlr';
    for 'kl' the clean distribution softmax(model(x)) (N, K), computed once, without gradient and in
    the model's current mode (a model in train mode updates BN statistics, as any forward pass does)."""
    if loss != "kl":
        return y
    with torch.no_grad():
        return F.softmax(model(x), dim=1).detach()


def per_example_loss(logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """(N, K) logits and the :func:`loss_target` ((N,) labels, or (N, K) clean probabilities for
    'kl') -> (N,) loss that the attack ascends."""
    if loss == "dlr":
        return dlr_loss(logits, target)
    if loss == "kl":
        return kl_loss(logits, target)
    return F.cross_entropy(logits, target, reduction="none")


def loss_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str):
    """Logits (N, K), per-example loss (N,) and its gradient w.r.t. x (N, C, H, W); y is the
    :func:`loss_target` ((N,) labels, or (N, K) clean probabilities for 'kl').

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
