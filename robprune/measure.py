"""Model size and speed: parameters, MACs, CPU/GPU latency, checkpoint bytes (metrics.json keys
``params``, ``params_total``, ``macs``, ``latency_ms``, ``size_bytes``).

A fake-quantised model is timed on PyTorch's INT8 kernels after conversion
(:mod:`robprune.quant.int8`), never as the float simulation; where no INT8 kernel applies,
``latency_ms`` is null and ``latency_note`` says why."""
from __future__ import annotations

import copy

import statistics
import time
from pathlib import Path

import torch
from torch import nn

from robprune.config import require_positive
from robprune.prune.stats import PRUNABLE_TYPES, count_params


def count_nonzero_params(model: nn.Module) -> int:
    """Parameters that remain after unstructured pruning (metrics.json ``params``): the non-zero
    elements of every Conv2d/Linear weight plus ALL elements of every other parameter (biases, BN
    affine: an exact zero there is a value, not a removed weight). Masked pruning stores its removed
    weights as exact zeros (robprune.prune.masks), so they are not counted; a structured-pruned model
    has its channels physically removed, so this equals :func:`count_params` for it (up to weights
    that are exactly 0.0 by chance). A fake-quantised model counts its float weights."""
    weights = {id(m.weight) for m in model.modules() if isinstance(m, PRUNABLE_TYPES)}
    return sum(int(torch.count_nonzero(p.detach())) if id(p) in weights else p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass for ONE example, as Torch-Pruning counts them
    (``tp.utils.count_ops_and_params``: conv/linear MACs plus bias, BN and activation ops).

    example_inputs: (N, C, H, W); only the first example is used. Works on a deep copy: the model,
    its training flag and its BN statistics are untouched.
    """
    import torch_pruning as tp

    if hasattr(model, "count_macs"):  # text models count their own (Linear layers + attention products)
        return int(model.count_macs(example_inputs[:1]))
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


def gpu_latency(model: nn.Module, example_inputs: torch.Tensor, *, repeats: int = 20, warmup: int = 3) -> dict:
    """Median GPU time of ``model(example_inputs)`` (both on one CUDA device) measured with CUDA events,
    which time the kernels on the device's own clock rather than the host's launch: ``warmup`` untimed
    calls (cuDNN's algorithm search, the allocator), then ``repeats`` timed ones. The same keys as
    :func:`measure_latency`, ``latency_device`` the CUDA device (``latency_threads``: None)."""
    require_positive(repeats, "latency.repeats")
    require_positive(warmup, "latency.warmup", allow_zero=True)
    device = example_inputs.device
    model.eval()
    times_ms = []
    with torch.inference_mode(), torch.cuda.device(device):
        for _ in range(warmup):
            model(example_inputs)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(example_inputs)
            end.record()
            end.synchronize()
            times_ms.append(start.elapsed_time(end))
    return {"latency_ms": statistics.median(times_ms), "latency_batch_size": int(example_inputs.shape[0]),
            "latency_repeats": repeats, "latency_threads": None, "latency_device": str(device)}


def checkpoint_size_bytes(path: Path | str) -> int:
    """Bytes of ``model.safetensors``; ``path`` is the checkpoint directory or the file itself."""
    path = Path(path)
    return (path / "model.safetensors" if path.is_dir() else path).stat().st_size


def dense_model(arch: dict) -> nn.Module:
    """The dense (unpruned, float) model described by a checkpoint's ``arch`` record."""
    from omegaconf import OmegaConf

    from robprune.models import build_model

    return build_model(OmegaConf.create(arch["model"]), **{k: v for k, v in arch.items() if k != "model"})


def measure(model: nn.Module, meta: dict, data, cfg, device: torch.device | None = None) -> dict:
    """Cost and size of a loaded checkpoint (``model``, its model.json ``meta``), the same keys for a
    pipeline run and ``robprune eval``: params (non-zero, :func:`count_nonzero_params`) and
    params_total, MACs (batch 1), CPU latency (median ms per batch of eval.latency.batch_size; for a
    quantised model on INT8 kernels, see :func:`quantised_latency`); the dense model's params_dense,
    macs_dense and macs_ratio; the ``quant`` block; storage_bytes at the bit width,
    dense_storage_bytes and compression_ratio. device: the run's device; on CUDA a float model's
    ``latency_ms`` is also timed there (:func:`gpu_latency`, ``latency_device`` says where) and the CPU
    time is kept as ``latency_cpu_ms``."""
    from robprune.quant import quant_record, quant_spec_of, size_metrics

    model = model.cpu().eval()
    lat = cfg.eval.latency
    batch = data.example_inputs(int(lat.batch_size), random=True)
    timing = dict(repeats=int(lat.repeats), warmup=int(lat.warmup))
    now, dense = measure_macs_params(model, data), measure_macs_params(dense_model(meta["arch"]), data)
    latency = (quantised_latency(model, batch, meta, data, cfg.get("seed", 0), **timing) if quant_spec_of(model)
               else measure_latency(model, batch, **timing))
    if device is not None and torch.device(device).type == "cuda" and not quant_spec_of(model):
        cpu = latency
        latency = {**gpu_latency(copy.deepcopy(model).to(device), batch.to(device), **timing),
                   "latency_cpu_ms": cpu["latency_ms"], "latency_cpu_threads": cpu["latency_threads"]}
    return {**now, **latency, "params_dense": dense["params_total"], "macs_dense": dense["macs"],
            "macs_ratio": now["macs"] / max(1, dense["macs"]),
            "quant": quant_record(model, meta.get("quant_calibration")), **size_metrics(model, dense["params_total"])}


def measure_macs_params(model: nn.Module, data) -> dict:
    one = data.example_inputs(1)
    return {"params": count_nonzero_params(model), "params_total": count_params(model), "macs": count_macs(model, one)}


INT8_CALIBRATION_N = 512  # training images for the INT8 model's output ranges (a prefix of the PTQ calibration set)
INT8_CHECK_N = 512  # seeded test images on which the INT8 model must agree with the simulation


def quantised_latency(model: nn.Module, batch: torch.Tensor, meta: dict, data, seed: int, *, repeats: int,
                      warmup: int) -> dict:
    """Latency of the fake-quantised ``model`` on real INT8 kernels: {latency_ms, latency_batch_size,
    latency_repeats, latency_threads, latency_device, latency_engine (e.g. 'x86': the first engine
    whose INT8 model passes int8_check, see robprune.quant.int8.convert_checked), latency_note,
    int8_check (robprune.quant.int8.int8_check on INT8_CHECK_N test images drawn with ``seed``, plus
    engines_tried)}. Where the model cannot be converted (bits != 8, no engine, an op without an INT8
    kernel) latency_ms, latency_engine and int8_check are None and latency_note says why: the
    simulation's time is never reported."""
    from robprune.data.tensors import seeded_indices
    from robprune.quant.int8 import Int8Unsupported, convert_checked, quantized_engine

    calib = meta.get("quant_calibration") or {}
    train_idx = seeded_indices(data.train_x.shape[0], INT8_CALIBRATION_N, int(calib.get("seed", 0)))
    test_idx = seeded_indices(data.test_x.shape[0], INT8_CHECK_N, int(seed))
    try:
        engine, int8, check = convert_checked(model, data.train_x[train_idx].float() / 255,
                                              data.test_x[test_idx].float() / 255, data.test_y[test_idx])
        with quantized_engine(engine):
            timed = measure_latency(int8, batch, repeats=repeats, warmup=warmup)
    except (Int8Unsupported, RuntimeError, NotImplementedError) as err:
        reason = f"{err}; fake quantisation is a float simulation and is not timed"
        return {"latency_ms": None, "latency_batch_size": int(batch.shape[0]), "latency_repeats": repeats,
                "latency_threads": torch.get_num_threads(), "latency_device": "cpu", "latency_engine": None,
                "latency_note": reason, "int8_check": None}
    note = "INT8 kernels" + ("" if check["ok"] else "; int8_check failed: the INT8 model does not match the simulation")
    return {**timed, "latency_engine": engine, "latency_note": note, "int8_check": {**check, "seed": int(seed)}}
