"""A real INT8 model from a fake-quantised one (PyTorch's quantised CPU kernels), for latency that
is not the simulation's.

:func:`convert_int8` replaces every :class:`QuantWrapper` by an :class:`Int8Layer`: a
``torch.ao.nn.quantized`` Conv2d/Linear whose weight is the wrapper's own fake-quantised weight as
qint8 (symmetric, z = 0, its own per-tensor or per-channel scale: the codes are identical) and whose
input is quantised to quint8 with the wrapper's calibrated activation range (asymmetric per-tensor,
``asymmetric_qparams``: the same scale and zero-point as the simulation). Biases stay float (the
kernel rounds them to int32 at s_x·s_w). BN is not folded, as the simulation does not fold it.

Output quantisation. A quantised op must write 8-bit outputs with some scale. Chosen: where the next
wrapper's input is exactly this wrapper's output or its ReLU (checked on calibration images; e.g.
conv → ReLU → conv, conv → ReLU → Flatten → Linear), the output takes the NEXT wrapper's input
scale/zero-point and stays quantised (ReLU and Flatten run on the quint8 tensor): this is the
simulation's arithmetic exactly (its z = 0 after a ReLU, so the clamp at 0 is the ReLU) and it keeps
the tensor in INT8 between GEMMs. Elsewhere (conv → BN, residual adds, the logits) the output is
requantised with its own range observed on the same training images and dequantised to float, so
float ops (BN, Normalize, adds) run unchanged: one extra rounding of half a step, which the
agreement check bounds. The simpler dequantise-everywhere route would add that rounding and a
quantise/dequantise pair to every layer; an FX rewrite would be a second graph of the model to keep
in sync. Only 8-bit specs convert: the kernels are INT8 (a 4-bit model run on them would time an
8-bit model).
"""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.ao.nn.quantized as nnq
from torch import nn

from robprune.quant.calibrate import observer_mode
from robprune.quant.modules import QuantWrapper, wrappers
from robprune.quant.quantizer import asymmetric_qparams, symmetric_scale

INT8_BITS = 8
ENGINE_PREFERENCE = ("x86", "fbgemm", "onednn", "qnnpack")
# The INT8 kernels differ from the simulation only in rounding: the bias rounded to int32 at s_x·s_w,
# the output requantisation of non-chained layers and the requantisation multiplier. These flip only
# near-tie predictions (digits small_cnn, onednn/qnnpack: 0 to 0.6% of the test points, accuracy within
# 0.3 points); a wrong scale, zero-point or layout flips most. x86/fbgemm on a CPU without VNNI (AVX2)
# sums u8·s8 pairs in saturating int16 (why torch's own fbgemm qconfig uses 7-bit activations): 10x
# larger logit errors with the simulation's full 8-bit range, 2-3% flipped; :func:`convert_checked`
# then moves on to the next engine.
ACC_TOLERANCE = 0.01  # |acc_int8 − acc_fake| ≤ 1 percentage point
MIN_AGREEMENT = 0.98  # and ≥ 98% of points get the same prediction


class Int8Unsupported(Exception):
    """The model cannot run on the INT8 kernels; the message says why (goes into ``latency_note``)."""


def engines() -> list[str]:
    """x86, fbgemm, onednn, qnnpack, in that order, as far as ``torch.backends.quantized.supported_engines`` has them."""
    supported = set(torch.backends.quantized.supported_engines)
    return [e for e in ENGINE_PREFERENCE if e in supported]


def pick_engine() -> str | None:
    """The preferred available engine (first of :func:`engines`), None when there is none."""
    return next(iter(engines()), None)


@contextmanager
def quantized_engine(name: str) -> Iterator[None]:
    """Use quantised engine ``name`` inside the block (packed weights belong to the engine that packed
    them, so convert, run and time in one block); the previous engine is restored. Silences torch's
    deprecation notice for quantised tensors (torch 2.10+), which these kernels still need."""
    saved = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*deprecated")
            yield
    finally:
        torch.backends.quantized.engine = saved


