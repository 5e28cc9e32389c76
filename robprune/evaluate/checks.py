"""Sanity checks of a robustness evaluation, each able to fail (Croce & Hein 2020, "Reliable evaluation
of adversarial robustness with an ensemble of diverse parameter-free attacks", §3 and their
flags_doc: zero gradients, black-box beating white-box, unbounded attacks must reach 0%).

Every check records its value and its threshold under ``checks``; a failing one adds
``"<check>: <reason with numbers>"`` to ``checks.failed`` and ``checks.passed = not failed``.

Thresholds (module constants):

- ``ZERO_GRAD_MAX = 0.1``: fail when more than 10% of the evaluated inputs have an exactly zero
  cross-entropy input-gradient. An honest model reaches an exactly zero gradient only where its
  softmax saturates in float32 (margins of ~100 logits), a handful of points at most; a masking
  defence (rounding, stop-gradient, saturated probabilities) zeroes most of them.
- ``LARGE_EPS_MAX_ACC = 0.05``: fail when accuracy under PGD-20 at L∞ ε = ``LARGE_EPS`` = 1 (the
  whole pixel range, so any image can be reached) exceeds 5%: the attack is not reaching points it
  provably can, i.e. its gradients are useless.
- ``BALL_ATOL + BALL_RTOL · eps``: tolerance on how far a returned adversarial example may lie
  outside its ε-ball (the attack's own norm) or outside [0, 1]. float32 rounding of x + δ moves a
  pixel by at most 6e-8, far below 1e-6; anything larger is an attack breaking its threat model.
- ``AA_GAP_MAX = 0.005``: fail when AutoAttack's robust accuracy exceeds PGD's (same norm and ε) on
  the same points by more than max(one example, 0.5%). AutoAttack contains APGD-CE, a stronger
  PGD, so being weaker than PGD-20 beyond sampling noise means it is misconfigured or fooled.
- AutoAttack's own warnings (randomised or dynamic defence, probabilities instead of logits,
  Square beating the white-box attacks, zero gradients): any one fails.
- ``catastrophic_overfitting/<stage>`` (Wong, Rice & Kolter 2020, "Fast is better than free", §5): a recipe
  with a ``monitor`` (train=fast_at) logs FGSM and PGD accuracy on a fixed batch of training examples after
  every epoch; the check fails at the first epoch whose PGD accuracy is below ``COLLAPSE_RATIO`` (0.5) of its
  best so far and at least ``COLLAPSE_MIN_DROP`` (10 points) below it while FGSM accuracy is at least what it
  was at that best epoch: the model learnt to beat the one-step attack only. It also fails when the model never
  became robust to PGD in the first place: at the last epoch FGSM accuracy exceeds PGD's by ``FGSM_ONLY_GAP``
  (20 points) or more with PGD below half of it (an honestly robust model loses a few points from FGSM to
  PGD, not most of them). A model that merely gets less robust late in training (robust overfitting, Rice
  et al. 2020) loses FGSM accuracy too and does not fire.
- Text attacks (:mod:`robprune.evaluate.text`): ``text_attack_flips`` replays every attacked text in
  a fresh batch; a "succeeded" text the model still classifies correctly, a "failed" one it gets
  wrong, or a clean prediction that disagrees with the attack's own, fails (one example is enough:
  the numbers would not be what the model does). ``text_attack_budget`` fails when any example spent
  more queries than ``query_budget`` or changed more than ``max_words_changed`` of its words
  (recounted from the texts).
- The data (robprune.data.faults, docs/concepts/data-faults.md): ``train_test_overlap``, the fraction of test
  examples identical to a training example (same decoded pixels, or the same sentence), fails above
  ``OVERLAP_MAX`` (0.5%): each such example can be answered from memory, so clean and robust accuracy are
  overstated by up to that fraction, and 0.5% is the noise ``AA_GAP_MAX`` already accepts (none of MNIST,
  CIFAR-10 or SST-2 has a single one); null for streamed images, which are not read up front.
  ``unseen_class_fraction``, the fraction of test examples whose class has no training example, fails above 0:
  the model never saw those classes, so its accuracy on them says nothing about what it learnt.
- ``prediction_collapse``: ``majority_prediction_share``, the fraction of the test examples (clean) predicted
  as the model's most-predicted class, fails above ``PREDICTION_SHARE_MAX`` (0.98) when the test labels are
  not themselves that one-sided (their commonest class at most ``LABEL_SHARE_MAX``, 0.9). A model that answers
  one class whatever the input cannot be flipped on the examples of that class, so its accuracy under attack
  is that class's share of the subset, not robustness: an 87.5%-magnitude-pruned MiniLM that called every
  SST-2 sentence positive kept 45% "under TextFooler", ten times its dense model (docs/results/kr.md#robustness).
"""
from __future__ import annotations

