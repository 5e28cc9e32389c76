"""``robprune export <run> --format onnx|torchscript``: the saved model as one standalone file, checked
against PyTorch on the run's test points, with ``export.json`` beside it (docs/export.md).

Every user error is found before any work and nothing is written for it; the file is written in a
temporary folder and moved to ``--out`` only once the exporter succeeded and the check ran. A failed
check still writes the file and ``export.json`` (``passed: false``), then exits 2.
"""
from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from robprune.checkpoint import is_checkpoint
from robprune.errors import CheckpointError, ConfigError, ExportError
from robprune.export.check import CHECK_BATCH, Exported, compare, median_ms, verdict
from robprune.io import atomic_write_json

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}  # format -> file name in --out
DEFAULT_OPSET = 18
DEFAULT_N_CHECK = 512  # seeded test points (as the INT8 check draws them)
CPU_NOTE = ("float results differ slightly between CPUs and thread counts (instruction sets, kernel summation "
            "order): agreement and max_logit_diff are this machine's; latencies are this machine's too")


def check_request(path: Path, fmt: str, out: Path | None, opset: int, n_check: int) -> tuple[Path, Path]:
    """(checkpoint directory, output folder) after every check that needs no model: the format, the
    packages, the opset, the number of test points, the model files, and an output folder that is new
    and outside the run. Raises a one-line RobpruneError."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt} is not an export format; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        from robprune.export.onnx_file import MIN_OPSET, max_opset, require_packages

        require_packages()
        if not MIN_OPSET <= opset <= max_opset():
            raise ConfigError(f"--opset {opset} is outside [{MIN_OPSET}, {max_opset()}] (torch.onnx writes opset "
                              f"{MIN_OPSET} and later; the installed onnx knows up to {max_opset()}); e.g. --opset {DEFAULT_OPSET}")
    if n_check < 1:
        raise ConfigError(f"--n-check must be a positive number of test points, got {n_check}; e.g. --n-check {DEFAULT_N_CHECK}")
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint; pass a run directory "
                              "(outputs/runs/<run>) or a folder holding model.safetensors + model.json")
    ckpt_dir = path if path.is_dir() else path.parent
    if not is_checkpoint(path):
        raise CheckpointError(f"{path}: no model to export (model.safetensors + model.json; a run writes them when "
                              "it finishes); pass a finished run directory, a checkpoint directory or a model.safetensors")
    out = Path(out) if out else Path("outputs/exports") / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}-{time.time_ns() % 10**6:06d}"
    if out.resolve() == ckpt_dir.resolve() or ckpt_dir.resolve() in out.resolve().parents:
        raise ConfigError(f"--out {out} is inside the model's folder {ckpt_dir}; an export never writes into a run "
                          "directory: pass another folder (default outputs/exports/<time>)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder; pass a new one")
    return ckpt_dir, out


def export_run(path: Path | str, fmt: str, *, out: Path | str | None = None, opset: int = DEFAULT_OPSET,
               n_check: int = DEFAULT_N_CHECK, overrides: list[str] | tuple = (), quiet: bool | None = None) -> dict:
    """Export the model saved at ``path`` (run directory, checkpoint directory or model.safetensors) to
    ``out``/FORMATS[fmt] and write ``out``/export.json; returns the record. overrides: Hydra overrides
    (key=value) on the run's own config.yaml, e.g. ``threads=2`` or the dataset of a bare checkpoint.
    Raises ExportError (after writing both files) when the check fails."""
    from robprune.checkpoint import load_checkpoint
    from robprune.compose import FROM_RUN, compose_saved
    from robprune.data import build_data
    from robprune.validate import validate

    path = Path(path)
    ckpt_dir, out = check_request(path, fmt, Path(out) if out else None, int(opset), int(n_check))
    cfg = compose_saved(ckpt_dir, list(overrides), (*FROM_RUN, "eval"))  # eval: the run's latency settings
    validate(cfg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    model, meta = load_checkpoint(path)
    data = build_data(cfg.dataset, cache_dir=cfg.data.cache_dir, loading=cfg.data)
    _check_fits(meta["arch"], data, path)
    _check_exportable(model, fmt)
    with tempfile.TemporaryDirectory(prefix="robprune-export-") as tmp:
        file = Path(tmp) / FORMATS[fmt]
        exported = _write(fmt, model, meta, data, cfg, file, int(opset))
        record = _record(fmt, path, model, meta, data, cfg, exported, int(opset), int(n_check))
        out.mkdir(parents=True, exist_ok=True)
        shutil.move(str(file), out / FORMATS[fmt])
    atomic_write_json(out / "export.json", record)
    if not (quiet if quiet is not None else cfg.quiet):
        _print(record, out)
    if not record["passed"]:
        raise ExportError(f"the exported file disagrees with PyTorch on the test points (agreement {record['agreement']:.4f}, "
                          f"tolerance {record['tolerance']}); {out / 'export.json'} records it with passed=false")
    return record


def _check_fits(arch: dict, data, path: Path) -> None:
    """The dataset's shape (image channels/size/classes; a text model's classes, pad id, vocabulary) is the
    model's, as robprune eval checks it (robprune/reeval.py)."""
    keys = [k for k in data.arch_record() if k not in ("mean", "std")]
    want, have = tuple(arch.get(k) for k in keys), tuple(data.arch_record()[k] for k in keys)
    if want != have:
        raise CheckpointError(f"{path}: the model expects ({', '.join(keys)}) = {want} but dataset '{data.name}' gives "
                              f"{have}; pass the dataset it was trained on, e.g. dataset=<name>")


