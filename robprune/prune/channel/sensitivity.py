"""Module Robustness Sensitivity (MRPF, arXiv 2410.15176, docs/methods/mrpf.md#step-2 (steps 2-3)) and the fixed
calibration adversarial set it (and Taylor importance) is measured on.

Cost: one PGD run over the calibration set, then per layer ``steps`` forward+backward passes over it
plus one forward pass (``worst_case``, the default) or one forward pass per draw (``gaussian_rel``,
``grad_rel``). Each layer is perturbed in place and restored bit-exactly (no model copies).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robprune.data.tensors import as_pixels, seeded_indices
from robprune.errors import ConfigError
from robprune.prune.stats import PRUNABLE_TYPES, differentiable

PERTURBATIONS = ("worst_case", "gaussian_rel", "grad_rel")


@dataclass
class Sensitivity:
    """x_adv: (M, C, H, W) calibration adversarial set in [0, 1]; y: (M,) labels; layers: per
    Conv2d/Linear {name: {"mrs", "weight_norm", "params", "losses"}} (empty when only the calibration
    set was asked for); baseline_loss: L_adv of the unperturbed model."""

    x_adv: torch.Tensor
    y: torch.Tensor
    baseline_loss: float
    layers: dict[str, dict] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def calibration_subset(x: torch.Tensor, y: torch.Tensor, n_images: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of min(n_images, N) training images. x: (N, C, H, W) uint8 or float in
    [0, 1] -> float (n, C, H, W) in [0, 1]; y: (N,) -> (n,)."""
    if n_images < 1:
        raise ConfigError(f"prune.scores.n_images must be >= 1, got {n_images}; e.g. prune.scores.n_images=1024")
    idx = seeded_indices(len(y), n_images, seed)
    return as_pixels(x[idx], what="prune.scores calibration images"), y[idx].long()


def adversarial_set(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Callable, *, batch_size: int,
                    device: torch.device, seed: int) -> torch.Tensor:
    """AE = attack(model, x, y) in batches, model in eval mode, random starts drawn from a fork of
    torch's RNG seeded with ``seed`` (the caller's RNG stream is untouched). Returns (M, C, H, W) on device."""
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            return torch.cat([attack(model, x[i:i + batch_size].to(device), y[i:i + batch_size].to(device))
                              for i in range(0, len(y), batch_size)])
    finally:
        model.train(was_training)


