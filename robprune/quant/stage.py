"""What the pipeline's quant stage and its results need: the spec from ``cfg.quant`` (validated,
errors naming the key), quantise + calibrate, and the ``quant`` block of metrics.json."""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from robprune.config import to_container
from robprune.errors import ConfigError
from robprune.data.tensors import seeded_indices
from robprune.quant.calibrate import calibrate
from robprune.quant.modules import IMPLEMENTATION, METHODS, QuantSpec, quant_spec_of, quantize_model

NONE = "none"


def spec_from_config(quant_cfg: DictConfig | dict | None) -> QuantSpec | None:
    """QuantSpec for a ``conf/quant`` node; None for ``method: none`` (or no node).
    Raises ConfigError naming the key (quant.bits outside 2..16, unknown method or observer...)."""
    values = to_container(quant_cfg) if quant_cfg is not None else {}
    method = (values or {}).get("method", NONE)
    if method == NONE:
        return None
    if method not in METHODS:
        raise ConfigError(f"quant.method must be one of none, {', '.join(METHODS)}, got {method!r}; e.g. quant=ptq")
    if method == "qat" and int((values.get("train") or {}).get("epochs", 0)) > 0 and "objective" not in values["train"]:
        raise ConfigError("quant.train.objective is not set; quant=qat trains with quant.train (see conf/quant/qat.yaml)")
    calibration = values.get("calibration") or {}
    n = calibration.get("n_examples")
    if n is not None and int(n) < 1:
        raise ConfigError(f"quant.calibration.n_examples must be >= 1 or null (whole training split), got {n}")
    try:
        return QuantSpec.from_dict(values)
    except ValueError as err:  # a declaration refused a value: its message names the key and a fix
        raise ConfigError(str(err)) from None
    except TypeError as err:
        raise ConfigError(f"{err}; e.g. quant.bits=8") from None


def quantize_and_calibrate(model: nn.Module, quant_cfg: DictConfig, train_x: torch.Tensor, *, seed: int,
                           device: torch.device | str) -> dict:
    """Wrap ``model`` (on ``device``) IN PLACE with fake quantisation and calibrate its activation
    ranges on a seeded subset of the TRAINING images train_x ((N, C, H, W) uint8 or [0, 1] floats).
    Returns the calibration record {split, n_examples, seed} stored in model.json and metrics."""
    spec = spec_from_config(quant_cfg)
    if spec is None:
        raise ConfigError("quant.method is none; there is nothing to quantise")
    quantize_model(model, spec)
    calibration = quant_cfg.get("calibration") or {}
    idx = seeded_indices(train_x.shape[0], calibration.get("n_examples"), seed)
    n = calibrate(model, train_x[idx], batch_size=int(calibration.get("batch_size", 256)), device=device)
    return {"split": "train", "n_examples": n, "seed": int(seed)}


def quant_record(model: nn.Module, calibration: dict | None = None) -> dict:
    """The ``quant`` block of metrics.json: {method: none, bits: 32} for a float model, else the
    spec (method, bits, per_channel, observer, ema_decay, freeze_ranges), ``implementation`` and
    ``calibration`` (where the activation ranges came from)."""
    spec = quant_spec_of(model)
    if spec is None:
        return {"method": NONE, "bits": 32}
    return {**spec.to_dict(), "implementation": IMPLEMENTATION, "calibration": calibration}
