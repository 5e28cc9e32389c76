"""Fake-quantised models from plain torch modules.

:func:`quantize_model` replaces every ``nn.Conv2d`` and ``nn.Linear`` by a :class:`QuantWrapper`
that fake-quantises the layer's input activation (asymmetric, observed range) and its weight
(symmetric, from the current weight), then runs the original module through
``torch.func.functional_call`` with the fake-quantised weight. The original module stays a plain
Conv2d/Linear, so MAC counting, hooks and ``isinstance`` checks keep working; gradients flow to the
input and to the float weight through the straight-through estimator, so every attack and the one
training loop work on quantised models unchanged. Biases, BatchNorm and the Normalize layer stay in
float32 (BN is not folded into the conv weights).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.func import functional_call

from robprune.errors import ConfigError
from robprune.options import BOOL, Choice, Float, Int, check_fields, option
from robprune.quant.observers import OBSERVERS, RangeObserver
from robprune.quant.quantizer import (
    MAX_BITS,
    MIN_BITS,
    activation_qrange,
    asymmetric_qparams,
    fake_quantize,
    symmetric_scale,
    weight_qrange,
)

METHODS = ("ptq", "qat")
IMPLEMENTATION = ("robprune.quant: plain-torch fake quantisation (QuantWrapper around every Conv2d/Linear: "
                  "input activation asymmetric per-tensor, weight symmetric; clipped straight-through estimator; "
                  "biases, BN and Normalize in float32, BN not folded)")


@dataclass(frozen=True)
class QuantSpec:
    """How a model is quantised; stored in model.json (``quant``) and rebuilt from it on load.

    method: 'ptq' | 'qat'; bits: 2..16 for weights and activations; per_channel: one weight scale
    per output channel instead of one per tensor; observer: 'minmax' | 'ema' (activation ranges);
    ema_decay: d of the EMA observer; freeze_ranges: activation ranges never change after
    calibration (PTQ), else they track training batches (QAT).
    """

    method: str = option(spec=Choice(*METHODS), help="ptq (calibrated after pruning) | qat (fake-quantised "
                         "training, quant.train); none is no quantisation (recorded as quant.method)")
    bits: int = option(spec=Int(MIN_BITS, high=MAX_BITS, example="8"), help="bit width of weights and input activations")
    per_channel: bool = option(False, BOOL, help="weights: one scale per output channel (true) or per tensor (false, "
                               "the paper)")
    observer: str = option("minmax", Choice(*OBSERVERS), help="activation range observer: minmax (running min/max) | "
                           "ema (moving average)")
    ema_decay: float = option(0.99, Float(0, high=1, low_open=True, high_open=True, example="0.99"),
                              help="decay d of the ema observer (unused by minmax)")
    freeze_ranges: bool = option(True, BOOL, help="activation ranges stay as calibrated, also while the quantised "
                                 "model is fine-tuned")

    def __post_init__(self):
        """Each field against its declaration (ValueError with the one-line message: a config's checks
        raise it as a ConfigError, a checkpoint's as a CheckpointError)."""
        try:
            check_fields(self, "quant")
        except ConfigError as err:
            raise ValueError(str(err).removeprefix("ConfigError: ")) from None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "QuantSpec":
        """Build from a mapping (a ``conf/quant`` node or model.json's ``quant``); other keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(values).items() if k in names})


class ActivationQuantizer(nn.Module):
    """Asymmetric per-tensor fake quantisation of an activation with an observed range.

    x: any shape, float. In a mode where the observer updates, the range includes x before x is
    quantised (so QAT quantises from step 0). Raises RuntimeError if the range was never observed.
    """

    def __init__(self, bits: int, observer: RangeObserver):
        super().__init__()
        self.bits = int(bits)
        self.observer = observer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer.should_observe(self.training):
            self.observer.observe(x)
        if int(self.observer.batches) == 0:
            raise RuntimeError("activation range not calibrated: run robprune.quant.calibrate(model, x) first")
        scale, zero_point = asymmetric_qparams(self.observer.min_val, self.observer.max_val, self.bits)
        return fake_quantize(x, scale, zero_point, *activation_qrange(self.bits))


class QuantWrapper(nn.Module):
    """A Conv2d/Linear whose input and weight are fake-quantised; state: ``module.*`` (the float
    weights) and ``input_quant.observer.*`` (activation range buffers)."""

    def __init__(self, module: nn.Module, spec: QuantSpec):
        super().__init__()
        mode = "frozen" if spec.freeze_ranges else "train"
        self.spec = spec
        self.input_quant = ActivationQuantizer(spec.bits, RangeObserver(spec.observer, spec.ema_decay, mode))
        self.module = module

    def quantized_weight(self) -> torch.Tensor:
        """Fake-quantised weight, same shape as module.weight; symmetric, z = 0 (docs/methods/adverfine.md#step-2)."""
        w = self.module.weight
        scale = symmetric_scale(w, self.spec.bits, per_channel=self.spec.per_channel)
        return fake_quantize(w, scale, 0.0, *weight_qrange(self.spec.bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_hat = self.input_quant(x)
        return functional_call(self.module, {"weight": self.quantized_weight()}, (x_hat,), strict=False)

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, per_channel={self.spec.per_channel}"


def quantize_model(model: nn.Module, spec: QuantSpec) -> nn.Module:
    """Wrap every Conv2d and Linear of ``model`` IN PLACE (and return it). Observers start empty:
    call :func:`robprune.quant.calibrate` next. Raises ValueError if the model is already quantised."""
    if quant_spec_of(model) is not None:
        raise ValueError("model is already quantised")
    targets = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, (nn.Conv2d, nn.Linear))]
    for parent, name in targets:
        module = getattr(parent, name)
        setattr(parent, name, QuantWrapper(module, spec).to(module.weight.device))  # observers beside the weights
    return model


def quant_spec_of(model: nn.Module) -> QuantSpec | None:
    """The spec of the first QuantWrapper in ``model``, None for a float model."""
    return next((m.spec for m in model.modules() if isinstance(m, QuantWrapper)), None)


def wrappers(model: nn.Module) -> list[QuantWrapper]:
    return [m for m in model.modules() if isinstance(m, QuantWrapper)]
