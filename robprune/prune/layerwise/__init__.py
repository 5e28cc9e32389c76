"""Layer-wise pruning of a transformer text classifier's encoder Linear layers (docs/methods/kr.md): the conf
methods (``methods.py``) over the driver (``language.py``), which streams calibration inputs layer by
layer (``streaming.py``) into the solvers: OBS (``obs.py``), SparseGPT (``sparsegpt.py``) and magnitude
(``magnitude.py``); N:M patterns are parsed and checked in ``nm.py`` only."""