from typing import Any

import torch

ZERO_GRAD_MAX = 0.1  # fraction of evaluated inputs with an exactly zero input-gradient
LARGE_EPS = 1.0  # L∞ budget of the sanity attack: the whole pixel range, so accuracy must reach ~0
LARGE_EPS_MAX_ACC = 0.05  # accuracy at LARGE_EPS above this fails
BALL_ATOL = 1e-6  # pixel units: float32 rounding of x + δ is at most 6e-8 per pixel
BALL_RTOL = 1e-5  # relative to eps: rounding in the attack's norm and projection
AA_GAP_MAX = 0.005  # AutoAttack may exceed PGD's robust accuracy by max(one example, this fraction)
COLLAPSE_RATIO = 0.5  # catastrophic overfitting: monitor PGD accuracy below this fraction of its best so far ...
COLLAPSE_MIN_DROP = 0.1  # ... and at least this much below it (absolute), while FGSM accuracy did not fall
FGSM_ONLY_GAP = 0.2  # ... or, at the last epoch, FGSM accuracy this much above PGD's with PGD below half of it
OVERLAP_MAX = 0.005  # fraction of test examples identical to a training example
UNSEEN_CLASS_MAX = 0.0  # fraction of test examples whose class has no training example
PREDICTION_SHARE_MAX = 0.98  # fraction of clean test predictions in one class ...
LABEL_SHARE_MAX = 0.9  # ... fails only where the labels' commonest class is at most this share


def ball_tolerance(eps: float | None) -> float:
    return BALL_ATOL + BALL_RTOL * (eps or 0.0)


def ball_excess(x: torch.Tensor, x_adv: torch.Tensor, eps: float | None, norm: str) -> float:
    """How far x_adv lies outside {‖x_adv − x‖ ≤ eps} ∩ [0, 1]^d, in pixel units (0.0 inside).

    x, x_adv: (N, C, H, W), same device; eps: the attack's budget (None: only the [0, 1] box is
    checked); norm: 'linf' | 'l2' | 'l1' (any case, as the attack's config spells it). Measured in
    float64 on the returned examples, not taken from the attack. NaN anywhere gives inf.
    """
    if x_adv.numel() == 0:
        return 0.0
    x_adv64, delta = x_adv.double(), (x_adv.double() - x.double()).flatten(1)
    if torch.isnan(x_adv64).any():
        return float("inf")
    excess = max(0.0, -x_adv64.min().item(), x_adv64.max().item() - 1.0)
    if eps is not None:
        order = {"linf": float("inf"), "l2": 2.0, "l1": 1.0}[str(norm).lower()]
        excess = max(excess, torch.linalg.vector_norm(delta, ord=order, dim=1).max().item() - float(eps))
    return excess


def zero_grad_check(fraction: float | None, n: int) -> tuple[dict[str, Any], list[str]]:
    values = {"zero_grad_fraction": fraction, "zero_grad_fraction_max": ZERO_GRAD_MAX}
    if fraction is None or fraction <= ZERO_GRAD_MAX:
        return values, []
    return values, [f"zero_grad_fraction: {fraction:.1%} of {n} evaluated inputs have an exactly zero input "
                    f"gradient (> {ZERO_GRAD_MAX:.0%}; gradient masking)"]


def large_eps_check(acc: float | None, n: int) -> tuple[dict[str, Any], list[str]]:
    values = {"large_eps_acc": acc, "large_eps_acc_max": LARGE_EPS_MAX_ACC}
    if acc is None or acc <= LARGE_EPS_MAX_ACC:
        return values, []
    return values, [f"large_eps_acc: accuracy {acc:.1%} on {n} points under PGD-20 at L∞ eps={LARGE_EPS:g} "
                    f"(> {LARGE_EPS_MAX_ACC:.0%}; the attack cannot use the model's gradients)"]


def ball_check(name: str, excess: float, eps: float | None) -> tuple[dict[str, Any], list[str]]:
    tol = ball_tolerance(eps)
    values = {f"ball_violation/{name}": excess, f"ball_tolerance/{name}": tol}
    if excess <= tol:
        return values, []
    return values, [f"ball_violation/{name}: adversarial examples lie {excess:.3g} outside the eps={eps}-ball "
                    f"or [0, 1] (tolerance {tol:.1e})"]


