"""Channel pruning of image CNNs (and unstructured global magnitude, the image family's weight-level
baseline). Layers, top to bottom (pyproject.toml's import contract): the conf methods (``methods.py``,
``gradual.py``) and the scores stage's helpers (``scores.py``, ``damage.py``); the policy
(``policy.py``: score → allocate → cut); allocation (``allocation.py``); the analytic budget, importance
and MRPF sensitivities; the cut (``structured.py``), which imports none of them."""
