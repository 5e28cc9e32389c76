"""Evaluators: adversarial robustness of image models (:func:`evaluate_robustness`), of text models
under word/character attacks (:func:`evaluate_text_robustness`), and their sanity checks
(:mod:`robprune.evaluate.checks`)."""
from robprune.evaluate.adversarial import AttackRun, evaluate_robustness
from robprune.evaluate.text import evaluate_text_robustness

__all__ = ["AttackRun", "evaluate_robustness", "evaluate_text_robustness"]