def autoattack_gap_check(aa: str, pgd: str, aa_robust: torch.Tensor, pgd_robust: torch.Tensor) -> tuple[dict[str, Any], list[str]]:
    """AutoAttack vs PGD on their common points: aa_robust, pgd_robust: (m,) bool, aligned.

    Records ``autoattack_gap/<aa>_vs_<pgd>`` (AA robust accuracy minus PGD's, a fraction; > 0 means
    AA is weaker), its allowed maximum, ``pgd_only_fooled/...`` (points PGD fooled and AA did not)
    and ``n_common/...``."""
    key, m = f"{aa}_vs_{pgd}", aa_robust.numel()
    gap = (aa_robust.float().mean() - pgd_robust.float().mean()).item() if m else 0.0
    slack = max(1.0 / m, AA_GAP_MAX) if m else 0.0
    pgd_only = int((aa_robust & ~pgd_robust).sum().item())
    values = {f"autoattack_gap/{key}": gap, f"autoattack_gap_max/{key}": slack,
              f"pgd_only_fooled/{key}": pgd_only, f"n_common/{key}": m}
    if gap <= slack + 1e-12:
        return values, []
    return values, [f"autoattack_gap/{key}: {aa} robust accuracy {aa_robust.float().mean().item():.1%} > {pgd}'s "
                    f"{pgd_robust.float().mean().item():.1%} on the same {m} points (allowed {slack:.1%}); "
                    f"{pgd} fooled {pgd_only} points {aa} did not"]


def warnings_check(messages: list[str]) -> tuple[dict[str, Any], list[str]]:
    return {"autoattack_warnings": list(messages)}, [f"autoattack_warnings: {m}" for m in messages]


def text_flips_check(name: str, problems: list[str], n_replayed: int) -> tuple[dict[str, Any], list[str]]:
    """problems: one line per attacked text whose replayed prediction contradicts its result."""
    values = {f"text_attack_flips/{name}": len(problems), f"text_attack_replayed/{name}": n_replayed}
    if not problems:
        return values, []
    return values, [f"text_attack_flips/{name}: {len(problems)} of {n_replayed} attacked texts disagree with a "
                    f"fresh prediction of the model (first: {problems[0]})"]


def text_budget_check(name: str, max_queries: int, query_budget: int | None, max_words: float,
                      words_limit: float | None) -> tuple[dict[str, Any], list[str]]:
    """max_queries: most queries any example spent; max_words: largest fraction of words changed (recounted)."""
    values = {f"text_attack_max_queries/{name}": max_queries, f"text_attack_query_budget/{name}": query_budget,
              f"text_attack_max_words_changed/{name}": max_words, f"text_attack_words_limit/{name}": words_limit}
    failed = []
    if query_budget is not None and max_queries > query_budget:
        failed.append(f"text_attack_budget/{name}: an example spent {max_queries} queries > query_budget {query_budget}")
    if words_limit is not None and max_words > words_limit + 1e-9:
        failed.append(f"text_attack_budget/{name}: an example changed {max_words:.1%} of its words > "
                      f"max_words_changed {words_limit:.1%}")
    return values, failed


