"""One training loop (:func:`fit`) for every stage that trains: dense training, fine-tuning, QAT.

Objectives (standard, PGD-AT, later TRADES/MART) are callables ``(model, x, y) -> loss``; optimizer
wrappers (SAM-style two-pass steps) plug in through ``optimizer.step(closure)``; masks and observers are
hooks. Adding a method is a function and a YAML file, never a new loop.
"""
from robprune.train.loop import TrainState, fit
from robprune.train.objectives import pgd_at, standard
from robprune.train.recipe import build_training, per_step, schedule_factor

__all__ = ["TrainState", "fit", "pgd_at", "standard", "build_training", "per_step", "schedule_factor"]
