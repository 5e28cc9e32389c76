"""The layer-wise language-model pruners as ``conf/prune`` methods ``fn(model, context, **options)``:
knowledge-retention OBS (docs/methods/kr.md#step-2), SparseGPT (Frantar & Alistarh 2023) and magnitude
pruning of the encoder's Linear layers (:mod:`robprune.prune.layerwise.language`). The calibration sentences come
from the calib stage through the :class:`PruneContext`; the masks are the exact zeros, kept through any
later fine-tuning (:class:`robprune.prune.masks.WeightMask`)."""
from __future__ import annotations

from typing import Annotated

from torch import nn

from robprune.errors import ConfigError
from robprune.prune.context import PruneContext
from robprune.options import BOOL, FRACTION, SIZE, STR, Choice, Float, Int, Value
from robprune.prune.layerwise.nm import parse_n_m
from robprune.registry import PRUNERS

# The calib stage's node, shared by every layer-wise pruner (not an option of the method itself)
CALIBRATION = {"calibration": {"n": Int(1, example="512"), "heldout": Int(0, example="64")}}
Sparsity = Annotated[float | None, FRACTION, "fraction of each encoder Linear layer's (row's, for the OBS methods) "
                     "weights removed; the embeddings, pooler and classifier are not pruned"]
NM = Annotated[str | None, Value("str", null=True, example="2:4"), "N:M instead of sparsity, e.g. '2:4' or '32:64' = "
               "N kept of every M consecutive input weights"]
Method = Annotated[str, STR, "name recorded in results"]
BatchSize = Annotated[int, SIZE, "calibration sentences per forward pass (memory: one batch of activations)"]


def prune_layers(model: nn.Module, context: PruneContext, method: str, sparsity, n_m, *, solver=None,
                 **options) -> dict:
    """Prune a text model's encoder layer by layer with ``solver`` (a
    :class:`robprune.prune.layerwise.language.Solver`; None: the built-in one of ``method``), the
    calibration sentences from ``context``; the info dict of :func:`robprune.prune.prune_model`."""
    from robprune.prune.layerwise.language import prune_language_model

    if not hasattr(model, "pad_id"):
        raise ConfigError(f"prune={method} prunes the Linear layers of a transformer text model, not "
                          f"{type(model).__name__}; use a channel pruner (e.g. prune=l1_filter) for images")
    pattern = parse_n_m(n_m)
    info = prune_language_model(model, context.calib_ids, method=method, sparsity=None if pattern else sparsity,
                                n_m=pattern, heldout_ids=context.heldout_ids, device=context.device,
                                progress=context.progress, solver=solver, **options)
    return {**info, "history": [], "report": True, "ratio_semantics": "params", "channel_ratio": None}


@PRUNERS.register("kr_obs", modality="text", family="layerwise", nodes=CALIBRATION)
def kr_obs(model: nn.Module, context: PruneContext, *, sparsity: Sparsity = 0.5, n_m: NM = None, method: Method = "kr_obs",
           rel_damp: Annotated[float, Float(0, low_open=True, example="0.01"), "Hessian damping λ = rel_damp · mean "
                               "diag(H), raised ×10 until Cholesky succeeds"] = 0.01,
           batch_size: BatchSize = 32,
           refit_head: Annotated[bool, BOOL, "refit the pooler and classifier to the dense outputs too "
                                 "(docs/methods/kr.md#step-2); false keeps them dense"] = True) -> dict:
    """Knowledge-retention OBS: layer by layer in forward order, inputs through the already pruned model,
    the dense weights refit to the dense outputs, then exact OBS removal per row (docs/methods/kr.md#step-2 (2a-2d));
    the pooler and classifier refit too unless ``refit_head`` is false."""
    return prune_layers(model, context, method, sparsity, n_m, rel_damp=rel_damp, batch_size=batch_size,
                  refit_head=refit_head)


@PRUNERS.register("sparsegpt", modality="text", family="layerwise", nodes=CALIBRATION)
def sparsegpt(model: nn.Module, context: PruneContext, *, sparsity: Sparsity = 0.5, n_m: NM = None,
              method: Method = "sparsegpt",
              percdamp: Annotated[float, Float(0, low_open=True, example="0.01"), "damping percdamp · mean diag(H) "
                                  "(the paper's 0.01)"] = 0.01,
              blocksize: Annotated[int, Int(1, example="128"), "columns per block: mask selection and lazy batch "
                                   "updates (the paper's 128)"] = 128,
              batch_size: BatchSize = 32) -> dict:
    """SparseGPT, independent layer-wise (Frantar & Alistarh 2023, Algorithm 1): dense inputs, no refit."""
    return prune_layers(model, context, method, sparsity, n_m, rel_damp=percdamp, blocksize=blocksize,
                  batch_size=batch_size)


@PRUNERS.register("magnitude", modality="text", family="layerwise", nodes=CALIBRATION)
def magnitude(model: nn.Module, context: PruneContext, *, sparsity: Sparsity = 0.5, n_m: NM = None,
              method: Method = "magnitude",
              scope: Annotated[str, Choice("layer", "global"), "layer = each Linear loses the fraction | global = one "
                               "|w| threshold over all encoder Linears"] = "layer") -> dict:
    """Magnitude pruning of the encoder Linear weights, per layer or one global threshold (``scope``)."""
    return prune_layers(model, context, method, sparsity, n_m, scope=scope)


def measured_sparsity(model: nn.Module) -> dict | None:
    """{sparsity: zero fraction of the encoder's Linear weights (embeddings, pooler and classifier not
    counted, as the paper counts), sparsity_total: those zeros over every parameter element of the model},
    measured on a loaded checkpoint; None for a model without a transformer encoder."""
    encoder = getattr(getattr(getattr(model, "hf", None), "base_model", None), "encoder", None)
    if encoder is None:
        return None
    weights = [m.weight for m in encoder.modules() if isinstance(m, nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    return {"sparsity": zeros / total if total else 0.0, "sparsity_total": zeros / sum(p.numel() for p in model.parameters())}
