"""What pruning did, in numbers that go into results (docs/methods/conventions.md#sparsity: name the meaning of sparsity)."""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn

def count_params(model: nn.Module) -> int:
    """Number of parameter elements (weights, biases, BN affine); buffers such as BN running stats
    and the Normalize mean/std are not counted (metrics.json ``params_total``)."""
    return sum(p.numel() for p in model.parameters())


# Layers whose weights count as "prunable" in the recorded parameter sparsity.
PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def prunable_weight_count(model: nn.Module) -> int:
    """Weight elements of every Conv2d and Linear module (biases, BN and excluded layers' status aside:
    the stem and the classifier count too, so sparsities of different exclusion settings compare)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, PRUNABLE_TYPES))


def parameter_sparsity(prunable_before: int, prunable_after: int) -> float:
    """Achieved parameter sparsity = 1 - prunable_after / prunable_before, in [0, 1]."""
    return 1.0 - prunable_after / prunable_before if prunable_before else 0.0


def conv_channels(model: nn.Module) -> dict[str, int]:
    """{module name: output channels} of every Conv2d, in module order."""
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def layer_table(before: dict[str, int], after: dict[str, int]) -> list[dict]:
    """[{name, channels_before, channels_after}] per conv, for results and plots."""
    return [{"name": name, "channels_before": c, "channels_after": after[name]} for name, c in before.items()]


@contextmanager
def differentiable(weights):
    """``weights`` with requires_grad on while a score differentiates through them, restored after: a model may
    freeze some (airbench's whitening conv, docs/methods/recipes.md#fast-recipes), and torch.autograd.grad
    refuses a tensor that does not require grad."""
    weights = list(weights)
    flags = [w.requires_grad for w in weights]
    for w in weights:
        w.requires_grad_(True)
    try:
        yield weights
    finally:
        for w, flag in zip(weights, flags):
            w.requires_grad_(flag)