def _check_exportable(model: nn.Module, fmt: str) -> None:
    from robprune.export.qdq import QDQ_BITS
    from robprune.quant import quant_spec_of

    spec = quant_spec_of(model)
    if fmt == "onnx" and spec is not None and spec.bits != QDQ_BITS:
        raise ExportError(f"the model is quantised to {spec.bits} bits but ONNX QuantizeLinear/DequantizeLinear hold "
                          f"{QDQ_BITS}-bit integers at this opset; export --format torchscript (it traces the simulation)")


def _axes(data) -> dict[int, str]:
    return {0: "batch", 1: "sequence"} if data.modality == "text" else {0: "batch"}


def _write(fmt: str, model: nn.Module, meta: dict, data, cfg, file: Path, opset: int) -> Exported:
    from robprune.quant import quant_spec_of

    example = data.example_inputs(2, random=True)  # batch 2: a batch of 1 would let the tracer specialise it
    if fmt == "torchscript":
        from robprune.export.torchscript_file import write_torchscript

        return write_torchscript(model, example, file, int8_data=_int8_data(meta, data, cfg))
    from robprune.export.onnx_file import input_record, ort_runner, ort_session, write_onnx
    from robprune.export.qdq import QDQLayer, register_qdq_ops, replace_wrappers

    graph = model
    if quant_spec_of(model) is not None:
        register_qdq_ops()
        graph = replace_wrappers(model, QDQLayer)
    write_onnx(graph, example, file, opset=opset, axes=_axes(data))
    import onnxruntime

    session = ort_session(file, torch.get_num_threads())
    return Exported(file, ort_runner(session), {"opset": opset, "input": input_record(file),
                                                "runtime": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
                                                "graph": "QDQ (QuantizeLinear/DequantizeLinear)" if graph is not model else "float"})


def _int8_data(meta: dict, data, cfg):
    """(calibration images, check images, labels) for the INT8 conversion, drawn as robprune.measure draws
    them for latency_ms; None for text (the conversion takes images)."""
    if data.modality != "image":
        return None
    from robprune.data.tensors import seeded_indices
    from robprune.measure import INT8_CALIBRATION_N, INT8_CHECK_N

    calib_seed = int((meta.get("quant_calibration") or {}).get("seed", 0))
    train_idx = seeded_indices(data.train_x.shape[0], INT8_CALIBRATION_N, calib_seed)
    test_idx = seeded_indices(data.test_x.shape[0], INT8_CHECK_N, int(cfg.seed))
    return data.train_x[train_idx].float() / 255, data.test_x[test_idx].float() / 255, data.test_y[test_idx]


