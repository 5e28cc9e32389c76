"""Range observers for activation quantisation, as modules with buffers (saved in checkpoints).

- ``minmax`` (PTQ calibration): the running minimum and maximum of everything observed.
- ``ema`` (QAT): an exponential moving average of each batch's min and max with decay d,
  r ← d·r + (1 − d)·r_batch (Jacob et al. 2018, §3.1); the first batch sets the range.

When an observer updates is decided by its ``mode`` (set by code, not saved): ``calibrate`` = on
every forward pass (PTQ calibration, run in eval mode), ``train`` = only in training mode (QAT and
fine-tuning of a QAT model), ``frozen`` = never (a calibrated PTQ model, also while fine-tuned).
"""
from __future__ import annotations

import torch
from torch import nn

OBSERVERS = ("minmax", "ema")
MODES = ("calibrate", "train", "frozen")


class RangeObserver(nn.Module):
    """Tracks [min_val, max_val] (0-d float buffers) of the tensors passed to :meth:`observe`.

    ``batches`` (0-d int64 buffer) counts the batches observed; 0 means not calibrated yet.
    """

    def __init__(self, kind: str = "minmax", decay: float = 0.99, mode: str = "frozen"):
        super().__init__()
        if kind not in OBSERVERS:
            raise ValueError(f"observer kind must be one of {OBSERVERS}, got {kind!r}")
        self.kind, self.decay = kind, float(decay)
        self.mode = mode
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("batches", torch.tensor(0, dtype=torch.int64))

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"observer mode must be one of {MODES}, got {value!r}")
        self._mode = value

    def should_observe(self, training: bool) -> bool:
        return self._mode == "calibrate" or (self._mode == "train" and training)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Update the range with one batch x (any shape; per-tensor statistics)."""
        lo, hi = x.detach().amin().float(), x.detach().amax().float()
        if self.batches.item() == 0:
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
        elif self.kind == "minmax":
            self.min_val.copy_(torch.minimum(self.min_val, lo))
            self.max_val.copy_(torch.maximum(self.max_val, hi))
        else:  # Jacob et al. 2018, §3.1: EMA of the observed ranges
            self.min_val.mul_(self.decay).add_((1 - self.decay) * lo)
            self.max_val.mul_(self.decay).add_((1 - self.decay) * hi)
        self.batches += 1

    def extra_repr(self) -> str:
        return f"kind={self.kind}, decay={self.decay}, mode={self._mode}"
