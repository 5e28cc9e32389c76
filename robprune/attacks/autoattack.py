"""AutoAttack (Croce & Hein 2020) through pyautoattack, behind robprune's attack contract.

pyautoattack logs through ``logging.getLogger('auto-attack')``: progress at DEBUG and its sanity
checks (randomised or dynamic defence, probabilities instead of logits, Square beating the
white-box attacks, zero gradients) at WARNING. During a call its records are re-emitted on the
``robprune.attacks.autoattack`` logger, and :func:`capture_warnings` collects the check warnings
so that evaluation can report them under ``checks``.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from robprune.attacks.common import check_choice, check_eps, check_min, preserved_grads, preserved_modes
from robprune.errors import ConfigError

AA_LOGGER = "auto-attack"  # the name pyautoattack logs under
LOGGER = "robprune.attacks.autoattack"
AA_NORMS = ("Linf", "L2", "L1")
AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
               version: str = "standard", attacks: list[str] | None = None, seed: int | None = 0,
               batch_size: int = 500, n_iter: int | None = None, n_queries: int | None = None) -> torch.Tensor:
    """AutoAttack adversarial examples, (N, C, H, W) in [0, 1], detached, on x's device.

    eps: budget in pixel units; norm: 'Linf' | 'L2' | 'L1' (pyautoattack's spelling); version:
    'standard' (APGD-CE, APGD-T, FAB-T, Square), 'plus', 'rand', or 'custom' with ``attacks`` a list
    of 'apgd-ce', 'apgd-dlr', 'fab', 'square', 'apgd-t', 'fab-t' (giving ``attacks`` implies
    custom); seed: seeds every sub-attack (None: drawn from torch's global RNG, so still seeded by
    the pipeline); batch_size: pyautoattack's batch; n_iter / n_queries: override APGD and FAB
    iterations (100) / Square queries (5000) for cheap smoke runs; None keeps AutoAttack's values.
    Runs the model in eval mode; restores modes, parameter gradients and torch's global RNG state
    (pyautoattack reseeds it) afterwards.
    """
    from pyautoattack import AutoAttack

    eps, version = check_eps(eps), ("custom" if attacks is not None else version)
    _check_args(norm, version, attacks, batch_size, n_iter, n_queries)
    x, y = x.detach(), y.detach().long()
    if x.shape[0] == 0:
        return x.clone()
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    with preserved_modes(model, eval_mode=True), preserved_grads(model), _forked_rng(x.device), routed_logs():
        adversary = AutoAttack(model, attacks=list(attacks) if attacks is not None else None,
                               device=x.device, eps=eps, norm=norm, seed=int(seed), version=version)
        _configure(adversary, model, x, n_iter, n_queries)
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return x_adv.detach()


def _check_args(norm, version, attacks, batch_size, n_iter, n_queries) -> None:
    check_choice(norm, "attack.norm", AA_NORMS)
    check_choice(version, "attack.version", AA_VERSIONS)
    if version == "custom":
        if not attacks:
            raise ConfigError("attack.version=custom needs attack.attacks, a list such as [apgd-ce,square]")
        for name in attacks:
            check_choice(name, "attack.attacks[]", AA_ATTACKS)
    check_min(batch_size, "attack.batch_size", 1)
    if n_iter is not None:
        check_min(n_iter, "attack.n_iter", 1)
    if n_queries is not None:
        check_min(n_queries, "attack.n_queries", 1)


def _configure(adversary, model: nn.Module, x: torch.Tensor, n_iter: int | None, n_queries: int | None) -> None:
    """Fit the targeted attacks to the number of classes and apply iteration overrides."""
    with torch.no_grad():
        n_classes = int(model(x[:1]).shape[1])
    targeted = {"apgd-t", "apgd-dlr"} & set(adversary.attacks_to_run)
    if targeted and n_classes < 4:  # DLR needs the 3rd largest logit, targeted DLR the 4th
        raise ConfigError(f"AutoAttack's {', '.join(sorted(targeted))} need >= 4 classes, the model has {n_classes}; "
                          "use attack.version=custom attack.attacks=[apgd-ce,square]")
    # pyautoattack assumes 10+ classes (9 target classes); check_n_classes would otherwise warn and
    # the targeted attacks would index past the logits
    adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, n_classes - 1)
    adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, n_classes - 1)
    if n_iter is not None:
        for apgd in (adversary.apgd, adversary.apgd_targeted):
            _set_apgd_iterations(apgd, n_iter)
        adversary.fab.n_iter = n_iter
    if n_queries is not None:
        adversary.square.n_queries = n_queries


def _set_apgd_iterations(apgd, n_iter: int) -> None:
    """APGD derives its step-size checkpoints from n_iter in __init__; recompute them the same way."""
    apgd.n_iter = apgd.n_iter_orig = n_iter
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)


@contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    """pyautoattack calls torch.manual_seed(seed) inside; keep the caller's RNG stream untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


class _Forward(logging.Handler):
    """Re-emits pyautoattack's records on robprune's logger (respecting that logger's level)."""

    def __init__(self, target: logging.Logger):
        super().__init__(logging.DEBUG)
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        if self.target.isEnabledFor(record.levelno):
            record.name = self.target.name
            self.target.handle(record)


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]):
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:  # the same check fires once per batch: keep it once
            self.messages.append(message)


@contextmanager
def _attached(handler: logging.Handler) -> Iterator[None]:
    """Attach ``handler`` to pyautoattack's logger; DEBUG level and no propagation while attached
    (its records reach the root logger only through robprune's logger), restored afterwards."""
    aa = logging.getLogger(AA_LOGGER)
    level, propagate = aa.level, aa.propagate
    aa.addHandler(handler)
    aa.setLevel(logging.DEBUG)
    aa.propagate = False
    try:
        yield
    finally:
        aa.removeHandler(handler)
        aa.setLevel(level)  # contexts nest LIFO, so restoring what each saw restores the original
        aa.propagate = propagate


@contextmanager
def routed_logs() -> Iterator[None]:
    """While active, pyautoattack's log records appear on the ``robprune.attacks.autoattack`` logger."""
    with _attached(_Forward(logging.getLogger(LOGGER))):
        yield


@contextmanager
def capture_warnings() -> Iterator[list[str]]:
    """Collect pyautoattack's check warnings (unique messages, in order) raised inside the block."""
    messages: list[str] = []
    with _attached(_Collect(messages)):
        yield messages