def _record(fmt: str, path: Path, model: nn.Module, meta: dict, data, cfg, exported: Exported, opset: int,
            n_check: int) -> dict:
    from robprune.data.tensors import seeded_indices
    from robprune.measure import measure_latency
    from robprune.quant import quant_spec_of

    idx = seeded_indices(data.test_x.shape[0], n_check, int(cfg.seed))
    batches = data.loader(data.test_x[idx], data.test_y[idx], CHECK_BATCH, shuffle=False)
    quantised = quant_spec_of(model) is not None
    lat = cfg.eval.latency
    batch = data.example_inputs(int(lat.batch_size), random=True)
    timing = {"repeats": int(lat.repeats), "warmup": int(lat.warmup)}
    pytorch_ms = None if quantised else measure_latency(model, batch, **timing)["latency_ms"]  # before the file runs
    result = compare(model, exported, batches)
    exported_ms = median_ms(exported.run, batch, repeats=timing["repeats"], warmup=max(timing["warmup"], exported.warmup),
                            context=exported.context)
    record = {"format": fmt, "file": FORMATS[fmt], "size_bytes": exported.file.stat().st_size, "source": str(path.resolve()),
              "model": meta["arch"]["model"].get("_target_"), "pruned": bool(meta.get("pruning_history")),
              "quant": meta.get("quant"), "seed": int(cfg.seed), **result, **verdict(result, quantised=quantised),
              "latency_ms": exported_ms, "latency_pytorch_ms": pytorch_ms, "latency_run_ms": _run_latency(path),
              "latency_batch_size": int(batch.shape[0]), "latency_threads": torch.get_num_threads(),
              "latency_repeats": timing["repeats"], "latency_warmup": timing["warmup"],
              "latency_note": ("latency_pytorch_ms: the eager model now; latency_run_ms: the run's metrics.json" if not quantised
                               else "the fake-quant simulation is not timed; latency_run_ms is robprune's INT8-kernel "
                                    "latency from the run's metrics.json"),
              "versions": _versions(), "cpu": platform.processor() or platform.machine(), "cpu_note": CPU_NOTE}
    record.update(exported.record)
    if "input" not in record:
        shape = list(data.example_inputs(1).shape)
        record["input"] = {"dtype": str(data.example_inputs(1).dtype).removeprefix("torch."),
                           "shape": [_axes(data).get(i, d) for i, d in enumerate(shape)]}
    return record


def _run_latency(path: Path) -> float | None:
    metrics = (path if path.is_dir() else path.parent) / "metrics.json"
    try:
        return json.loads(metrics.read_text()).get("latency_ms")
    except (OSError, ValueError):
        return None


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _print(record: dict, out: Path) -> None:
    from rich.table import Table

    from robprune.ui import console

    def ms(v):
        return "—" if v is None else f"{v:.3f} ms"

    table = Table(title=f"robprune export → {out / record['file']}", show_header=False)
    rows = [("format", f"{record['format']}" + (f" (opset {record['opset']})" if "opset" in record else "")),
            ("size", f"{record['size_bytes'] / 1024:.1f} KiB"),
            ("check", f"{'passed' if record['passed'] else 'FAILED'}: agreement {record['agreement']:.4f} on "
                      f"{record['n_checked']} test points, max |Δ logit| {record['max_logit_diff']:.2e}"),
            (f"latency (batch {record['latency_batch_size']})", f"exported {ms(record['latency_ms'])}, PyTorch "
                                                                 f"{ms(record['latency_pytorch_ms'])}, run {ms(record['latency_run_ms'])}")]
    for key, value in rows:
        table.add_row(key, value)
    console().print(table)
