"""Evaluators: adversarial robustness (:func:`evaluate_robustness`) and its sanity checks
(:mod:`robprune.evaluate.checks`)."""
from robprune.evaluate.adversarial import AttackRun, evaluate_robustness

__all__ = ["AttackRun", "evaluate_robustness"]
