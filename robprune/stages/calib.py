"""The calibration sentences of a layer-wise language-model pruner (``prune.calibration``): a seeded
subset of the TRAINING split, plus a disjoint held-out subset for the reconstruction report — drawn once
and shared by every method and sparsity of a sweep (docs/methods/kr.md#step-2: 256-1024 training sentences)."""
from __future__ import annotations

import torch

from robprune.data import seeded_indices
from robprune.errors import ConfigError
from robprune.graph import Precheck, Stage, StageContext
from robprune.io import atomic_save_tensors

CALIB_FILE = "calib.safetensors"


def draw(n_total: int, n: int, heldout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration, held-out) indices: the first n and the next ``heldout`` of one seeded permutation."""
    if n + heldout > n_total:  # checked before any stage (robprune.validate_prune.check_calibration)
        raise ConfigError(f"prune.calibration.n={n} + heldout={heldout} sentences exceed the training split's {n_total}")
    perm = seeded_indices(n_total, None, seed)
    return perm[:n], perm[n:n + heldout]


def build(ctx: StageContext) -> None:
    node = ctx.cfg.prune.calibration
    calib, heldout = draw(len(ctx.data.train_y), int(node.n), int(node.heldout), int(ctx.cfg.seed))
    ids = ctx.data.train_x
    atomic_save_tensors(ctx.work / CALIB_FILE, {"ids": ids[calib].contiguous(), "heldout_ids": ids[heldout].contiguous(),
                                                "index": calib, "heldout_index": heldout})


def precheck(pc: Precheck) -> None:
    """The calibration and held-out sentences fit in the training split."""
    from robprune.validate_prune import check_calibration

    check_calibration(pc.cfg.prune, len(pc.data.train_y))


STAGE = Stage("calib", reads=("prune.calibration", "seed"), data=("train",), build=build, produces_model=False,
              when=lambda cfg: cfg.prune.get("calibration") is not None, precheck=precheck)
