"""Robustness evaluation: clean accuracy, robust accuracy per attack, the per-example worst case over
attacks, and automatic checks that flag an unreliable evaluation (AutoAttack's lessons: attack only
points still correct, report the worst case per example, never an average of accuracies, and look
for gradient masking).

Subsets: each attack with ``n_examples.<name>`` set sees the first n points of one seeded
permutation of the test set, so subsets nest and ``robust_acc/worst`` is computed on the common
prefix (the smallest subset), where every attack saw every point.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from omegaconf import DictConfig

from robprune.attacks import pgd
from robprune.attacks.autoattack import capture_warnings
from robprune.attacks.common import check_min, loss_and_grad, preserved_modes
from robprune.config import instantiate
from robprune.data.tensors import as_pixels, seeded_indices
from robprune.ui import track

LARGE_EPS = 1.0  # L∞ budget of the sanity attack: the whole pixel range, so accuracy must reach ~0
LARGE_EPS_MAX_ACC = 0.05  # large_eps_ok when accuracy at LARGE_EPS is at most this


def evaluate_robustness(model, x: torch.Tensor, y: torch.Tensor, eval_cfg: DictConfig, *,
                        device: torch.device | str, seed: int, progress: bool = False) -> dict[str, Any]:
    """Clean and robust accuracy of ``model`` (already on ``device``) on a test set.

    x: (N, C, H, W) float pixels in [0, 1] or uint8 in [0, 255]; y: (N,) int64 labels; both may live
    on the CPU (batches are moved to ``device``). eval_cfg: a ``conf/eval`` node (attacks,
    n_examples, batch_size, large_eps_check, large_eps_n). Returns a flat dict of fractions in [0, 1]:
    ``clean_acc``; per attack ``robust_acc/<name>``, ``clean_acc/<name>`` (on its subset),
    ``n_eval/<name>``; ``robust_acc/worst`` and ``n_eval/worst`` when there are attacks; and
    ``checks`` (a nested dict, see :func:`_checks`). Deterministic for a given ``seed``: each attack
    runs under torch's global RNG seeded with ``seed`` inside a fork, so the caller's RNG stream is
    left as it was. The model runs in eval mode; its modes are restored afterwards.
    """
    device = torch.device(device)
    x, y = as_pixels(x, what="evaluate: test images"), y.long()
    batch_size = check_min(int(eval_cfg.get("batch_size", 256)), "eval.batch_size", 1)
    attacks_cfg = eval_cfg.get("attacks") or {}
    perm = seeded_indices(x.shape[0], None, seed)
    with preserved_modes(model, eval_mode=True), capture_warnings() as aa_warnings:
        correct = _correct(model, x, y, torch.arange(x.shape[0]), batch_size, device)
        robust: dict[str, torch.Tensor] = {}
        for name in attacks_cfg:
            idx = perm[:_subset_size(eval_cfg, name, x.shape[0])]
            attack = instantiate(attacks_cfg[name], f"eval.attacks.{name}")
            robust[name] = _seeded(seed, device, lambda: _robust_flags(
                model, attack, x, y, idx, correct[idx], batch_size, device, f"eval {name}", progress))
        metrics = _accuracies(correct, perm, robust)
        metrics["checks"] = _checks(model, x, y, eval_cfg, perm, metrics, robust, batch_size, device, seed)
    metrics["checks"]["autoattack_warnings"] = list(aa_warnings)
    return metrics


def _subset_size(eval_cfg: DictConfig, name: str, n_total: int) -> int:
    """eval.n_examples.<name>: a positive int, or null/absent for the whole set; capped at n_total."""
    n = (eval_cfg.get("n_examples") or {}).get(name)
    if n is None:
        return n_total
    return min(check_min(int(n), f"eval.n_examples.{name}", 1), n_total)


def _seeded(seed: int, device: torch.device, fn: Callable[[], Any]) -> Any:
    """Run fn with torch's global RNG seeded by ``seed``, restoring the caller's RNG state after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        return fn()


def _batches(idx: torch.Tensor, batch_size: int):
    return [idx[i:i + batch_size] for i in range(0, idx.numel(), batch_size)]


