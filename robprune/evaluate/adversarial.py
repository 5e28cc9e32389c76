"""Robustness evaluation: clean accuracy, robust accuracy per attack, the per-example worst case over
attacks, and the sanity checks of :mod:`robprune.evaluate.checks` (Croce & Hein 2020's lessons:
attack only points still correct, report the worst case per example, never an average of
accuracies, and look for gradient masking).

Subsets: each attack with ``n_examples.<name>`` set sees the first n points of one seeded
permutation of the test set, so subsets nest and ``robust_acc/worst`` is computed on the common
prefix (the smallest subset), where every attack saw every point.

Attacks that follow the contract ``attack(model, x, y) -> x_adv`` run per evaluation batch; an
attack whose function carries ``whole_subset`` (AutoAttack) runs once over its whole subset, so its
own checks see every point, and reports the flags after each of its sub-attacks.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from omegaconf import DictConfig

from robprune.attacks import pgd
from robprune.attacks.autoattack import capture_warnings
from robprune.attacks.common import check_min, loss_and_grad, preserved_modes
from robprune.config import instantiate
from robprune.data.tensors import as_pixels, seeded_indices
from robprune.evaluate import checks
from robprune.io import atomic_save_tensors
from robprune.ui import track


class AttackRun(NamedTuple):
    """robust: (n,) bool aligned with the subset perm[:n], still correct under the attack;
    ball_excess: how far its returned examples left the ε-ball or [0, 1] (pixel units, 0 inside);
    after: sub-attack -> (n,) bool after it and those before it (AutoAttack only, else empty)."""

    robust: torch.Tensor
    ball_excess: float
    after: dict[str, torch.Tensor]


def evaluate_robustness(model, x: torch.Tensor, y: torch.Tensor, eval_cfg: DictConfig, *,
                        device: torch.device | str, seed: int, progress: bool = False,
                        work: Path | None = None) -> dict[str, Any]:
    """Clean and robust accuracy of ``model`` (already on ``device``) on a test set.

    x: (N, C, H, W) float pixels in [0, 1] or uint8 in [0, 255]; y: (N,) int64 labels; both may live
    on the CPU (batches are moved to ``device``). eval_cfg: a ``conf/eval`` node (attacks,
    n_examples, batch_size, large_eps_check, large_eps_n). work: the eval stage's work folder,
    persistent across a kill (None: nothing is kept); finished attacks' flags go to
    ``work/flags/<name>.safetensors`` and AutoAttack's progress to
    ``work/autoattack/<name>.state.json``, so a rerun after a kill resumes with the same numbers.
    Returns a flat dict of fractions in [0, 1]: ``clean_acc``; per attack ``robust_acc/<name>``,
    ``clean_acc/<name>`` (on its subset), ``n_eval/<name>``; for AutoAttack also
    ``robust_acc/<name>/<sub-attack>`` after each sub-attack (non-increasing in run order);
    ``robust_acc/worst`` and ``n_eval/worst`` when there are attacks; and ``checks`` (see
    :mod:`robprune.evaluate.checks`: values, thresholds, ``failed`` reasons, ``passed``).
    Deterministic for a given ``seed``: each attack runs under torch's global RNG seeded with
    ``seed`` inside a fork, so the caller's RNG stream is left as it was. The model runs in eval
    mode; its modes are restored afterwards.
    """
    device = torch.device(device)
    x, y = as_pixels(x, what="evaluate: test images"), y.long()
    batch_size = check_min(int(eval_cfg.get("batch_size", 256)), "eval.batch_size", 1)
    attacks_cfg = eval_cfg.get("attacks") or {}
    perm = seeded_indices(x.shape[0], None, seed)
    with preserved_modes(model, eval_mode=True), capture_warnings() as aa_warnings:
        correct = _correct(model, x, y, torch.arange(x.shape[0]), batch_size, device)
        runs: dict[str, AttackRun] = {}
        for name in attacks_cfg:
            idx = perm[:_subset_size(eval_cfg, name, x.shape[0])]
            runs[name] = _seeded(seed, device, lambda: _run_attack(
                model, name, attacks_cfg[name], x, y, idx, correct[idx], batch_size, device, progress, work))
        metrics = _accuracies(correct, perm, {name: run.robust for name, run in runs.items()})
        for name, run in runs.items():
            metrics.update({f"robust_acc/{name}/{sub}": _mean(flags) for sub, flags in run.after.items()})
        parts = _check_parts(model, x, y, eval_cfg, perm, runs, batch_size, device, seed)
    metrics["checks"] = checks.finish(parts + [checks.warnings_check(list(aa_warnings))])
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


def _threat(cfg) -> tuple[float | None, str]:
    """(eps, norm) from an attack config (autoattack spells the norm Linf/L2/L1); eps None if absent."""
    eps = cfg.get("eps") if hasattr(cfg, "get") else None
    norm = cfg.get("norm", "linf") if hasattr(cfg, "get") else "linf"
    return (None if eps is None else float(eps)), str(norm or "linf").lower()


def _whole_subset(attack) -> Callable | None:
    """The attack's whole-subset runner (``fn.whole_subset``) with the config's arguments bound, or None."""
    run = getattr(getattr(attack, "func", attack), "whole_subset", None)
    if run is None:
        return None
    return functools.partial(run, *getattr(attack, "args", ()), **getattr(attack, "keywords", {}))


def _run_attack(model, name, cfg, x, y, idx, correct, batch_size, device, progress, work) -> AttackRun:
    """One configured attack on x[idx] (correct: (len(idx),) bool clean flags), or its saved result."""
    flags_path = None if work is None else Path(work) / "flags" / f"{name}.safetensors"
    tag = _tag(idx, correct)
    saved = _load_run(flags_path, tag)
    if saved is not None:
        return saved
    attack = instantiate(cfg, f"eval.attacks.{name}")
    eps, norm = _threat(cfg)
    whole = _whole_subset(attack)
    if whole is not None:
        state = None if work is None else Path(work) / "autoattack" / f"{name}.state.json"
        run = _run_whole(model, whole, x, y, idx, correct, batch_size, device, (eps, norm), state, f"eval {name}", progress)
    else:
        run = AttackRun(*_batched_flags(model, attack, x, y, idx, correct, batch_size, device,
                                        f"eval {name}", progress, (eps, norm)), {})
    _save_run(flags_path, tag, run)
    return run


def _batched_flags(model, attack, x, y, idx, correct, batch_size, device, description, progress,
                   threat) -> tuple[torch.Tensor, float]:
    """((len(idx),) bool still correct under ``attack``, ball excess of its examples). Only points
    correct on clean input are attacked; the others count as non-robust without an attack."""
    flags, excess = correct.clone(), 0.0
    todo = correct.nonzero().squeeze(1)  # positions within idx
    for pos in track(_batches(todo, batch_size), description, enabled=progress):
        xb, yb = x[idx[pos]].to(device), y[idx[pos]].to(device)
        x_adv = attack(model, xb, yb)
        excess = max(excess, checks.ball_excess(xb, x_adv, *threat))
        with torch.no_grad():
            flags[pos] = (model(x_adv).argmax(1) == yb).cpu()
    return flags, excess


def _run_whole(model, run, x, y, idx, correct, batch_size, device, threat, state, label, progress) -> AttackRun:
    """A whole-subset attack once over the clean-correct points of x[idx]; the final flags come from
    the returned examples (checked here), the per-sub-attack flags from the attack."""
    pos = correct.nonzero().squeeze(1)
    xs, ys = x[idx[pos]].to(device), y[idx[pos]].to(device)
    for _ in track([xs], label, enabled=progress):
        result = run(model, xs, ys, state_path=state, label=label)
    flags = correct.clone()
    flags[pos] = _correct(model, result.x_adv, ys.cpu(), torch.arange(pos.numel()), batch_size, device)
    after = {}
    for sub, sub_flags in result.robust_after.items():
        after[sub] = correct.clone()
        after[sub][pos] = sub_flags.cpu()
    return AttackRun(flags, checks.ball_excess(xs, result.x_adv, *threat), after)


def _tag(idx: torch.Tensor, correct: torch.Tensor) -> str:
    return hashlib.sha256(idx.numpy().tobytes() + correct.numpy().tobytes()).hexdigest()


def _save_run(path: Path | None, tag: str, run: AttackRun) -> None:
    """work/flags/<name>.safetensors: robust and after/<sub> flags as uint8, ball excess in metadata."""
    if path is None:
        return
    tensors = {"robust": run.robust.to(torch.uint8), **{f"after/{s}": f.to(torch.uint8) for s, f in run.after.items()}}
    meta = {"tag": tag, "ball_excess": repr(run.ball_excess), "after": ",".join(run.after)}
    atomic_save_tensors(path, tensors, metadata=meta)


def _load_run(path: Path | None, tag: str) -> AttackRun | None:
    """The saved run at path if it was made for the same subset and clean flags, else None."""
    if path is None or not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("tag") != tag:
            return None
        subs = [s for s in meta.get("after", "").split(",") if s]
        after = {s: f.get_tensor(f"after/{s}").bool() for s in subs}
        return AttackRun(f.get_tensor("robust").bool(), float(meta["ball_excess"]), after)


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


def _check_parts(model, x, y, eval_cfg, perm, runs: dict[str, AttackRun], batch_size, device, seed) -> list:
    """(values, failures) of every check that measures the model or the attacks' results."""
    n_max = max((run.robust.numel() for run in runs.values()), default=0)
    zero = _zero_grad_fraction(model, x, y, perm[:n_max], batch_size, device) if runs else None
    parts = [checks.zero_grad_check(zero, n_max), _large_eps(model, x, y, eval_cfg, perm, batch_size, device, seed)]
    for name, run in runs.items():
        parts.append(checks.ball_check(name, run.ball_excess, _threat(eval_cfg.attacks[name])[0]))
    for aa, p in _autoattack_pgd_pairs(eval_cfg, runs):
        m = min(runs[aa].robust.numel(), runs[p].robust.numel())
        parts.append(checks.autoattack_gap_check(aa, p, runs[aa].robust[:m], runs[p].robust[:m]))
    return parts


