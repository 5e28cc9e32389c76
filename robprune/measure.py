"""Model size and speed: parameters, MACs, CPU/GPU latency, checkpoint bytes (metrics.json keys
``params``, ``macs``, ``latency_ms``, ``size_bytes``)."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn

from robprune.config import require_positive


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (weights, biases, BN affine); buffers such as BN running stats
    and the Normalize mean/std are not counted."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass for ONE example, as Torch-Pruning counts them
    (``tp.utils.count_ops_and_params``: conv/linear MACs plus bias, BN and activation ops).

    example_inputs: (N, C, H, W); only the first example is used. Works on a deep copy: the model,
    its training flag and its BN statistics are untouched.
    """
    import torch_pruning as tp

    macs, _ = tp.utils.count_ops_and_params(model, example_inputs[:1])
    return int(macs)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # CUDA kernels are asynchronous; time the work, not the launch
        torch.cuda.synchronize(device)


def measure_latency(model: nn.Module, example_inputs: torch.Tensor, *, repeats: int = 20, warmup: int = 3) -> dict:
    """Median wall time of ``model(example_inputs)`` in eval mode under ``torch.inference_mode``.

    example_inputs: (N, C, H, W) on the model's device; N is the reported batch size.
    ``warmup`` untimed calls first (allocator, kernel selection). Restores ``model.training``.
    Returns {latency_ms: median ms per batch, latency_batch_size: N, latency_repeats,
    latency_threads: torch.get_num_threads(), latency_device: e.g. 'cpu'}.
    """
    require_positive(repeats, "latency.repeats")
    require_positive(warmup, "latency.warmup", allow_zero=True)
    device = example_inputs.device
    was_training = model.training
    model.eval()
    times_ms = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(example_inputs)
            for _ in range(repeats):
                _sync(device)
                start = time.perf_counter()
                model(example_inputs)
                _sync(device)
                times_ms.append((time.perf_counter() - start) * 1e3)
    finally:
        model.train(was_training)
    return {"latency_ms": statistics.median(times_ms), "latency_batch_size": int(example_inputs.shape[0]),
            "latency_repeats": repeats, "latency_threads": torch.get_num_threads(), "latency_device": str(device)}


def checkpoint_size_bytes(path: Path | str) -> int:
    """Bytes of ``model.safetensors``; ``path`` is the checkpoint directory or the file itself."""
    path = Path(path)
    return (path / "model.safetensors" if path.is_dir() else path).stat().st_size


def dense_model(arch: dict) -> nn.Module:
    """The dense (unpruned, float) model described by a checkpoint's ``arch`` record."""
    from omegaconf import OmegaConf

    from robprune.models import build_model

    return build_model(OmegaConf.create(arch["model"]), in_channels=arch["in_channels"], image_size=arch["image_size"],
                       num_classes=arch["num_classes"], mean=arch["mean"], std=arch["std"])


def measure(model: nn.Module, meta: dict, data, cfg) -> dict:
    """Cost and size of a loaded checkpoint (``model``, its model.json ``meta``), the same keys for a
    pipeline run and ``robprune eval``: params, MACs (batch 1), CPU latency (median ms per batch of
    eval.latency.batch_size); the dense model's params_dense, macs_dense and macs_ratio; the ``quant``
    block; storage_bytes at the bit width, dense_storage_bytes and compression_ratio."""
    from robprune.quant import quant_record, size_metrics

    model = model.cpu().eval()
    lat = cfg.eval.latency
    batch = torch.rand(int(lat.batch_size), data.in_channels, data.image_size, data.image_size)
    now, dense = measure_macs_params(model, data), measure_macs_params(dense_model(meta["arch"]), data)
    return {**now, **measure_latency(model, batch, repeats=int(lat.repeats), warmup=int(lat.warmup)),
            "params_dense": dense["params"], "macs_dense": dense["macs"],
            "macs_ratio": now["macs"] / max(1, dense["macs"]),
            "quant": quant_record(model, meta.get("quant_calibration")), **size_metrics(model, dense["params"])}


def measure_macs_params(model: nn.Module, data) -> dict:
    one = torch.zeros(1, data.in_channels, data.image_size, data.image_size)
    return {"params": count_params(model), "macs": count_macs(model, one)}