@torch.no_grad()
def _correct(model, x, y, idx: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """(len(idx),) bool on the CPU: model(x[idx]) predicts y[idx]."""
    out = [model(x[b].to(device)).argmax(1).cpu() == y[b] for b in _batches(idx, batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def _robust_flags(model, attack, x, y, idx, correct, batch_size, device, description, progress) -> torch.Tensor:
    """(len(idx),) bool on the CPU: still correct under ``attack``. Only points correct on clean
    input are attacked; the others count as non-robust without spending an attack on them."""
    flags = correct.clone()
    todo = correct.nonzero().squeeze(1)  # positions within idx
    for pos in track(_batches(todo, batch_size), description, enabled=progress):
        xb, yb = x[idx[pos]].to(device), y[idx[pos]].to(device)
        x_adv = attack(model, xb, yb)
        with torch.no_grad():
            flags[pos] = (model(x_adv).argmax(1) == yb).cpu()
    return flags


def _accuracies(correct: torch.Tensor, perm: torch.Tensor, robust: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Flat accuracy dict. robust[name] is aligned with perm[:n]; the worst case is the per-example
    AND over attacks on the common prefix (Croce & Hein 2020), never an average of accuracies."""
    metrics: dict[str, Any] = {"clean_acc": _mean(correct)}
    for name, flags in robust.items():
        n = flags.numel()
        metrics[f"robust_acc/{name}"] = _mean(flags)
        metrics[f"clean_acc/{name}"] = _mean(correct[perm[:n]])
        metrics[f"n_eval/{name}"] = n
    if robust:
        m = min(flags.numel() for flags in robust.values())
        worst = torch.stack([flags[:m] for flags in robust.values()]).all(dim=0)
        metrics["robust_acc/worst"] = _mean(worst)
        metrics["n_eval/worst"] = m
    return metrics


def _mean(flags: torch.Tensor) -> float:
    return float(flags.float().mean().item()) if flags.numel() else float("nan")


def _checks(model, x, y, eval_cfg, perm, metrics, robust, batch_size, device, seed) -> dict[str, Any]:
    """robust_le_clean: every attack's robust accuracy ≤ clean accuracy on its subset.
    autoattack_le_pgd: AutoAttack no weaker than PGD at the same norm and eps on their common
    subset (one example of slack), None when not both present. zero_grad_fraction: fraction of
    evaluated clean inputs whose CE input-gradient is exactly zero (gradient masking; None without
    attacks). large_eps_acc / large_eps_ok: accuracy under PGD-20 at L∞ eps = 1 (must be ~0), None
    when eval.large_eps_check is false. passed: every boolean check that ran is true."""
    checks: dict[str, Any] = {
        "robust_le_clean": all(metrics[f"robust_acc/{n}"] <= metrics[f"clean_acc/{n}"] for n in robust),
        "autoattack_le_pgd": _autoattack_le_pgd(eval_cfg, robust),
        "zero_grad_fraction": None, "large_eps_acc": None, "large_eps_ok": None,
    }
    if robust:
        n_max = max(flags.numel() for flags in robust.values())
        checks["zero_grad_fraction"] = _zero_grad_fraction(model, x, y, perm[:n_max], batch_size, device)
    if eval_cfg.get("large_eps_check", True):
        idx = perm[:check_min(int(eval_cfg.get("large_eps_n", 100)), "eval.large_eps_n", 1)]
        attack = lambda model, xb, yb: pgd(model, xb, yb, eps=LARGE_EPS, steps=20, early_stop=True)  # noqa: E731
        flags = _seeded(seed, device, lambda: _robust_flags(
            model, attack, x, y, idx, torch.ones(idx.numel(), dtype=torch.bool), batch_size, device, "eval large-eps check", False))
        checks["large_eps_acc"] = _mean(flags)
        checks["large_eps_ok"] = checks["large_eps_acc"] <= LARGE_EPS_MAX_ACC
    checks["passed"] = all(v for k, v in checks.items() if isinstance(v, bool))
    return checks


def _attack_kind(cfg) -> tuple[str, str, float] | None:
    """('autoattack' | 'pgd', norm lower-cased, eps) for an attack config, else None."""
    kind = str(cfg.get("_target_", "")).rsplit(".", 1)[-1]
    if kind not in ("autoattack", "pgd"):
        return None
    return kind, str(cfg.get("norm", "linf")).lower(), float(cfg.get("eps"))


def _autoattack_le_pgd(eval_cfg, robust: dict[str, torch.Tensor]) -> bool | None:
    kinds = {name: _attack_kind(eval_cfg.attacks[name]) for name in robust}
    pairs = [(a, p) for a, ka in kinds.items() for p, kp in kinds.items()
             if ka and kp and ka[0] == "autoattack" and kp[0] == "pgd" and ka[1:] == kp[1:]]
    if not pairs:
        return None
    ok = True
    for a, p in pairs:
        m = min(robust[a].numel(), robust[p].numel())
        if m:
            ok &= _mean(robust[a][:m]) <= _mean(robust[p][:m]) + 1.0 / m  # slack: one example
    return ok


def _zero_grad_fraction(model, x, y, idx: torch.Tensor, batch_size: int, device) -> float:
    """Fraction of x[idx] whose cross-entropy gradient w.r.t. the input is exactly zero everywhere."""
    zero = 0
    for b in _batches(idx, batch_size):
        _, _, grad = loss_and_grad(model, x[b].to(device), y[b].to(device), "ce")
        zero += int((grad.flatten(1).abs().amax(dim=1) == 0).sum().item())
    return zero / max(idx.numel(), 1)

