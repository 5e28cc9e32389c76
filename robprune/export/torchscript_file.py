"""Writing and loading the TorchScript file (docs/export.md): ``torch.jit.trace`` of the model, saved
with ``torch.jit.save`` and read back with ``torch.jit.load`` (no robprune, no Python class needed).

A fake-quantised model is traced as its INT8 form (:func:`robprune.quant.int8.convert_checked`: the
wrapper's own codes and ranges on PyTorch's quantised CPU kernels, the same model ``latency_ms`` times)
when it converts; otherwise (not 8 bits, a text model, an op without an INT8 kernel) as the simulation
in plain ops (:class:`robprune.export.qdq.SimulatedLayer`), and ``note`` says why. The quantised
autograd function of the simulation itself cannot be traced (a Python op has no TorchScript form).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from robprune.errors import ExportError
from robprune.export.check import Exported
from robprune.export.qdq import SimulatedLayer, replace_wrappers
from robprune.quant import quant_spec_of

JIT_WARMUP = 3  # TorchScript's profiling executor optimises a graph during its first calls: not timed


def trace(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.jit.trace ``model`` on ``example`` and save it to ``path``; ExportError with the tracer's
    first line when it cannot be traced."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer notices
            torch.jit.save(torch.jit.trace(model, (example,), check_trace=False), str(path))
    except (RuntimeError, TypeError, ValueError) as err:
        line = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise ExportError(f"torch.jit.trace cannot trace the model ({line[:300]}); try --format onnx") from None


def load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").eval()


def write_torchscript(model: nn.Module, example: torch.Tensor, path: Path, *, int8_data=None) -> Exported:
    """Trace ``model`` (eval, CPU) to ``path`` and load it back. int8_data: (calibration images, check
    images, check labels) for a quantised image model's INT8 conversion; None for a text model."""
    spec = quant_spec_of(model)
    if spec is None:
        trace(model, example, path)
        return Exported(path, load(path), {"traced": "float model"}, warmup=JIT_WARMUP)
    if int8_data is not None:
        done = _trace_int8(model, example, path, int8_data)
        if isinstance(done, Exported):
            return done
        why = done
    else:
        why = "the INT8 conversion takes images; this is a text model"
    trace(replace_wrappers(model, SimulatedLayer), example, path)
    return Exported(path, load(path), {"traced": "fake-quant simulation (float ops)",
                                       "note": f"not INT8 kernels: {why}; the file computes the simulation"},
                    warmup=JIT_WARMUP)


def _trace_int8(model: nn.Module, example: torch.Tensor, path: Path, int8_data) -> Exported | str:
    """The INT8 model traced and loaded back, or the reason it could not be (a string)."""
    from robprune.quant.int8 import Int8Unsupported, convert_checked, quantized_engine

    calib_x, check_x, check_y = int8_data
    try:
        engine, int8, _ = convert_checked(model, calib_x, check_x, check_y)
        with quantized_engine(engine):
            trace(int8, example, path)
            loaded = load(path)
    except (Int8Unsupported, ExportError, RuntimeError, NotImplementedError) as err:
        return str(err).removeprefix("ExportError: ")
    return Exported(path, loaded, {"traced": "INT8 model (robprune.quant.int8)", "quantized_engine": engine,
                                   "note": f"load with torch.backends.quantized.engine = '{engine}' (packed weights "
                                           "belong to an engine)"},
                    context=lambda: quantized_engine(engine), warmup=JIT_WARMUP)
