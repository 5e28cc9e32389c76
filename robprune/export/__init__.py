"""``robprune export``: a saved model as a standalone ONNX or TorchScript file, checked against PyTorch on
the run's test points, with ``export.json`` beside it (docs/export.md). ``run.py`` drives it;
``onnx_file.py`` and ``torchscript_file.py`` write and load the two formats; ``qdq.py`` turns the
fake-quantisation wrappers into exportable layers; ``check.py`` compares and times."""
from robprune.export.run import DEFAULT_N_CHECK, DEFAULT_OPSET, FORMATS, export_run

__all__ = ["DEFAULT_N_CHECK", "DEFAULT_OPSET", "FORMATS", "export_run"]