class Int8Layer(nn.Module):
    """quint8 input (quantised here with (in_scale, in_zero_point) unless already quantised by the
    previous Int8Layer) → ``op`` (nnq.Conv2d / nnq.Linear) → quint8 output, dequantised to float
    unless ``keep_quantized`` (the next Int8Layer reads it as is)."""

    def __init__(self, op: nn.Module, in_scale: float, in_zero_point: int, keep_quantized: bool):
        super().__init__()
        self.op, self.keep_quantized = op, keep_quantized
        self.in_scale, self.in_zero_point = float(in_scale), int(in_zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_quantized:
            x = torch.quantize_per_tensor(x, self.in_scale, self.in_zero_point, torch.quint8)
        y = self.op(x)
        return y if self.keep_quantized else y.dequantize()

    def extra_repr(self) -> str:
        return f"in_scale={self.in_scale:.3g}, in_zero_point={self.in_zero_point}, keep_quantized={self.keep_quantized}"


def input_qparams(wrapper: QuantWrapper) -> tuple[float, int]:
    """(scale, zero_point) of the wrapper's calibrated input range at 8 bits, as the simulation uses."""
    obs = wrapper.input_quant.observer
    if int(obs.batches) == 0:
        raise Int8Unsupported("activation range not calibrated")
    scale, zero_point = asymmetric_qparams(obs.min_val, obs.max_val, INT8_BITS)
    return float(scale), int(zero_point)


def int8_weight(wrapper: QuantWrapper) -> torch.Tensor:
    """The wrapper's fake-quantised weight as a qint8 tensor with its own scale(s), z = 0: the integer
    codes equal the simulation's round(w / s) in [−127, 127]."""
    w, per_channel = wrapper.module.weight.detach().float(), wrapper.spec.per_channel
    scale = symmetric_scale(w, INT8_BITS, per_channel=per_channel)
    w_hat = wrapper.quantized_weight().detach().float()
    if not per_channel:
        return torch.quantize_per_tensor(w_hat, float(scale), 0, torch.qint8)
    scale = scale.flatten().double()
    return torch.quantize_per_channel(w_hat, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)


def int8_op(wrapper: QuantWrapper, out_scale: float, out_zero_point: int) -> nn.Module:
    """nnq.Conv2d / nnq.Linear computing the wrapper's layer on quint8 inputs, writing quint8 outputs
    with (out_scale, out_zero_point)."""
    m = wrapper.module
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise Int8Unsupported(f"Conv2d with padding {m.padding!r}/{m.padding_mode!r} has no INT8 kernel here")
        op = nnq.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                        bias=m.bias is not None)
    elif isinstance(m, nn.Linear):
        op = nnq.Linear(m.in_features, m.out_features, bias_=m.bias is not None)
    else:
        raise Int8Unsupported(f"no INT8 kernel for {type(m).__name__}")
    op.set_weight_bias(int8_weight(wrapper), None if m.bias is None else m.bias.detach().float())
    op.scale, op.zero_point = float(out_scale), int(out_zero_point)
    return op


