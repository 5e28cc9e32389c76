"""Fake quantisation (docs/methods/adverfine.md#step-2): uniform quantiser with a straight-through estimator
(``quantizer.py``), range observers (``observers.py``), plain-torch wrappers around every
Conv2d/Linear (``modules.py``), calibration on training data (``calibrate.py``), storage size at
the bit width (``size.py``) and what the pipeline's quant stage needs (``stage.py``)."""
from robprune.quant.calibrate import calibrate, observer_mode
from robprune.quant.modules import QuantSpec, QuantWrapper, quant_spec_of, quantize_model, wrappers
from robprune.quant.size import size_metrics, storage_bytes
from robprune.quant.stage import quant_record, quantize_and_calibrate, spec_from_config

__all__ = ["QuantSpec", "QuantWrapper", "calibrate", "observer_mode", "quant_record",
           "quant_spec_of", "quantize_and_calibrate", "quantize_model", "size_metrics", "spec_from_config",
           "storage_bytes", "wrappers"]