def overfitting_check(stage: str, rows: list[dict]) -> tuple[dict[str, Any], list[str]]:
    """rows: a training stage's per-epoch log; those with ``monitor_fgsm_acc`` and ``monitor_pgd_acc``
    (robprune.train.fast.OverfitMonitor) are checked; ({}, []) when the recipe had no monitor."""
    watched = [r for r in rows if r.get("monitor_pgd_acc") is not None and r.get("monitor_fgsm_acc") is not None]
    if not watched:
        return {}, []
    best, collapse = watched[0], None
    for row in watched:
        pgd, fgsm = float(row["monitor_pgd_acc"]), float(row["monitor_fgsm_acc"])
        if (collapse is None and pgd < COLLAPSE_RATIO * float(best["monitor_pgd_acc"])
                and float(best["monitor_pgd_acc"]) - pgd >= COLLAPSE_MIN_DROP and fgsm >= float(best["monitor_fgsm_acc"])):
            collapse = (row, best)
        if pgd > float(best["monitor_pgd_acc"]):
            best = row
    values = {f"monitor_pgd_acc_best/{stage}": float(best["monitor_pgd_acc"]),
              f"monitor_pgd_acc_final/{stage}": float(watched[-1]["monitor_pgd_acc"]),
              f"monitor_fgsm_acc_final/{stage}": float(watched[-1]["monitor_fgsm_acc"]),
              f"catastrophic_overfitting_epoch/{stage}": None if collapse is None else collapse[0].get("epoch")}
    last = watched[-1]
    pgd_last, fgsm_last = float(last["monitor_pgd_acc"]), float(last["monitor_fgsm_acc"])
    if collapse is None and fgsm_last - pgd_last >= FGSM_ONLY_GAP and pgd_last < COLLAPSE_RATIO * fgsm_last:
        values[f"catastrophic_overfitting_epoch/{stage}"] = last.get("epoch")
        return values, [f"catastrophic_overfitting/{stage}: after the last epoch ({last.get('epoch')}) FGSM accuracy on the "
                        f"monitored training examples is {fgsm_last:.1%} but PGD's {pgd_last:.1%} (best "
                        f"{float(best['monitor_pgd_acc']):.1%}): robustness to the one-step attack only (Wong et al. "
                        f"2020, §5); lower the lr or the step (attack.step_scale), or use PGD-AT"]
    if collapse is None:
        return values, []
    row, before = collapse
    return values, [f"catastrophic_overfitting/{stage}: at epoch {row.get('epoch')} PGD accuracy on the monitored "
                    f"training examples fell to {float(row['monitor_pgd_acc']):.1%} (best {float(before['monitor_pgd_acc']):.1%} "
                    f"at epoch {before.get('epoch')}) while FGSM accuracy rose to {float(row['monitor_fgsm_acc']):.1%} "
                    f"(Wong et al. 2020, §5): the model beats the one-step attack only; lower the lr or the step "
                    f"(attack.step_scale), train fewer epochs, or use PGD-AT"]


def data_checks(overlap: int | None, unseen: int, n_test: int) -> tuple[dict[str, Any], list[str]]:
    """overlap: test examples identical to a training example (None: not measured); unseen: test examples of a
    class with no training example; n_test: all test examples (robprune.data.faults.Audit)."""
    share = (lambda count: count / n_test) if n_test else (lambda count: 0.0)
    overlap_fraction = None if overlap is None else share(overlap)
    values = {"train_test_overlap": overlap_fraction, "train_test_overlap_max": OVERLAP_MAX,
              "unseen_class_fraction": share(unseen), "unseen_class_fraction_max": UNSEEN_CLASS_MAX}
    failed = []
    if overlap_fraction is not None and overlap_fraction > OVERLAP_MAX:
        failed.append(f"train_test_overlap: {overlap} of {n_test} test examples ({overlap_fraction:.1%}) are identical "
                      f"to training examples (> {OVERLAP_MAX:.1%}); accuracy on them measures memory")
    if share(unseen) > UNSEEN_CLASS_MAX:
        failed.append(f"unseen_class_fraction: {unseen} of {n_test} test examples ({share(unseen):.1%}) belong to "
                      "classes with no training example; accuracy on them says nothing about what the model learnt")
    return values, failed


def prediction_collapse_check(predicted: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, Any], list[str]]:
    """predicted, labels: (N,) int64, the model's clean predictions and the true classes of the test examples."""
    n = int(predicted.numel())
    values: dict[str, Any] = {"majority_prediction_share": None, "majority_prediction_share_max": PREDICTION_SHARE_MAX}
    if n == 0:
        return values, []
    counts = torch.bincount(predicted.long().flatten())
    top = int(counts.argmax())
    share = int(counts[top]) / n
    label_counts = torch.bincount(labels.long().flatten())
    values["majority_prediction_share"] = share
    failed = []
    if share > PREDICTION_SHARE_MAX and int(label_counts.max()) / n <= LABEL_SHARE_MAX:
        of_class = int(label_counts[top]) if top < label_counts.numel() else 0
        failed.append(f"prediction_collapse: the model predicts class {top} for {share:.1%} of the {n} test examples, "
                      f"of which {of_class / n:.1%} are that class; its accuracy under attack measures that share, not "
                      "robustness")
    return values, failed


def finish(parts: list[tuple[dict[str, Any], list[str]]]) -> dict[str, Any]:
    """Merge (values, failures) pairs into the ``checks`` dict: values, ``failed``, ``passed``."""
    checks: dict[str, Any] = {}
    failed: list[str] = []
    for values, failures in parts:
        checks.update(values)
        failed += failures
    checks["failed"], checks["passed"] = failed, not failed
    return checks
