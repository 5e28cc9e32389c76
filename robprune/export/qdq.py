"""Export forms of a fake-quantised model (docs/export.md#quantised-models): each
:class:`robprune.quant.QuantWrapper` becomes a layer that computes the same thing with ops an exporter
can write, using the wrapper's OWN calibrated parameters (never a quantiser of ONNX Runtime's):

- :class:`QDQLayer` (ONNX): the input activation goes through ``quantized_decomposed.quantize_per_tensor``
  → ``dequantize_per_tensor`` (uint8, the wrapper's asymmetric range via ``asymmetric_qparams``) and the
  weight is stored as its int8 codes (symmetric, z = 0, per tensor or per output channel as the wrapper
  quantises) behind ``dequantize_per_tensor`` / ``dequantize_per_channel``. torch.onnx writes these ops as
  QuantizeLinear / DequantizeLinear (onnxscript's torch_lib, quantized_decomposed.py): a QDQ graph with
  int8 weight initialisers. Biases, BN and Normalize stay float32, as in the simulation.
- :class:`SimulatedLayer` (TorchScript, when the INT8 kernels do not apply): the simulation's own
  arithmetic in plain tensor ops (round, clamp), any bit width; weights stored already fake-quantised.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from robprune.quant.modules import QuantWrapper
from robprune.quant.quantizer import activation_qrange, asymmetric_qparams, quantize, symmetric_scale, weight_qrange

QDQ_BITS = 8  # QuantizeLinear / DequantizeLinear hold 8-bit integers at opset 18


def register_qdq_ops() -> None:
    """Register the ``torch.ops.quantized_decomposed`` namespace (PyTorch's QDQ representation, which
    torch.onnx maps to QuantizeLinear / DequantizeLinear); importing torch.ao's FX quantisation defines it."""
    import torch.ao.quantization.quantize_fx  # noqa: F401  (defines torch.ops.quantized_decomposed.*)


def input_qparams(wrapper: QuantWrapper) -> tuple[float, int]:
    """(scale, zero_point) of the wrapper's calibrated input range at its bit width (as the simulation
    computes them every forward pass). RuntimeError if the range was never calibrated."""
    obs = wrapper.input_quant.observer
    if int(obs.batches) == 0:
        raise RuntimeError("activation range not calibrated")
    scale, zero_point = asymmetric_qparams(obs.min_val, obs.max_val, wrapper.spec.bits)
    return float(scale), int(zero_point)


class _Layer(nn.Module):
    """Conv2d / Linear geometry of a wrapped module, applied with a given weight."""

    def __init__(self, wrapper: QuantWrapper):
        super().__init__()
        m = wrapper.module
        self.conv = isinstance(m, nn.Conv2d)
        if self.conv and (m.padding_mode != "zeros"):
            raise RuntimeError(f"Conv2d with padding_mode={m.padding_mode!r}")
        self.geometry = (m.stride, m.padding, m.dilation, m.groups) if self.conv else None
        self.register_buffer("bias", None if m.bias is None else m.bias.detach().clone())
        self.in_scale, self.in_zero_point = input_qparams(wrapper)

    def apply_layer(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.conv:
            stride, padding, dilation, groups = self.geometry
            return F.conv2d(x, weight, self.bias, stride, padding, dilation, groups)
        return F.linear(x, weight, self.bias)


class QDQLayer(_Layer):
    """uint8 QDQ on the input, int8 weight codes behind a DequantizeLinear (8-bit wrappers only).

    Buffers: ``weight_int8`` (the codes round(w / s) in [−127, 127]) and ``weight_scale`` ((C_out,)
    float32 per channel, or one element per tensor)."""

    def __init__(self, wrapper: QuantWrapper):
        super().__init__(wrapper)
        w, spec = wrapper.module.weight.detach().float(), wrapper.spec
        scale = symmetric_scale(w, QDQ_BITS, per_channel=spec.per_channel)
        self.register_buffer("weight_int8", quantize(w, scale, 0.0, *weight_qrange(QDQ_BITS)).to(torch.int8))
        self.per_channel = spec.per_channel
        self.register_buffer("weight_scale", scale.flatten().float())
        self.weight_scale_float = float(scale.flatten()[0])  # per tensor: a constant, not a data-dependent read

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        qmin, qmax = activation_qrange(QDQ_BITS)
        x_q = qd.quantize_per_tensor(x, self.in_scale, self.in_zero_point, qmin, qmax, torch.uint8)
        x_hat = qd.dequantize_per_tensor(x_q, self.in_scale, self.in_zero_point, qmin, qmax, torch.uint8)
        wmin, wmax = weight_qrange(QDQ_BITS)
        if self.per_channel:
            zeros = torch.zeros_like(self.weight_scale, dtype=torch.int64)
            w_hat = qd.dequantize_per_channel(self.weight_int8, self.weight_scale, zeros, 0, wmin, wmax, torch.int8)
        else:
            w_hat = qd.dequantize_per_tensor(self.weight_int8, self.weight_scale_float, 0, wmin, wmax, torch.int8)
        return self.apply_layer(x_hat, w_hat)


class SimulatedLayer(_Layer):
    """The simulation in plain ops (docs/methods/adverfine.md#step-2): x̂ = s·(clamp(round(x/s) + z) − z)
    with the calibrated (s, z); the weight buffer holds the fake-quantised weight. Same values as the
    QuantWrapper, bit for bit."""

    def __init__(self, wrapper: QuantWrapper):
        super().__init__(wrapper)
        self.register_buffer("weight", wrapper.quantized_weight().detach().clone())
        self.qmin, self.qmax = activation_qrange(wrapper.spec.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(torch.round(x / self.in_scale) + self.in_zero_point, self.qmin, self.qmax)
        return self.apply_layer((q - self.in_zero_point) * self.in_scale, self.weight)


def replace_wrappers(model: nn.Module, layer: type[_Layer]) -> nn.Module:
    """A copy of the fake-quantised ``model`` (eval mode, CPU) with every QuantWrapper replaced by
    ``layer(wrapper)``; the model itself is untouched."""
    model = copy.deepcopy(model).cpu().eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, QuantWrapper):
                setattr(parent, name, layer(child))
    return model
