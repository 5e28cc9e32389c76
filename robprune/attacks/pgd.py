"""Projected gradient descent (Madry et al. 2018) for L∞ and L2, and FGSM as its one-step case.

Contract (every attack in robprune): ``attack(model, x, y) -> x_adv`` with hyperparameters bound by
functools.partial; x, x_adv: (N, C, H, W) pixels in [0, 1]; y: (N,) int64 labels. The attack leaves
``model.training`` and every parameter's ``.grad`` as it found them (gradients are taken with
torch.autograd.grad w.r.t. the input only), never changes parameters, runs on x's device, and
returns a detached tensor. Random starts draw from torch's global RNG unless ``generator`` is given.
Note that a model left in train mode still updates BatchNorm running statistics on every forward
pass, as any forward pass would; evaluation calls attacks in eval mode.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn

from robprune.attacks.common import (
    LOSSES,
    check_choice,
    check_eps,
    check_min,
    loss_and_grad,
    loss_target,
    per_example_loss,
)
from robprune.attacks.threat import NORMS, Budget, L2Ball, LinfBall, make_ball, normal_start
from robprune.errors import ConfigError
from robprune.options import BOOL, EPS, STEPS, Choice, Float, Int
from robprune.registry import ATTACKS

COMPAT = (None, "adverfine")
STARTS = {True: "uniform", False: "none", "normal": "normal"}  # random_start value -> first iterate
# The options of pgd (and fgsm), declared once: schema, defaults and signature (docs/concepts/registry-and-options.md)
Eps = Annotated[float, EPS, "budget in pixel units ([0,1] images), L∞ or L2 per norm"]
Steps = Annotated[int, STEPS, "gradient steps"]
StepSize = Annotated[float | None, Float(0, null=True, example="0.01"), "pixels per step; null = 2.5·eps/steps (Madry et al.)"]
StepScale = Annotated[float | None, Float(0, low_open=True, null=True, example="1.25"),
                      "step = step_scale·eps (instead of step_size; FGSM with a random start: 1.25, Wong et al. 2020)"]
Norm = Annotated[str, Choice(*NORMS), "linf | l2"]
RandomStart = Annotated[bool | str, Choice(*STARTS), "true: uniform start in the ε-ball; false: start at x; normal: x + init_std·N(0, I) (TRADES)"]
InitStd = Annotated[float, Float(0, example="0.001"), "std of the normal start in pixels (random_start: normal only; TRADES' 0.001)"]
Restarts = Annotated[int, Int(1), "independent starts; per example the worst case is kept"]
EarlyStop = Annotated[bool, BOOL, "stop attacking examples already misclassified (evaluation speed)"]
Loss = Annotated[str, Choice(*LOSSES), "loss ascended: ce (cross-entropy) | dlr (Croce & Hein 2020) | kl (KL(p(x) ‖ p(x')), TRADES)"]
Compat = Annotated[str | None, Choice(*COMPAT), "null = pixel-space convention; adverfine = that paper's code (L∞ only)"]


@dataclass(frozen=True)
class _Plan:
    """Everything one PGD run needs, after validation and compat translation."""

    ball: LinfBall | L2Ball
    steps: int
    step_size: Budget
    start: str  # 'none' (x) | 'uniform' (in the ball) | 'normal' (x + init_std·N(0, I), TRADES)
    init_std: float  # pixels, for start 'normal' only
    clamp: bool  # keep x_adv in [0, 1]; only the adverfine compat mode turns it off
    early_stop: bool
    loss: str


@ATTACKS.register("pgd", modality="image")
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: Eps, steps: Steps, step_size: StepSize = None,
        step_scale: StepScale = None, norm: Norm = "linf", random_start: RandomStart = True, init_std: InitStd = 0.001, restarts: Restarts = 1,
        early_stop: EarlyStop = False, loss: Loss = "ce", compat: Compat = None,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD adversarial examples, (N, C, H, W) in [0, 1], detached, on x's device.

    eps: budget in pixel units (L∞ or L2 per ``norm``); steps: gradient steps per restart;
    step_size: pixels per step, None = 2.5·eps/steps (Madry et al.); step_scale: step = step_scale·eps instead
    (it follows an ε ramp; FGSM-RS, Wong et al. 2020 Alg. 3: steps 1, step_scale 1.25); random_start: True = uniform
    start in the ball, False = start at x, 'normal' = x + init_std·N(0, I) (TRADES' start; init_std
    in pixels); restarts: independent starts, per example the first one that fools the model is kept,
    else the one with the highest final loss; early_stop: stop attacking an example as soon as it is
    misclassified (evaluation: the returned point is that first fooling one; fewer gradient calls);
    loss: 'ce' (cross-entropy), 'dlr' (Croce & Hein 2020) or 'kl' (KL(p(x) ‖ p(x')), TRADES' inner
    maximisation; p(x) = softmax(model(x)) once per call, detached, in the model's current mode);
    compat: None = pixel-space convention, 'adverfine' = Adver-Fine's code (no random start, no
    clamp, eps and step in normalised units, L∞ only). Raises ConfigError for invalid settings.
    """
    if step_scale is not None:
        if step_size is not None:
            raise ConfigError(f"attack.step_size={step_size} and attack.step_scale={step_scale} are both set; keep one "
                              "(step_scale: the step in multiples of eps), e.g. attack.step_size=null")
        if not float(step_scale) > 0:
            raise ConfigError(f"attack.step_scale must be > 0 (the step in multiples of eps), got {step_scale}; e.g. 1.25")
        step_size = float(step_scale) * float(eps)
    plan = _plan(model, eps=eps, steps=steps, step_size=step_size, norm=norm, random_start=random_start,
                 init_std=init_std, early_stop=early_stop, loss=loss, compat=compat)
    restarts = check_min(restarts, "attack.restarts", 1)
    x, y = x.detach(), y.detach()
    if x.shape[0] == 0:
        return x.clone()
    target = loss_target(model, x, y, plan.loss)  # labels, or the clean distribution (kl), once for all restarts
    if restarts == 1:
        return _run(model, x, y, target, plan, generator, final_eval=False)[0]
    return _best_of_restarts(model, x, y, target, plan, restarts, generator)


