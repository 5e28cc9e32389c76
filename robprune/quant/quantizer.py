"""The uniform quantiser: integer ranges, scale/zero-point from a value range, and fake quantisation
with a straight-through estimator.

Conventions (docs/methods/adverfine.md#step-2, Jacob et al. 2018):
- quantise  q = clamp(round(x / s) + z, qmin, qmax); dequantise  x̂ = s · (q − z).
- weights: symmetric, z = 0, s = max|w| / qmax, signed "narrow" range [−qmax, qmax] so that −max|w|
  is representable (Jacob et al. 2018, App. B: weights never take the value −128 at 8 bits).
- activations: asymmetric, unsigned range [0, 2^b − 1], s = (max − min)/(qmax − qmin),
  z = qmin − round(min / s); the range is first widened to contain 0 so that 0 is exact.
Scales are float32 tensors (scalars, or (C, 1, ...) per output channel); bit widths 2..16.
"""
from __future__ import annotations

import torch

MIN_BITS, MAX_BITS = 2, 16
TINY_SCALE = 1e-8  # floor on s, so a tensor that is all zeros quantises to zeros instead of NaN


def weight_qrange(bits: int) -> tuple[int, int]:
    """Signed narrow range for symmetric weights: (−(2^(b−1) − 1), 2^(b−1) − 1); bits=2 -> (−1, 1)."""
    qmax = 2 ** (bits - 1) - 1
    return -qmax, qmax


def activation_qrange(bits: int) -> tuple[int, int]:
    """Unsigned range for asymmetric activations: (0, 2^b − 1); bits=8 -> (0, 255)."""
    return 0, 2 ** bits - 1


def symmetric_scale(w: torch.Tensor, bits: int, *, per_channel: bool) -> torch.Tensor:
    """s = max|w| / qmax (docs/methods/adverfine.md#step-2), per tensor (shape ()) or per output channel (shape (C, 1, ...)).

    w: (C_out, ...) weight, any float dtype; the result is detached (observers are not trained).
    """
    _, qmax = weight_qrange(bits)
    w = w.detach()
    if per_channel:
        amax = w.abs().flatten(1).amax(dim=1).view(-1, *([1] * (w.dim() - 1)))
    else:
        amax = w.abs().amax()
    return (amax / qmax).clamp_min(TINY_SCALE)


def asymmetric_qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) for values in [lo, hi] (0-d tensors): the range is widened to contain 0,
    s = (max − min)/(qmax − qmin), z = qmin − round(min / s) clamped into [qmin, qmax]
    (Jacob et al. 2018, §2.1 / docs/methods/adverfine.md#step-2). zero_point is a float tensor holding an integer."""
    qmin, qmax = activation_qrange(bits)
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(TINY_SCALE)
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale, zero_point


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float, qmin: int, qmax: int) -> torch.Tensor:
    """Integer codes as floats: q = clamp(round(x/s) + z, qmin, qmax) (Jacob et al. 2018, Eq. 1 inverted).
    torch.round rounds halves to even."""
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float) -> torch.Tensor:
    """x̂ = s · (q − z) (Jacob et al. 2018, Eq. 1)."""
    return (q - zero_point) * scale


class _FakeQuantizeSTE(torch.autograd.Function):
    """Forward: x̂ = dequantize(quantize(x)). Backward: the clipped straight-through estimator."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):
        q = torch.round(x / scale).add_(zero_point)
        inside = (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(inside)
        return q.clamp_(qmin, qmax).sub_(zero_point).mul_(scale)  # Jacob et al. 2018, Eq. 1: r = S(q − Z)

    @staticmethod
    def backward(ctx, grad_out):
        (inside,) = ctx.saved_tensors
        return grad_out * inside, None, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float, qmin: int, qmax: int) -> torch.Tensor:
    """x̂ = dequantize(quantize(x)) in the forward pass; straight-through estimator in the backward pass.

    The gradient w.r.t. x is 1 where round(x/s) + z lies inside [qmin, qmax] and 0 where the clamp
    saturates (the clipped STE of Bengio et al. 2013, as in Jacob et al. 2018, §3). Scale and
    zero-point receive no gradient (they come from observers). Same shape and dtype as x; the values
    equal ``dequantize(quantize(x, ...), ...)`` exactly.
    """
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device).detach()
    zero_point = torch.as_tensor(zero_point, dtype=x.dtype, device=x.device).detach()
    return _FakeQuantizeSTE.apply(x, scale, zero_point, int(qmin), int(qmax))
