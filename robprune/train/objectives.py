"""Training objectives: ``objective(model, x, y) -> scalar loss``.

x: (N, C, H, W) in [0, 1]; y: (N,) int64. Objectives that need the epoch (ε ramp) expose
``on_epoch_start(epoch)``, which :func:`robprune.train.fit` calls.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Callable

import torch
import torch.nn.functional as F
from torch import nn

from robprune.errors import ConfigError
from robprune.options import TARGET, Float, Int
from robprune.registry import OBJECTIVES
from robprune.train.trainer import local_model

# options shared by the adversarial objectives (their declarations: the schema of train.objective)
RAMP_EPOCHS = Annotated[float, Float(0, example="0")]  # epochs over which ε ramps linearly from 0
ADV_RATIO = Annotated[float, Float(0, high=1, low_open=True, example="1.0")]  # attacked fraction of each batch
BETA = Annotated[float, Float(0, example="6.0")]  # TRADES/MART weight of the robust term
# cross-entropy against (1 − a)·one-hot + a/K (Szegedy et al. 2016); airbench's standard training uses 0.2
LABEL_SMOOTHING = Annotated[float, Float(0, high=1, high_open=True, example="0.2")]


@contextmanager
def eval_mode(model: nn.Module):
    """Run the attack with BN in eval mode (TRADES/MART convention), restore the previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass
class Standard:
    """Clean cross-entropy (with ``label_smoothing`` a, against (1 − a)·one-hot + a/K)."""

    label_smoothing: float = 0.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=self.label_smoothing)


def check_adv_ratio(adv_ratio: float) -> float:
    """ConfigError unless 0 < adv_ratio <= 1 (MRPF, docs/methods/mrpf.md#step-6: fraction of each batch made adversarial)."""
    if not 0.0 < float(adv_ratio) <= 1.0:
        raise ConfigError(f"objective.adv_ratio must be in (0, 1], got {adv_ratio}; e.g. finetune.objective.adv_ratio=0.5")
    return float(adv_ratio)


def n_adversarial(batch: int, adv_ratio: float) -> int:
    """How many of a batch's examples are made adversarial: round(adv_ratio · N), at least 1. The loader
    shuffles, so the first n are a random subset."""
    return max(1, min(batch, round(adv_ratio * batch)))


def ramp_scale(epoch: int, ramp_epochs: float) -> float:
    """ε multiplier min(1, (epoch+1)/R) of a linear ε ramp over R epochs (1 when R = 0)."""
    return min(1.0, (epoch + 1) / ramp_epochs) if ramp_epochs > 0 else 1.0


def adversarial_mix(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv_ratio: float,
                    make: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """x with its first round(adv_ratio·N) examples replaced by ``make(x[:k], y[:k])``, run with the model
    in eval mode (MRPF, docs/methods/mrpf.md#step-6 ``adv_ratio``; the loader shuffles, so the first k are a random subset)."""
    k = n_adversarial(len(y), adv_ratio)
    with eval_mode(local_model(model)):
        x_adv = make(x[:k], y[:k])
    return x_adv if k == len(y) else torch.cat([x_adv, x[k:]])


def ramped(attack: Callable, epoch: int, ramp_epochs: float) -> Callable:
    """``attack`` with eps (and step_size) scaled by :func:`ramp_scale` (docs/methods/recipes.md: without a
    ramp, PGD-AT of cnn8 on MNIST stalls at chance). Only partials with an ``eps`` keyword are scaled."""
    scale = ramp_scale(epoch, ramp_epochs)
    if scale >= 1.0 or not isinstance(attack, functools.partial) or "eps" not in attack.keywords:
        return attack
    kw = dict(attack.keywords)
    kw["eps"] = kw["eps"] * scale
    if kw.get("step_size") is not None:
        kw["step_size"] = kw["step_size"] * scale
    return functools.partial(attack.func, *attack.args, **kw)


@dataclass
class PGDAT:
    """PGD adversarial training (Madry et al. 2018, Eq. 2.1: min_θ E max_{‖δ‖≤ε} L(θ, x+δ, y)).

    attack: a bound attack ``(model, x, y) -> x_adv`` (e.g. PGD-10 at the dataset's ε).
    eps_ramp_epochs: ε grows linearly from ε/R to ε over the first R epochs. 0 = no ramp.
    adv_ratio: fraction of each batch replaced by its adversarial examples (1 = all; MRPF, docs/methods/mrpf.md#step-6).
    """

    attack: Callable
    eps_ramp_epochs: float = 0.0
    adv_ratio: float = 1.0
    label_smoothing: float = 0.0
    _epoch: int = 0

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch

    def current_attack(self) -> Callable:
        return ramped(self.attack, self._epoch, self.eps_ramp_epochs)

    def adversarial_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x with the first round(adv_ratio·N) examples attacked by the (ramped) bound attack."""
        attack, local = self.current_attack(), local_model(model)  # attacks run on this rank's replica (no DDP sync)
        return adversarial_mix(model, x, y, self.adv_ratio, lambda xs, ys: attack(local, xs, ys))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(self.adversarial_batch(model, x, y)), y, label_smoothing=self.label_smoothing)


@OBJECTIVES.register(modality=("image", "text"))
def standard(*, label_smoothing: LABEL_SMOOTHING = 0.0) -> Standard:
    return Standard(label_smoothing=float(label_smoothing))


@OBJECTIVES.register(modality="image")
def pgd_at(*, attack: Annotated[Callable, TARGET], eps_ramp_epochs: RAMP_EPOCHS = 0.0, adv_ratio: ADV_RATIO = 1.0,
           label_smoothing: LABEL_SMOOTHING = 0.0) -> PGDAT:
    """PGD-AT; with ``attack`` = FGSM from a random start (pgd, steps 1, step_scale 1.25) it is Wong et al.'s
    fast adversarial training (2020, Alg. 3; train=fast_at)."""
    return PGDAT(attack=attack, eps_ramp_epochs=eps_ramp_epochs, adv_ratio=check_adv_ratio(adv_ratio),
                 label_smoothing=float(label_smoothing))


def mean_over_attacked(per_example: torch.Tensor, n_attacked: int | None) -> torch.Tensor:
    """(1/k) Σ_{i<k} per_example[i]: the robust terms average over the k attacked examples only (the
    first k of the batch; k = None means all N, the papers' case). per_example: (N,) -> scalar."""
    k = len(per_example) if n_attacked is None else int(n_attacked)
    return per_example[:k].sum() / k


def trades_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float,
                n_attacked: int | None = None) -> torch.Tensor:
    """TRADES (Zhang et al. 2019, Eq. 5; their ``trades_loss``): CE(f(x), y) over all N
    + β · (1/k) Σ_{i<k} KL(f(x_i) ‖ f(x'_i)), f = softmax of the logits, over the k = n_attacked attacked
    examples (the first k rows; None = all N, the paper's batchmean). logits_nat, logits_adv: (N, K); y: (N,)."""
    natural = F.cross_entropy(logits_nat, y)  # Eq. 5, first term: the natural loss, every example
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="none").sum(1)
    return natural + beta * mean_over_attacked(kl, n_attacked)  # Eq. 5, second term: β · mean KL over the attacked


