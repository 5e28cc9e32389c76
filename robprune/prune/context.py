"""What a pruning method may use besides the model: :class:`PruneContext`.

The pipeline's prune stage builds one per run; tests build them by hand. Everything in it is plain data
(tensors, numbers, the parsed ``scores.json``), so a method stays a function of (model, context, options).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

SCORES_FILE, CALIB_FILE = "scores.json", "calib.safetensors"


@dataclass
class PruneContext:
    """Runtime inputs of a pruning method.

    example_inputs: (N, C, H, W) pixels in [0, 1]; only the shape matters, the first example traces
      the dependency graph.
    calib_x, calib_y: the fixed calibration set (MRPF, docs/methods/mrpf.md#step-2: adversarial examples on a seeded
      subset of the TRAINING split, made once on the dense model): (M, C, H, W) in [0, 1] and (M,)
      int64; None when the method's config has no ``scores`` node. Taylor importance needs them.
    device: where gradient computations on the calibration set run (the cut itself runs on the CPU).
    seed: the prune stage's seed (random importance draws from it).
    scores: the parsed ``scores.json`` of the scores stage (per-layer MRS values), or None.
    train: ``fn(model, train_node, hooks) -> per-epoch log`` running the one training loop on the training
      split, for methods that prune while training (``prune=adasap``; the prune_train stage sets it), or None.
    calib_ids, heldout_ids: layer-wise language-model pruners' calibration sentences and the disjoint
      held-out ones for the reconstruction report, (M, L) int token ids right-padded (the calib stage's
      draw from the training split), or None.
    progress: draw progress bars.
    """

    example_inputs: torch.Tensor
    calib_x: torch.Tensor | None = None
    calib_y: torch.Tensor | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    scores: dict | None = None
    train: Callable | None = None
    calib_ids: torch.Tensor | None = None
    heldout_ids: torch.Tensor | None = None
    progress: bool = False

    def layer_mrs(self) -> dict[str, float]:
        """{layer name: MRS} from the scores stage ({} without scores or with a calibration-only record)."""
        return {row["name"]: row["mrs"] for row in (self.scores or {}).get("layers") or []}

    @classmethod
    def from_stage(cls, example_inputs: torch.Tensor, *, scores_dir: Path | None, device: torch.device,
                   seed: int, calib_dir: Path | None = None, progress: bool = False) -> "PruneContext":
        """Context for the pipeline's prune stage; reads scores.json and calib.safetensors from
        ``scores_dir`` (the scores stage's output), the calibration sentences from ``calib_dir`` (the
        calib stage's), when given."""
        from safetensors.torch import load_file

        if calib_dir is not None:
            sentences = load_file(str(Path(calib_dir) / CALIB_FILE))
            return cls(example_inputs, device=device, seed=seed, calib_ids=sentences["ids"],
                       heldout_ids=sentences["heldout_ids"], progress=progress)
        if scores_dir is None:
            return cls(example_inputs, device=device, seed=seed, progress=progress)

        scores = json.loads((Path(scores_dir) / SCORES_FILE).read_text())
        calib = load_file(str(Path(scores_dir) / CALIB_FILE))
        return cls(example_inputs, calib_x=calib["x_adv"], calib_y=calib["y"], device=device, seed=seed,
                   scores=scores)