@torch.inference_mode()
def adversarial_loss(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """L_adv = mean cross-entropy of ``model`` on the fixed set (MRPF, docs/methods/mrpf.md#step-3); x_adv, y on the model's device."""
    total = sum(F.cross_entropy(model(x_adv[i:i + batch_size]), y[i:i + batch_size], reduction="sum").item()
                for i in range(0, len(y), batch_size))
    return total / len(y)


def layer_gradients(model: nn.Module, layers: dict[str, nn.Module], x_adv: torch.Tensor, y: torch.Tensor,
                    batch_size: int) -> dict[str, torch.Tensor]:
    """∂L_adv/∂W_l for every layer in one pass over the set (torch.autograd.grad: .grad untouched)."""
    grads = {name: torch.zeros_like(m.weight) for name, m in layers.items()}
    with torch.enable_grad(), differentiable(m.weight for m in layers.values()):
        for i in range(0, len(y), batch_size):
            loss = F.cross_entropy(model(x_adv[i:i + batch_size]), y[i:i + batch_size], reduction="sum") / len(y)
            for name, g in zip(grads, torch.autograd.grad(loss, [m.weight for m in layers.values()])):
                grads[name] += g
    return grads


def directions(weight: torch.Tensor, *, perturbation: str, draws: int, generator: torch.Generator,
               grad: torch.Tensor | None) -> list[torch.Tensor]:
    """Unit-Frobenius-norm directions u/‖u‖_F for one layer: ``draws`` Gaussian draws (drawn on the CPU
    from the seeded generator, so every device gets the same ones) or the normalised gradient."""
    if perturbation == "grad_rel":
        return [grad / grad.norm().clamp_min(1e-30)]
    us = [torch.randn(weight.shape, generator=generator).to(weight.device) for _ in range(draws)]
    return [u / u.norm() for u in us]


@torch.no_grad()
def perturbed_losses(model: nn.Module, module: nn.Module, units: list[torch.Tensor], *, alpha: float,
                     x_adv: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[float]:
    """L_adv with W_l ← W_l + δ, δ = α·‖W_l‖_F·u (MRPF; a resolution, docs/methods/mrpf.md#step-3), one per
    direction u; W_l is perturbed in place and restored bit-exactly after each evaluation."""
    weight = module.weight
    saved = weight.detach().clone()
    scale = alpha * saved.norm()
    losses = []
    try:
        for u in units:
            weight.add_(scale * u)
            losses.append(adversarial_loss(model, x_adv, y, batch_size))
            weight.copy_(saved)
    finally:
        weight.copy_(saved)
    return losses


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of every Conv2d/Linear in module order (biases and norm layers are never perturbed)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def calibration_set(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: torch.device, attack: Callable,
                    n_images: int = 1024, batch_size: int = 256, seed: int = 0) -> Sensitivity:
    """MRPF, docs/methods/mrpf.md#step-2 only: the fixed adversarial set AE on a seeded subset of the training split
    (x: (N, C, H, W) uint8 or [0, 1] floats), made once on ``model``; no per-layer scores (Taylor)."""
    started = time.perf_counter()
    model.to(device).eval()
    xs, ys = calibration_subset(x, y, int(n_images), seed)
    ys = ys.to(device)
    x_adv = adversarial_set(model, xs, ys, attack, batch_size=int(batch_size), device=device, seed=seed)
    base = adversarial_loss(model, x_adv, ys, int(batch_size))
    return Sensitivity(x_adv, ys, base, info={"n_images": len(ys), "seed": int(seed),
                                              "seconds_calibration": round(time.perf_counter() - started, 3)})


def worst_case_losses(model: nn.Module, module: nn.Module, *, alpha: float, steps: int, x_adv: torch.Tensor,
                      y: torch.Tensor, batch_size: int) -> list[float]:
    """L_adv along projected gradient ascent on W_l alone inside ‖ΔW‖_F ≤ α‖W_l‖_F (docs/methods/mrpf.md#step-3;
    the module robust criticality (MRC) of RiFT, Zhu et al., ICCV 2023). Step: δ ← Π(δ + η·g/‖g‖_F),
    g = ∂L_adv/∂W at W_l + δ, η = 2.5·α‖W_l‖_F/steps (PGD's 2.5ε/steps convention, Madry et al. 2018:
    the boundary is reachable in 0.4·steps steps, later steps move along it), Π = projection onto the
    ball after every step. Returns [L(δ_1), ..., L(δ_steps)] (L(δ_k) comes free with the gradient pass
    k+1; one extra forward pass for the last). Side effects: none; W_l restored bit-exactly, .grad
    untouched (torch.autograd.grad), model mode untouched (callers run it in eval mode)."""
    weight = module.weight
    saved = weight.detach().clone()
    radius = alpha * float(saved.norm())
    step_size = 2.5 * radius / steps
    delta, losses = torch.zeros_like(saved), []
    try:
        for step in range(steps):
            loss, grad = _loss_and_weight_grad(model, weight, x_adv, y, batch_size)  # at W_l + δ_step
            if step:
                losses.append(loss)
            delta = delta + step_size * grad / grad.norm().clamp_min(1e-30)
            delta = delta * min(1.0, radius / max(float(delta.norm()), 1e-30))  # Π: back onto the ball
            with torch.no_grad():
                weight.copy_(saved + delta)
        losses.append(adversarial_loss(model, x_adv, y, batch_size))
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    return losses


def _loss_and_weight_grad(model: nn.Module, weight: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                          batch_size: int) -> tuple[float, torch.Tensor]:
    """(L_adv, ∂L_adv/∂weight) over the whole set in batches; .grad untouched. L_adv is summed exactly
    as :func:`adversarial_loss` sums it, so at an unperturbed weight the two agree bit-exactly."""
    total, grad = 0.0, torch.zeros_like(weight)
    with torch.enable_grad(), differentiable([weight]):
        for i in range(0, len(y), batch_size):
            loss_sum = F.cross_entropy(model(x_adv[i:i + batch_size]), y[i:i + batch_size], reduction="sum")
            grad += torch.autograd.grad(loss_sum / len(y), [weight])[0]
            total += loss_sum.item()
    return total / len(y), grad


def check_options(perturbation: str, alpha: float, draws: int, steps: int, damage_seeds: Sequence[int]) -> None:
    """ConfigError (one line naming ``prune.scores.<key>`` and a fix) for a bad value."""
    if perturbation not in PERTURBATIONS:
        raise ConfigError(f"prune.scores.perturbation must be one of {', '.join(PERTURBATIONS)}, got {perturbation!r}; "
                          "e.g. prune.scores.perturbation=worst_case")
    if not alpha > 0:
        raise ConfigError(f"prune.scores.alpha must be > 0, got {alpha}; e.g. prune.scores.alpha=0.2")
    if int(steps) < 1:
        raise ConfigError(f"prune.scores.steps must be >= 1, got {steps}; e.g. prune.scores.steps=10")
    if int(draws) < 1:
        raise ConfigError(f"prune.scores.draws must be >= 1, got {draws}; e.g. prune.scores.draws=5")
    if len(damage_seeds) < 1:
        raise ConfigError("prune.scores.damage_seeds must list at least one seed, got []; "
                          "e.g. prune.scores.damage_seeds=[0,1,2]")


def mrs_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: torch.device, attack: Callable,
               n_images: int = 1024, batch_size: int = 256, seed: int = 0, perturbation: str = "worst_case",
               alpha: float = 0.2, steps: int = 10, draws: int = 5, damage_check: bool = False,
               damage_seeds: Sequence[int] = (0, 1, 2)) -> Sensitivity:
    """MRS(l) = L_adv(W_l + δ_l; AE) − L_adv(W; AE) for every Conv2d/Linear l (MRPF, docs/methods/mrpf.md#step-3).
    worst_case: δ_l = the loss-maximising ΔW in ‖ΔW‖_F ≤ α‖W_l‖_F found in ``steps`` projected gradient
    steps (MRS = largest loss reached − unperturbed loss, ≥ 0); gaussian_rel: the mean over ``draws``
    seeded Gaussian directions of norm α‖W_l‖_F; grad_rel: the normalised gradient, same norm.
    model: the dense model, moved to ``device``; its weights are bit-exactly unchanged afterwards,
    .grad untouched and .training as found. Deterministic for a seed. damage_check, damage_seeds: read by the
    scores stage (:mod:`robprune.prune.channel.damage`), only validated here."""
    check_options(perturbation, alpha, draws, steps, list(damage_seeds))
    was_training = model.training
    try:
        return _mrs_scores(model, x, y, device=device, attack=attack, n_images=n_images, batch_size=int(batch_size),
                           seed=seed, perturbation=perturbation, alpha=float(alpha), steps=int(steps), draws=int(draws))
    finally:
        model.train(was_training)


def _mrs_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: torch.device, attack: Callable,
                n_images: int, batch_size: int, seed: int, perturbation: str, alpha: float, steps: int,
                draws: int) -> Sensitivity:
    """:func:`mrs_scores` after validation (model left in eval mode)."""
    result = calibration_set(model, x, y, device=device, attack=attack, n_images=n_images, batch_size=batch_size, seed=seed)
    started = time.perf_counter()
    layers = prunable_layers(model)
    grads = layer_gradients(model, layers, result.x_adv, result.y, batch_size) if perturbation == "grad_rel" else {}
    generator = torch.Generator().manual_seed(int(seed) + 1)
    for name, module in layers.items():
        losses = layer_losses(model, module, perturbation, result, alpha=alpha, steps=steps, draws=draws,
                              generator=generator, grad=grads.get(name), batch_size=batch_size)
        if perturbation == "worst_case":  # RiFT's MRC (Zhu et al., ICCV 2023): max_ball L − L(W) ≥ 0 (δ = 0 is in the ball)
            mrs = max(max(losses) - result.baseline_loss, 0.0)
        else:  # MRPF, docs/methods/mrpf.md#step-3 with a fixed-size random (or gradient) direction, mean over draws
            mrs = sum(losses) / len(losses) - result.baseline_loss
        result.layers[name] = {"mrs": mrs, "weight_norm": float(module.weight.detach().norm()),
                               "params": module.weight.numel(), "losses": losses}
    result.info.update(perturbation=perturbation, alpha=alpha, seconds_mrs=round(time.perf_counter() - started, 3),
                       **({"steps": steps} if perturbation == "worst_case" else
                          {"draws": draws if perturbation == "gaussian_rel" else 1}))
    return result


