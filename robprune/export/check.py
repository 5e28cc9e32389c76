"""Does the exported file compute what the PyTorch model computes? (docs/export.md#what-is-checked)

Float models: the exported file must give the same top-1 prediction on at least
:data:`FLOAT_MIN_AGREEMENT` of the test points. Fake-quantised models: the file is compared with the
simulation under the tolerance of robprune's own INT8 check (``robprune.quant.int8``: accuracy within
ACC_TOLERANCE and agreement at least MIN_AGREEMENT), since an integer runtime rounds differently.
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import torch
from torch import nn

FLOAT_MIN_AGREEMENT = 0.999  # float32 in both runtimes: only a near-tie may flip (kernel summation order)
CHECK_BATCH = 100  # does not divide the default 512 test points: the last batch is another batch size


@dataclass
class Exported:
    """A written file and the loaded form that runs it: ``run(inputs) -> logits`` (CPU tensors) inside
    ``context()``; ``record``: format-specific export.json fields; ``warmup``: untimed calls the runtime
    needs before it is timed (at least)."""

    file: Path
    run: Callable[[torch.Tensor], torch.Tensor]
    record: dict = field(default_factory=dict)
    context: Callable[[], ContextManager] = nullcontext
    warmup: int = 0


@torch.no_grad()
def compare(reference: nn.Module, exported: Exported, batches) -> dict:
    """Run both on ``batches`` ((inputs, labels) pairs, as a data bundle's loader yields them) and return
    {n_checked, agreement (fraction of equal argmax), max_logit_diff (max |Δ logit|), acc_reference,
    acc_exported}."""
    ref_pred, exp_pred, labels, max_diff = [], [], [], 0.0
    reference.eval()
    with exported.context():
        for x, y in batches:
            ref, out = reference(x).float(), exported.run(x).float()
            max_diff = max(max_diff, (ref - out).abs().max().item())
            ref_pred.append(ref.argmax(1))
            exp_pred.append(out.argmax(1))
            labels.append(y)
    rp, ep, y = torch.cat(ref_pred), torch.cat(exp_pred), torch.cat(labels)
    return {"n_checked": int(y.numel()), "agreement": (rp == ep).float().mean().item(), "max_logit_diff": max_diff,
            "acc_reference": (rp == y).float().mean().item(), "acc_exported": (ep == y).float().mean().item()}


def verdict(result: dict, *, quantised: bool) -> dict:
    """{tolerance, passed} for a :func:`compare` result: the float rule, or int8_check's for a quantised model."""
    if not quantised:
        return {"tolerance": {"agreement": FLOAT_MIN_AGREEMENT}, "passed": result["agreement"] >= FLOAT_MIN_AGREEMENT}
    from robprune.quant.int8 import ACC_TOLERANCE, MIN_AGREEMENT

    ok = (abs(result["acc_exported"] - result["acc_reference"]) <= ACC_TOLERANCE and result["agreement"] >= MIN_AGREEMENT)
    return {"tolerance": {"acc": ACC_TOLERANCE, "agreement": MIN_AGREEMENT}, "passed": bool(ok)}


@torch.no_grad()
def median_ms(run: Callable[[torch.Tensor], object], batch: torch.Tensor, *, repeats: int, warmup: int,
              context: Callable[[], ContextManager] = nullcontext) -> float:
    """Median wall time in ms of ``run(batch)`` over ``repeats`` calls after ``warmup`` untimed ones
    (the protocol of robprune.measure.measure_latency, for a runtime that is not an nn.Module)."""
    times = []
    with context():
        for _ in range(warmup):
            run(batch)
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            run(batch)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