def _large_eps(model, x, y, eval_cfg, perm, batch_size, device, seed):
    """PGD-20 at L∞ eps = LARGE_EPS on eval.large_eps_n points (all attacked); skipped when
    eval.large_eps_check is false."""
    if not eval_cfg.get("large_eps_check", True):
        return checks.large_eps_check(None, 0)
    idx = perm[:check_min(int(eval_cfg.get("large_eps_n", 100)), "eval.large_eps_n", 1)]
    attack = functools.partial(pgd, eps=checks.LARGE_EPS, steps=20, early_stop=True)
    flags, _ = _seeded(seed, device, lambda: _batched_flags(
        model, attack, x, y, idx, torch.ones(idx.numel(), dtype=torch.bool), batch_size, device,
        "eval large-eps check", False, (None, "linf")))
    return checks.large_eps_check(_mean(flags), idx.numel())


def _attack_kind(cfg) -> tuple[str, str, float] | None:
    """('autoattack' | 'pgd', norm lower-cased, eps) for an attack config, else None."""
    kind = str(cfg.get("_target_", "")).rsplit(".", 1)[-1]
    if kind not in ("autoattack", "pgd") or cfg.get("eps") is None:
        return None
    return kind, str(cfg.get("norm", "linf")).lower(), float(cfg.get("eps"))


def _autoattack_pgd_pairs(eval_cfg, runs) -> list[tuple[str, str]]:
    """(AutoAttack name, PGD name) pairs with the same norm and eps."""
    kinds = {name: _attack_kind(eval_cfg.attacks[name]) for name in runs}
    return [(a, p) for a, ka in kinds.items() for p, kp in kinds.items()
            if ka and kp and ka[0] == "autoattack" and kp[0] == "pgd" and ka[1:] == kp[1:]]


def _zero_grad_fraction(model, x, y, idx: torch.Tensor, batch_size: int, device) -> float:
    """Fraction of x[idx] whose cross-entropy gradient w.r.t. the input is exactly zero everywhere."""
    zero = 0
    for b in _batches(idx, batch_size):
        _, _, grad = loss_and_grad(model, x[b].to(device), y[b].to(device), "ce")
        zero += int((grad.flatten(1).abs().amax(dim=1) == 0).sum().item())
    return zero / max(idx.numel(), 1)
