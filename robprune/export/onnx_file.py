"""Writing and running the ONNX file (docs/export.md): torch.onnx's exporter (``dynamo=True``, the
torch.export-based one), one self-contained file, named dynamic axes; ONNX Runtime's CPU provider runs it."""
from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from robprune.errors import ExportError

PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # the `export` extra of pyproject.toml
MIN_OPSET = 18  # the torch.export-based exporter writes opset 18 and later (torch.onnx.export docs)
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def require_packages() -> None:
    """ExportError naming what to install when onnx, onnxscript or onnxruntime cannot be imported."""
    missing = []
    for name in PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"--format onnx needs the packages {', '.join(PACKAGES)} (missing: {', '.join(missing)}); "
                          "pip install robprune[export]")


def max_opset() -> int:
    """The newest opset the installed onnx package defines (ONNX Runtime refuses newer ones it lacks on load)."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path, *, opset: int, axes: dict[int, str]) -> None:
    """Export ``model`` (eval mode, CPU) traced on ``example`` to ``path`` as one file (weights inside,
    no external data). axes: {dim: name} of the input that stay symbolic (batch, sequence); the output's
    batch axis follows. Raises ExportError naming the op (and the module calling it) that has no ONNX
    mapping, or the exporter's own first line for anything else."""
    dims = {i: torch.export.Dim(name) for i, name in axes.items()}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices are not the user's
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=int(opset), external_data=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=(dims,),
                              verbose=False, report=False)
    except Exception as err:  # the exporter raises its own internal error classes (torch.onnx._internal)
        raise ExportError(_describe(model, example, err)) from None


def _describe(model: nn.Module, example: torch.Tensor, err: Exception) -> str:
    """One line for an exporter failure: 'ONNX has no mapping for aten.cummax.default (called by module
    head, a Cummax) ...' when an op is missing from the ONNX registry, else the exporter's summary."""
    text = "\n".join(str(e) for e in _chain(err))
    missing = re.search(r"No ONNX function found for <OpOverload\(op='([\w.]+)', overload='(\w+)'\)>", text)
    if missing:
        op = f"{missing.group(1)}.{missing.group(2)}"
        where = _calling_module(model, example, op)
        return (f"ONNX has no mapping for {op}{where} at this opset; export --format torchscript instead, "
                "or change the model so it does not use that op (docs/export.md#limitations)")
    summary = re.search(r"Exception summary\s*\n\s*<class '([\w.]+)'>: ([^\n]+)", text)
    first = f"{summary.group(1).rsplit('.', 1)[-1]}: {summary.group(2)}" if summary else f"{type(err).__name__}: {_first(err)}"
    return f"torch.onnx could not export the model ({first[:300]}); try --format torchscript"


def _chain(err: BaseException) -> list[BaseException]:
    out = []
    while err is not None and err not in out:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def _first(err: BaseException) -> str:
    lines = [ln for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _calling_module(model: nn.Module, example: torch.Tensor, op: str) -> str:
    """' (called by module head, a Cummax)' from torch.export's record of which module ran each node
    (node.meta['nn_module_stack']); '' when it cannot be told."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, (example,), strict=False)
    except Exception:  # noqa: BLE001 - a best-effort detail of an error message already being raised
        return ""
    for node in program.graph.nodes:
        if node.op == "call_function" and str(node.target) == op:
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, kind = list(stack.values())[-1]
                kind = getattr(kind, "__name__", str(kind)).rsplit(".", 1)[-1]
                return f" (called by module {path or '<root>'}, a {kind})"
    return ""


def ort_session(path: Path, threads: int):
    """An ONNX Runtime session on the CPU execution provider with ``threads`` intra-op threads (the
    count torch uses, so the two runtimes are timed alike) and its default graph optimisations. Its
    worker threads do not spin-wait after a call (session.intra_op.allow_spinning=0, ONNX Runtime's
    threading docs): spinning threads keep the cores busy and slowed the PyTorch model timed next to
    them in the same process from 0.4 to 80 ms per batch on 2 cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = int(threads), 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own pybind error classes
        raise ExportError(f"ONNX Runtime {ort.__version__} cannot load the exported file ({_first(err)[:300]}); "
                          f"try an older --opset, e.g. --opset {MIN_OPSET}") from None


def ort_runner(session) -> Callable[[torch.Tensor], torch.Tensor]:
    """inputs (a CPU tensor of the exported dtype) -> logits as a float32 torch tensor."""
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])

    return run


def input_record(path: Path) -> dict:
    """{name, dtype, shape} of the graph's input, symbolic axes by name: e.g. ['batch', 1, 8, 8]."""
    import onnx

    graph_input = onnx.load(str(path), load_external_data=False).graph.input[0]
    tensor = graph_input.type.tensor_type
    shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    return {"name": graph_input.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
            "shape": shape}
