"""Adversarial attacks behind one contract: ``attack(model, x, y) -> x_adv``.

x, x_adv: (N, C, H, W) pixels in [0, 1]; y: (N,) int64. Hyperparameters are bound with
functools.partial (configs: ``_target_: robprune.attacks.<name>`` with ``_partial_: true``). Every
attack leaves ``model.training``, parameters and their ``.grad`` as it found them and returns a
detached tensor on x's device. Each attack registers itself in :data:`robprune.registry.ATTACKS` under its
conf file's stem (``conf/attack/<name>.yaml``), with its options declared in its signature
(``Annotated[type, spec]``: the schema the config is checked against); the contract tests run over every
registered one (docs/how-to/add-attack.md).
"""
from robprune.attacks.autoattack import autoattack, capture_warnings
from robprune.attacks.pgd import fgsm, pgd
from robprune.attacks.threat import L2Ball, LinfBall, make_ball

__all__ = ["L2Ball", "LinfBall", "autoattack", "capture_warnings", "fgsm", "make_ball", "pgd"]
