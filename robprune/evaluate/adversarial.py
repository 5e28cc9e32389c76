"""Robustness evaluation: clean accuracy, robust accuracy per attack, the per-example worst case over
attacks, and the sanity checks of :mod:`robprune.evaluate.checks` (Croce & Hein 2020's lessons:
attack only points still correct, report the worst case per example, never an average of
accuracies, and look for gradient masking).

Subsets: each attack with ``n_examples.<name>`` set sees the first n points of one seeded
permutation of the test set, so subsets nest and ``robust_acc/worst`` is computed on the common
prefix (the smallest subset), where every attack saw every point.

Blocks (:mod:`robprune.evaluate.blocks`): the permutation is cut into blocks of ``eval.block_size``
points, and each block is evaluated on its own under its block seed: the clean flags of its points,
every attack on those of its points inside the attack's subset, the zero-gradient and large-eps
checks on theirs. :func:`robustness_blocks` runs one data-parallel rank's blocks,
:func:`robustness_metrics` joins every block's per-example outcomes in block order into the metrics;
:func:`evaluate_robustness` does both in one process.

Attacks that follow the contract ``attack(model, x, y) -> x_adv`` run per evaluation batch; an
attack whose function carries ``whole_subset`` (AutoAttack) runs once over each block of its subset,
so its own checks see every point of the block, and reports the flags after each of its sub-attacks.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import logging
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
from robprune.evaluate.blocks import Block, block_seed, block_size, blocks, owned
from robprune.io import DamagedFile, atomic_save_sealed_tensors, load_sealed_tensors, set_aside
from robprune.ui import track

log = logging.getLogger("robprune")


class AttackRun(NamedTuple):
    """robust: (n,) bool aligned with the points it ran on (the subset perm[:n], or a block's share of
    it), still correct under the attack; ball_excess: how far its returned examples left the ε-ball or
    [0, 1] (pixel units, 0 inside); after: sub-attack -> (n,) bool after it and those before it
    (AutoAttack only, else empty)."""

    robust: torch.Tensor
    ball_excess: float
    after: dict[str, torch.Tensor]


class BlockResult(NamedTuple):
    """One block's per-example outcomes, each aligned with its positions of the permutation. clean:
    (stop - start,) bool; runs: attack -> its run on the block's positions inside its subset (an attack
    whose subset ends before the block is absent); zero_grad: bool, an exactly zero input gradient, on
    the positions inside the largest subset; large_eps: bool, still correct under the large-eps PGD, on
    those inside eval.large_eps_n (empty when the check is off); warnings: AutoAttack's check warnings
    raised in the block, in order."""

    index: int
    clean: torch.Tensor
    runs: dict[str, AttackRun]
    zero_grad: torch.Tensor
    large_eps: torch.Tensor
    warnings: list[str]
    predicted: torch.Tensor  # (stop - start,) int64: the clean predictions (checks.prediction_collapse_check)
    labels: torch.Tensor  # (stop - start,) int64: their true classes


class _Plan(NamedTuple):
    batch_size: int
    sizes: dict[str, int]  # attack -> its subset size
    large_eps_n: int  # points of the large-eps check; 0 when it is off


def evaluate_robustness(model, x: torch.Tensor, y: torch.Tensor, eval_cfg: DictConfig, *,
                        device: torch.device | str, seed: int, progress: bool = False,
                        work: Path | None = None) -> dict[str, Any]:
    """Clean and robust accuracy of ``model`` (already on ``device``) on a test set, every block in this process.

    x: (N, C, H, W) float pixels in [0, 1] or uint8 in [0, 255]; y: (N,) int64 labels; both may live
    on the CPU (batches are moved to ``device``). eval_cfg: a ``conf/eval`` node (attacks,
    n_examples, batch_size, block_size, large_eps_check, large_eps_n). work: the eval stage's work
    folder, persistent across a kill (None: nothing is kept); finished attacks' flags go to
    ``work/flags/<name>/block<k>.safetensors`` and AutoAttack's progress to
    ``work/autoattack/<name>/block<k>.state.json``, so a rerun after a kill resumes with the same numbers.
    Returns a flat dict of fractions in [0, 1]: ``clean_acc``; per attack ``robust_acc/<name>``,
    ``clean_acc/<name>`` (on its subset), ``n_eval/<name>``; for AutoAttack also
    ``robust_acc/<name>/<sub-attack>`` after each sub-attack (non-increasing in run order);
    ``robust_acc/worst`` and ``n_eval/worst`` when there are attacks; and ``checks`` (see
    :mod:`robprune.evaluate.checks`: values, thresholds, ``failed`` reasons, ``passed``).
    Deterministic for a given ``seed``: each attack runs on each block under torch's global RNG seeded
    with the block's seed (block 0: ``seed``) inside a fork, so the caller's RNG stream is left as it
    was. The model runs in eval mode; its modes are restored afterwards.
    """
    return robustness_metrics(eval_cfg, robustness_blocks(model, x, y, eval_cfg, device=device, seed=seed,
                                                          progress=progress, work=work))


def robustness_blocks(model, x: torch.Tensor, y: torch.Tensor, eval_cfg: DictConfig, *, device: torch.device | str,
                      seed: int, rank: int = 0, world: int = 1, progress: bool = False,
                      work: Path | None = None) -> list[BlockResult]:
    """The blocks of rank ``rank`` of ``world`` (k % world == rank; all of them for world 1), in order.
    Arguments as :func:`evaluate_robustness`; give ``work`` to one rank only (it writes there)."""
    device = torch.device(device)
    x, y = as_pixels(x, what="evaluate: test images"), y.long()
    plan = _plan(eval_cfg, x.shape[0])
    perm = seeded_indices(x.shape[0], None, seed)
    with preserved_modes(model, eval_mode=True):
        return [_block(model, x, y, perm[b.start:b.stop], b, eval_cfg, plan, device, progress, work)
                for b in owned(blocks(x.shape[0], block_size(eval_cfg), seed), rank, world)]


def robustness_metrics(eval_cfg: DictConfig, parts: list[BlockResult]) -> dict[str, Any]:
    """The metrics of :func:`evaluate_robustness` from every block's result (in any order: joined by index)."""
    parts = sorted(parts, key=lambda part: part.index)
    assert [p.index for p in parts] == list(range(len(parts))), "every block's result is needed"
    runs = {name: _joined([p.runs[name] for p in parts if name in p.runs]) for name in (eval_cfg.get("attacks") or {})}
    metrics = _accuracies(_cat([p.clean for p in parts]), {name: run.robust for name, run in runs.items()})
    for name, run in runs.items():
        metrics.update({f"robust_acc/{name}/{sub}": _mean(flags) for sub, flags in run.after.items()})
    zero = _cat([p.zero_grad for p in parts]) if runs else None
    large = _cat([p.large_eps for p in parts]) if eval_cfg.get("large_eps_check", True) else None
    warnings = list(dict.fromkeys(w for p in parts for w in p.warnings))  # unique, in block order
    collapse = checks.prediction_collapse_check(_cat([p.predicted for p in parts]), _cat([p.labels for p in parts]))
    metrics["checks"] = checks.finish(_check_parts(eval_cfg, runs, zero, large) + [checks.warnings_check(warnings), collapse])
    return metrics