def layer_losses(model: nn.Module, module: nn.Module, perturbation: str, result: Sensitivity, *, alpha: float,
                 steps: int, draws: int, generator: torch.Generator, grad: torch.Tensor | None,
                 batch_size: int) -> list[float]:
    """The perturbed losses of one layer for ``perturbation`` (see :func:`mrs_scores`)."""
    if perturbation == "worst_case":
        return worst_case_losses(model, module, alpha=alpha, steps=steps, x_adv=result.x_adv, y=result.y,
                                 batch_size=batch_size)
    units = directions(module.weight, perturbation=perturbation, draws=draws, generator=generator, grad=grad)
    return perturbed_losses(model, module, units, alpha=alpha, x_adv=result.x_adv, y=result.y, batch_size=batch_size)


def group_scores(layer_mrs: dict[str, float], groups: list[dict]) -> dict[str, float]:
    """{group root: mean MRS of its members} (MRPF, docs/methods/mrpf.md#step-3: coupled layers share one ratio).
    groups: [{"root", "members"}]; a member without a score is a ConfigError (scores of another model)."""
    out = {}
    for g in groups:
        missing = [m for m in g["members"] if m not in layer_mrs]
        if missing:
            raise ConfigError(f"prune: no MRS for {', '.join(missing)}; the scores were computed for another model")
        out[g["root"]] = sum(layer_mrs[m] for m in g["members"]) / len(g["members"])
    return out
