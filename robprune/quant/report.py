"""The quantisation and size keys of metrics.json, read from a finished checkpoint."""
from __future__ import annotations

from pathlib import Path

from robprune.checkpoint import load_checkpoint
from robprune.quant.size import size_metrics
from robprune.quant.stage import quant_record


def compression_metrics(checkpoint: Path | str, params_dense: int) -> dict:
    """{quant: the quant block (method none/ptq/qat, bits, ..., implementation, calibration),
    storage_bytes, dense_storage_bytes, compression_ratio} for the checkpoint's model.

    params_dense: parameters of the dense FP32 model (its size is 4 bytes each)."""
    model, meta = load_checkpoint(checkpoint)
    return {"quant": quant_record(model, meta.get("quant_calibration")), **size_metrics(model, params_dense)}