def _plan(eval_cfg: DictConfig, n_total: int) -> _Plan:
    batch_size = check_min(int(eval_cfg.get("batch_size", 256)), "eval.batch_size", 1)
    sizes = {name: _subset_size(eval_cfg, name, n_total) for name in (eval_cfg.get("attacks") or {})}
    large = check_min(int(eval_cfg.get("large_eps_n", 100)), "eval.large_eps_n", 1) \
        if eval_cfg.get("large_eps_check", True) else 0
    return _Plan(batch_size, sizes, large)


def _block(model, x, y, pos: torch.Tensor, block: Block, eval_cfg, plan: _Plan, device, progress,
           work) -> BlockResult:
    """Every measurement on one block; pos = perm[block.start:block.stop] (test-set indices)."""
    batch_size = plan.batch_size
    with capture_warnings() as warnings:
        predicted, labels = _predict(model, x, pos, batch_size, device), y[pos].long().cpu()
        clean = predicted == labels
        runs: dict[str, AttackRun] = {}
        for name, n in plan.sizes.items():
            m = block.clip(n)
            if m:
                runs[name] = _seeded(block.seed, device, functools.partial(
                    _run_attack, model, name, eval_cfg.attacks[name], x, y, pos[:m], clean[:m], block, batch_size,
                    device, progress, work))
        zero = _zero_grad_flags(model, x, y, pos[:block.clip(max(plan.sizes.values(), default=0))], batch_size, device)
        large = _large_eps(model, x, y, pos[:block.clip(plan.large_eps_n)], block.seed, batch_size, device)
    return BlockResult(block.index, clean, runs, zero, large, list(warnings), predicted, labels)


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
def _predict(model, x, idx: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """(len(idx),) int64 on the CPU: the classes model(x[idx]) predicts."""
    out = [model(x[b].to(device)).argmax(1).cpu() for b in _batches(idx, batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _correct(model, x, y, idx: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """(len(idx),) bool on the CPU: model(x[idx]) predicts y[idx]."""
    return _predict(model, x, idx, batch_size, device) == y[idx].cpu()


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


def _run_attack(model, name, cfg, x, y, idx, correct, block: Block, batch_size, device, progress, work) -> AttackRun:
    """One configured attack on x[idx], the block's points inside its subset (correct: (len(idx),) bool
    clean flags), or its saved result."""
    folder = None if work is None else Path(work)
    flags_path = None if folder is None else folder / "flags" / name / f"block{block.index}.safetensors"
    tag = _tag(idx, correct)
    saved = _load_run(flags_path, tag)
    if saved is not None:
        return saved
    attack = instantiate(cfg, f"eval.attacks.{name}")
    eps, norm = _threat(cfg)
    whole = _whole_subset(attack)
    label = f"eval {name}" if block.index == 0 else f"eval {name} block {block.index}"
    if whole is not None:
        state = None if folder is None else folder / "autoattack" / name / f"block{block.index}.state.json"
        run = _run_whole(model, _block_seeded(whole, block), x, y, idx, correct, batch_size, device, (eps, norm),
                         state, label, progress)
    else:
        run = AttackRun(*_batched_flags(model, attack, x, y, idx, correct, batch_size, device, label, progress,
                                        (eps, norm)), {})
    _save_run(flags_path, tag, run)
    return run


def _block_seeded(run: Callable, block: Block) -> Callable:
    """A whole-subset runner whose own ``seed`` argument is derived for block k > 0 as torch's seed is
    (:func:`robprune.evaluate.blocks.block_seed`); a null seed stays null (then the runner draws it from
    torch's block-seeded RNG)."""
    param = inspect.signature(run).parameters.get("seed")  # the config's value, else the runner's default
    if block.index == 0 or param is None or param.default in (None, inspect.Parameter.empty):
        return run
    return functools.partial(run, seed=block_seed(int(param.default), block.index))


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
    """work/flags/<name>/block<k>.safetensors (sealed): robust and after/<sub> flags as uint8, ball excess in metadata."""
    if path is None:
        return
    tensors = {"robust": run.robust.to(torch.uint8), **{f"after/{s}": f.to(torch.uint8) for s, f in run.after.items()}}
    meta = {"tag": tag, "ball_excess": repr(run.ball_excess), "after": ",".join(run.after)}
    atomic_save_sealed_tensors(path, tensors, metadata=meta)


def _load_run(path: Path | None, tag: str) -> AttackRun | None:
    """The saved run at path if it was made for the same subset and clean flags, else None; a damaged file
    is set aside (``*.corrupt-<time>``, logged) and the attack runs again."""
    if path is None or not path.is_file():
        return None
    try:
        tensors, meta = load_sealed_tensors(path)
        if meta.get("tag") != tag:
            return None
        subs = [s for s in meta.get("after", "").split(",") if s]
        return AttackRun(tensors["robust"].bool(), float(meta["ball_excess"]), {s: tensors[f"after/{s}"].bool() for s in subs})
    except DamagedFile as err:
        log.warning("saved attack flags %s are damaged (%s); moved to %s, attacking that block again", path,
                    err.reason, set_aside(path).name)
        return None


def _accuracies(clean: torch.Tensor, robust: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Flat accuracy dict. clean: (N,) bool aligned with the permutation; robust[name] with its prefix
    perm[:n]; the worst case is the per-example AND over attacks on the common prefix (Croce & Hein
    2020), never an average of accuracies."""
    metrics: dict[str, Any] = {"clean_acc": _mean(clean)}
    for name, flags in robust.items():
        n = flags.numel()
        metrics[f"robust_acc/{name}"] = _mean(flags)
        metrics[f"clean_acc/{name}"] = _mean(clean[:n])
        metrics[f"n_eval/{name}"] = n
    if robust:
        m = min(flags.numel() for flags in robust.values())
        worst = torch.stack([flags[:m] for flags in robust.values()]).all(dim=0)
        metrics["robust_acc/worst"] = _mean(worst)
        metrics["n_eval/worst"] = m
    return metrics


def _cat(flags: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


def _joined(runs: list[AttackRun]) -> AttackRun:
    """One attack's block runs, in block order, as one run over its subset (the ball excess is their max)."""
    after = {sub: _cat([run.after[sub] for run in runs]) for sub in (runs[0].after if runs else {})}
    return AttackRun(_cat([run.robust for run in runs]), max((run.ball_excess for run in runs), default=0.0), after)


def _mean(flags: torch.Tensor) -> float:
    return float(flags.float().mean().item()) if flags.numel() else float("nan")


def _check_parts(eval_cfg, runs: dict[str, AttackRun], zero: torch.Tensor | None,
                 large: torch.Tensor | None) -> list:
    """(values, failures) of every check that measures the model or the attacks' results. zero: the
    zero-gradient flags on the largest subset (None: no attacks); large: the large-eps PGD's flags
    (None: the check is off)."""
    n_max = max((run.robust.numel() for run in runs.values()), default=0)
    fraction = None if zero is None else int(zero.sum()) / max(zero.numel(), 1)
    parts = [checks.zero_grad_check(fraction, n_max),
             checks.large_eps_check(None, 0) if large is None else checks.large_eps_check(_mean(large), large.numel())]
    for name, run in runs.items():
        parts.append(checks.ball_check(name, run.ball_excess, _threat(eval_cfg.attacks[name])[0]))
    for aa, p in _autoattack_pgd_pairs(eval_cfg, runs):
        m = min(runs[aa].robust.numel(), runs[p].robust.numel())
        parts.append(checks.autoattack_gap_check(aa, p, runs[aa].robust[:m], runs[p].robust[:m]))
    return parts


def _large_eps(model, x, y, idx: torch.Tensor, seed: int, batch_size: int, device) -> torch.Tensor:
    """(len(idx),) bool: still correct under PGD-20 at L∞ eps = LARGE_EPS, every point attacked, under
    torch's RNG seeded with ``seed`` (the block's)."""
    if idx.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    attack = functools.partial(pgd, eps=checks.LARGE_EPS, steps=20, early_stop=True)
    flags, _ = _seeded(seed, device, lambda: _batched_flags(
        model, attack, x, y, idx, torch.ones(idx.numel(), dtype=torch.bool), batch_size, device,
        "eval large-eps check", False, (None, "linf")))
    return flags


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


def _zero_grad_flags(model, x, y, idx: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """(len(idx),) bool: x[idx]'s cross-entropy gradient w.r.t. the input is exactly zero everywhere."""
    out = []
    for b in _batches(idx, batch_size):
        _, _, grad = loss_and_grad(model, x[b].to(device), y[b].to(device), "ce")
        out.append((grad.flatten(1).abs().amax(dim=1) == 0).cpu())
    return _cat(out)