@ATTACKS.register("fgsm", modality="image")
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: Eps, norm: Norm = "linf") -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps from x, no random
    start; for norm='l2' the step is eps·grad/‖grad‖₂ (fast gradient method). Same contract as pgd."""
    return pgd(model, x, y, eps=eps, steps=1, step_size=eps, norm=norm, random_start=False)


ATTACKS.add("pgd_l2", pgd, modality="image")  # conf/attack/pgd_l2.yaml: PGD under the L2 threat model


def _plan(model: nn.Module, *, eps, steps, step_size, norm, random_start, init_std, early_stop, loss, compat) -> _Plan:
    eps = check_eps(eps)
    steps = check_min(steps, "attack.steps", 1)
    check_choice(norm, "attack.norm", NORMS)
    check_choice(loss, "attack.loss", LOSSES)
    check_choice(compat, "attack.compat", COMPAT)
    check_choice(random_start, "attack.random_start", tuple(STARTS))
    if init_std < 0:
        raise ConfigError(f"attack.init_std must be >= 0 (pixels), got {init_std}; TRADES uses attack.init_std=0.001")
    if step_size is not None and step_size < 0:
        raise ConfigError(f"attack.step_size must be >= 0 or null (= 2.5·eps/steps), got {step_size}")
    step: Budget = 2.5 * eps / steps if step_size is None else float(step_size)
    if compat == "adverfine":
        return _adverfine_plan(model, eps, steps, step, norm, early_stop, loss)
    return _Plan(make_ball(norm, eps), steps, step, STARTS[random_start], float(init_std), True, bool(early_stop), loss)


def _adverfine_plan(model: nn.Module, eps: float, steps: int, step: float, norm: str, early_stop: bool, loss: str) -> _Plan:
    """Adver-Fine (arXiv 2403.09441) applied eps and step to normalised inputs (x − mean)/std, so in
    pixels they are eps·std per channel (half the stated value for std 0.5); no random start, no clamp."""
    from robprune.models.common import Normalize

    if norm != "linf":
        raise ConfigError(f"attack.compat=adverfine reproduces an L∞ attack; got attack.norm={norm!r} (use norm=linf)")
    layer = next((m for m in model.modules() if isinstance(m, Normalize)), None)
    if layer is None:
        raise ConfigError("attack.compat=adverfine needs a model with a robprune.models.Normalize layer "
                          "(to convert normalised units to pixels); use attack.compat=null")
    std = layer.std.detach()  # (1, C, 1, 1)
    return _Plan(LinfBall(eps * std), steps, step * std, "none", 0.0, False, bool(early_stop), loss)


def _start(x: torch.Tensor, plan: _Plan, generator) -> torch.Tensor:
    """The first iterate (N, C, H, W): x, a uniform draw from the ball clamped to [0, 1], or TRADES'
    x + init_std·N(0, I) as their code takes it (unclamped; every later iterate is projected and clamped)."""
    if plan.start == "normal":
        return normal_start(x, plan.init_std, generator)
    xa = plan.ball.random_start(x, generator) if plan.start == "uniform" else x.clone()
    return xa.clamp(0.0, 1.0) if plan.clamp else xa


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, plan: _Plan, generator, *,
         final_eval: bool):
    """One PGD run from one start. Returns (x_adv (N, C, H, W), loss (N,), fooled (N,) bool).

    target: the :func:`loss_target` of x (labels (N,), or clean probabilities (N, K) for 'kl').
    With ``final_eval`` False, loss is -inf and fooled only marks examples stopped early. With
    early stopping the working tensors (xa, x_ref, ya, ta) hold only the examples still attacked, and
    ``active`` their indices in x: a fooled example is written to x_adv once and leaves the batch, so
    later steps cost less (index bookkeeping, no Python loop over examples).
    """
    n = x.shape[0]
    xa = _start(x, plan, generator)
    x_adv, x_ref, ya, ta = x.clone(), x, y, target
    active = torch.arange(n, device=x.device)
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    for _ in range(plan.steps):
        logits, _, grad = loss_and_grad(model, xa, ta, plan.loss)
        if plan.early_stop:
            hit = logits.argmax(1) != ya
            if hit.any():  # compact only when someone left: saves five gathers on most steps
                x_adv[active[hit]] = xa[hit]  # the first fooling point is the one returned
                fooled[active[hit]] = True
                keep = ~hit
                active, xa, x_ref, ya, ta, grad = active[keep], xa[keep], x_ref[keep], ya[keep], ta[keep], grad[keep]
                if active.numel() == 0:
                    break
        xa = plan.ball.project(plan.ball.step(xa, grad, plan.step_size), x_ref)
        xa = xa.clamp(0.0, 1.0) if plan.clamp else xa
    x_adv[active] = xa
    losses = torch.full((n,), float("-inf"), device=x.device)
    if final_eval and active.numel():
        with torch.no_grad():
            logits = model(xa)
            losses[active] = per_example_loss(logits, ta, plan.loss)
            fooled[active] = logits.argmax(1) != ya
    return x_adv.detach(), losses, fooled


def _best_of_restarts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, plan: _Plan,
                      restarts: int, generator) -> torch.Tensor:
    """Per example, the first restart's x_adv that fools the model, else the highest-loss one.
    Examples fooled by an earlier restart are not attacked again."""
    best = x.clone()
    best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        todo = (~fooled).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        adv, losses, hit = _run(model, x[todo], y[todo], target[todo], plan, generator, final_eval=True)
        take = hit | (losses > best_loss[todo])
        best[todo[take]] = adv[take]
        best_loss[todo[take]] = losses[take]
        fooled[todo[hit]] = True
    return best