def mart_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float,
              n_attacked: int | None = None) -> torch.Tensor:
    """MART (Wang et al. 2020, the MART objective L^MART; their ``mart_loss``): (1/N) Σ_i BCE(p(x'_i), y_i)
    + β · (1/k) Σ_{i<k} KL(p(x_i) ‖ p(x'_i)) · (1 − p_y(x_i)), BCE(p, y) = −log p_y − log(1 − max_{j≠y} p_j)
    (their boosted CE). The BCE averages over all N (an un-attacked example has x' = x: its BCE is
    the boosted CE of its clean point); the KL over the k = n_attacked attacked examples (the first k
    rows; None = all N, the paper's case). logits: (N, K); y: (N,). The 1e-12 / 1.0001 / 1.0000001
    guards are the authors' code's."""
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    other = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])  # most likely wrong class
    # MART's first term, BCE(p(x'), y) = CE + −log(1 − max_{j≠y} p_j), mean over every example of the batch
    bce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), other)
    nat_probs = F.softmax(logits_nat, dim=1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(1)
    # MART's second term: β · KL(p(x) ‖ p(x')) · (1 − p_y(x)), mean over the attacked examples
    return bce + beta * mean_over_attacked(kl * (1.0000001 - true_probs), n_attacked)


def _logits_and_attacked(objective: PGDAT, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """(logits of x (N, K), logits of the mixed batch (N, K), k attacked): one forward each, in the
    model's mode, after the (ramped) attack of the first k = round(adv_ratio·N) in eval mode."""
    x_mix = objective.adversarial_batch(model, x, y)
    return model(x), model(x_mix), n_adversarial(len(y), objective.adv_ratio)


@dataclass
class TRADES(PGDAT):
    """TRADES objective: :func:`trades_loss` on x' from the bound attack, which must ascend the KL
    (``attacks.pgd`` with ``loss: kl``, ``random_start: normal``), with PGD-AT's ε ramp and adv_ratio:
    the first k = round(adv_ratio·N) examples get x', and β weighs the mean KL over those k."""

    beta: float = 6.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits_nat, logits_mix, k = _logits_and_attacked(self, model, x, y)
        return trades_loss(logits_nat, logits_mix, y, self.beta, n_attacked=k)


@dataclass
class MART(PGDAT):
    """MART objective: :func:`mart_loss` on x' from the bound CE attack (PGD), with PGD-AT's ε ramp and
    adv_ratio (the first k = round(adv_ratio·N) examples get x', the rest keep x' = x; β weighs the
    mean KL term over those k)."""

    beta: float = 6.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits_nat, logits_mix, k = _logits_and_attacked(self, model, x, y)
        return mart_loss(logits_nat, logits_mix, y, self.beta, n_attacked=k)


def _check_beta(beta: float) -> float:
    if beta < 0:
        raise ConfigError(f"objective.beta must be >= 0, got {beta}; e.g. finetune.objective.beta=6")
    return float(beta)


def _check_kl_attack(attack: Callable) -> Callable:
    """TRADES maximises the KL, not the CE: a bound partial must say ``loss='kl'``."""
    if isinstance(attack, functools.partial) and attack.keywords.get("loss", "ce") != "kl":
        raise ConfigError(f"TRADES needs an attack that ascends the KL: objective.attack.loss must be kl, got "
                          f"{attack.keywords.get('loss', 'ce')!r}; e.g. finetune.objective.attack.loss=kl")
    return attack


@OBJECTIVES.register(modality="image")
def trades(*, attack: Annotated[Callable, TARGET], beta: BETA = 6.0, eps_ramp_epochs: RAMP_EPOCHS = 0.0,
           adv_ratio: ADV_RATIO = 1.0) -> TRADES:
    return TRADES(attack=_check_kl_attack(attack), eps_ramp_epochs=eps_ramp_epochs,
                  adv_ratio=check_adv_ratio(adv_ratio), beta=_check_beta(beta))


@OBJECTIVES.register(modality="image")
def mart(*, attack: Annotated[Callable, TARGET], beta: BETA = 6.0, eps_ramp_epochs: RAMP_EPOCHS = 0.0,
         adv_ratio: ADV_RATIO = 1.0) -> MART:
    return MART(attack=attack, eps_ramp_epochs=eps_ramp_epochs, adv_ratio=check_adv_ratio(adv_ratio), beta=_check_beta(beta))


@dataclass
class FreeLB:
    """FreeLB (Zhu et al. 2020, Algorithm 1): adversarial training in the word-embedding space of a text
    model, the text counterpart of PGD-AT. δ₀ ~ U(−σ, σ)/√(L·H) on the non-pad tokens (σ = init_mag);
    for t = 1..K: L_t = CE(f(E(x) + δ_{t−1}), y) / K; δ_t = δ_{t−1} + α·g/‖g‖_F (g = ∂L_t/∂δ, per example),
    projected to ‖δ‖_F ≤ max_norm when max_norm > 0. The returned loss Σ_t L_t has the gradient FreeLB
    accumulates over its K ascent steps ("free" training: one parameter update per batch).

    x: (N, L) token ids; the model must offer ``embed(ids)`` and ``forward_embeds(embeds, ids)``
    (:class:`robprune.models.text.TextClassifier`). Dropout stays as the model's mode has it.
    """

    adv_steps: int = 2
    adv_lr: float = 0.1
    init_mag: float = 0.05
    max_norm: float = 0.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not hasattr(model, "forward_embeds"):
            raise ConfigError("objective freelb needs a text model (token ids in, embeddings inside); "
                              "use train=pgd_at for images")
        embeds = model.embed(x)
        mask = (x != model.pad_id).unsqueeze(-1).to(embeds.dtype)                        # (N, L, 1)
        scale = self.init_mag / torch.sqrt(mask.sum((1, 2)) * embeds.shape[-1]).clamp_min(1.0)
        delta = (torch.rand_like(embeds) * 2 - 1) * mask * scale.view(-1, 1, 1)        # Alg. 1 line 5
        total = embeds.new_zeros(())
        for _ in range(self.adv_steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model.forward_embeds(embeds + delta, x), y) / self.adv_steps  # line 8
            total = total + loss
            (grad,) = torch.autograd.grad(loss, delta, retain_graph=True)
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)
            delta = (delta + self.adv_lr * grad / norm).detach() * mask                # line 10
            if self.max_norm > 0:                                                      # line 11: project
                over = (delta.flatten(1).norm(dim=1) / self.max_norm).clamp_min(1.0).view(-1, 1, 1)
                delta = delta / over
        return total


@OBJECTIVES.register(modality="text")
def freelb(*, adv_steps: Annotated[int, Int(1, example="2")] = 2, adv_lr: Annotated[float, Float(0, example="0.1")] = 0.1,
           init_mag: Annotated[float, Float(0, example="0.05")] = 0.05,
           max_norm: Annotated[float, Float(0, example="0.0")] = 0.0) -> FreeLB:
    if int(adv_steps) < 1:
        raise ConfigError(f"objective.adv_steps must be >= 1, got {adv_steps}; e.g. train.objective.adv_steps=2")
    for key, value in (("adv_lr", adv_lr), ("init_mag", init_mag), ("max_norm", max_norm)):
        if float(value) < 0:
            raise ConfigError(f"objective.{key} must be >= 0, got {value}; e.g. train.objective.{key}=0.1")
    return FreeLB(int(adv_steps), float(adv_lr), float(init_mag), float(max_norm))