@torch.no_grad()
def trace_wrappers(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> tuple[list[QuantWrapper], list, list[bool]]:
    """Run the fake-quantised ``model`` (eval, observers frozen) on images x ((N, C, H, W) floats in
    [0, 1]) and return (wrappers in call order, [(out_min, out_max)] per wrapper over all of x,
    [feeds_next: the next wrapper's input equals this output or its ReLU, on the first batch])."""
    order, ranges, first, batch_calls = [], {}, {}, []

    def hook(module, args, out):
        if module in batch_calls:
            raise Int8Unsupported("a Conv2d/Linear is called twice in one forward pass")
        batch_calls.append(module)
        if id(module) not in first:
            order.append(module)
            first[id(module)] = (args[0].detach().flatten().clone(), out.detach().flatten().clone())
        lo, hi = out.detach().amin(), out.detach().amax()
        old = ranges.get(id(module), (lo, hi))
        ranges[id(module)] = (torch.minimum(old[0], lo), torch.maximum(old[1], hi))

    handles = [w.register_forward_hook(hook) for w in wrappers(model)]
    try:
        with observer_mode(model, "frozen"):
            for start in range(0, x.shape[0], batch_size):
                batch_calls.clear()
                model(x[start:start + batch_size])
    finally:
        for h in handles:
            h.remove()
    feeds = [_feeds(first[id(a)][1], first[id(b)][0]) for a, b in zip(order, order[1:])] + [False]
    return order, [ranges[id(w)] for w in order], feeds


def _feeds(out: torch.Tensor, next_in: torch.Tensor) -> bool:
    return out.shape == next_in.shape and (torch.equal(out, next_in) or torch.equal(torch.relu(out), next_in))


def convert_int8(model: nn.Module, calib_x: torch.Tensor, *, chain: bool = True) -> nn.Module:
    """An INT8 copy of the fake-quantised ``model`` (8-bit spec; CPU). calib_x: (N, C, H, W) training
    images in [0, 1] for the output ranges and the chain check (see the module docstring);
    ``chain=False`` dequantises after every layer. Call inside :func:`quantized_engine`.
    Raises Int8Unsupported with the reason."""
    if not wrappers(model):
        raise Int8Unsupported("the model is not quantised")
    bits = {w.spec.bits for w in wrappers(model)}
    if bits != {INT8_BITS}:
        raise Int8Unsupported(f"no INT8 kernel for {'/'.join(map(str, sorted(bits)))}-bit weights and activations")
    model = copy.deepcopy(model).cpu().eval()
    order, ranges, feeds = trace_wrappers(model, calib_x.float().cpu())
    layers = {}
    for i, wrapper in enumerate(order):
        keep = chain and feeds[i]
        out_q = input_qparams(order[i + 1]) if keep else _qparams(*ranges[i])
        layers[id(wrapper)] = Int8Layer(int8_op(wrapper, *out_q), *input_qparams(wrapper), keep_quantized=keep)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in layers:
                setattr(parent, name, layers[id(child)])
    return model


def _qparams(lo: torch.Tensor, hi: torch.Tensor) -> tuple[float, int]:
    scale, zero_point = asymmetric_qparams(lo.float(), hi.float(), INT8_BITS)
    return float(scale), int(zero_point)


@torch.no_grad()
def int8_check(fake: nn.Module, int8: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256) -> dict:
    """Does the INT8 model compute what the fake-quantised one simulates? x: (N, C, H, W) floats in
    [0, 1], y: (N,) labels. Returns {n, acc_int8, acc_fake, agreement (fraction of equal top-1
    predictions), tolerance: {acc, agreement}, ok}, accuracies as fractions."""
    fake_pred, int8_pred = [], []
    was_training = fake.training
    fake.eval()
    try:
        for start in range(0, x.shape[0], batch_size):
            fake_pred.append(fake(x[start:start + batch_size]).argmax(1))
            int8_pred.append(int8(x[start:start + batch_size]).argmax(1))
    finally:
        fake.train(was_training)
    fp, ip = torch.cat(fake_pred), torch.cat(int8_pred)
    acc_fake, acc_int8 = (fp == y).float().mean().item(), (ip == y).float().mean().item()
    agreement = (fp == ip).float().mean().item()
    ok = abs(acc_int8 - acc_fake) <= ACC_TOLERANCE and agreement >= MIN_AGREEMENT
    return {"n": int(x.shape[0]), "acc_int8": acc_int8, "acc_fake": acc_fake, "agreement": agreement,
            "tolerance": {"acc": ACC_TOLERANCE, "agreement": MIN_AGREEMENT}, "ok": bool(ok)}


def convert_checked(model: nn.Module, calib_x: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[str, nn.Module, dict]:
    """Convert on each available engine in preference order until one passes :func:`int8_check` on
    (x, y); returns (engine, INT8 model packed for it, check + ``engines_tried``: {engine: agreement}).
    If none passes, the preferred engine's model and failed check. Time the model inside
    ``quantized_engine(engine)``. Raises Int8Unsupported when no engine exists or conversion fails."""
    tried, first = {}, None
    for engine in engines():
        with quantized_engine(engine):
            int8 = convert_int8(model, calib_x)
            check = int8_check(model, int8, x, y)
        tried[engine] = check["agreement"]
        first = first or (engine, int8, check)
        if check["ok"]:
            return engine, int8, {**check, "engines_tried": tried}
    if first is None:
        raise Int8Unsupported("this torch build has no quantised CPU engine")
    return first[0], first[1], {**first[2], "engines_tried": tried}
