"""Adversarial attacks behind one contract: ``attack(model, x, y) -> x_adv``.

x, x_adv: (N, C, H, W) pixels in [0, 1]; y: (N,) int64. Hyperparameters are bound with
functools.partial (configs: ``_target_: robprune.attacks.<name>`` with ``_partial_: true``). Every
attack leaves ``model.training``, parameters and their ``.grad`` as it found them and returns a
detached tensor on x's device. :data:`ATTACKS` maps config names to functions; the contract tests
run over all of it.
"""
from robprune.attacks.autoattack import autoattack, capture_warnings
from robprune.attacks.pgd import fgsm, pgd
from robprune.attacks.threat import L2Ball, LinfBall, make_ball

ATTACKS = {"fgsm": fgsm, "pgd": pgd, "autoattack": autoattack}

__all__ = ["ATTACKS", "L2Ball", "LinfBall", "autoattack", "capture_warnings", "fgsm", "make_ball", "pgd"]
