"""Storage size at the model's bit width, and the compression ratio against the dense FP32 model
(metrics.json keys ``storage_bytes``, ``dense_storage_bytes``, ``compression_ratio``)."""
from __future__ import annotations

import math

from torch import nn

from robprune.quant.modules import wrappers

FLOAT_BITS = 32
QPARAM_BITS = 32  # a scale or zero-point is stored as one 32-bit number


def storage_bytes(model: nn.Module) -> int:
    """Bytes needed to store the model's parameters at their bit widths.

    Weights of quantised Conv2d/Linear layers count ``bits`` each, plus their quantisation
    parameters (one 32-bit weight scale per tensor or per output channel; a 32-bit activation scale
    and zero-point per layer). Every other parameter (biases, BatchNorm affine, unquantised
    weights) counts 32 bits. Buffers (BN running statistics, Normalize mean/std, observer ranges
    beyond the scale/zero-point) are not counted: they fold into the affine parameters at inference.
    A float model therefore counts 4 bytes per parameter. Rounded up to whole bytes.
    """
    total_bits, quantised = 0, set()
    for wrapper in wrappers(model):
        weight, spec = wrapper.module.weight, wrapper.spec
        quantised.add(id(weight))
        n_scales = weight.shape[0] if spec.per_channel else 1
        total_bits += weight.numel() * spec.bits + QPARAM_BITS * (n_scales + 2)
    total_bits += sum(FLOAT_BITS * p.numel() for p in model.parameters() if id(p) not in quantised)
    return math.ceil(total_bits / 8)


def size_metrics(model: nn.Module, params_dense: int) -> dict:
    """{storage_bytes, dense_storage_bytes (= 4 bytes × dense params), compression_ratio (dense / now)}."""
    size = storage_bytes(model)
    dense = 4 * int(params_dense)
    return {"storage_bytes": size, "dense_storage_bytes": dense, "compression_ratio": dense / max(1, size)}
