"""The layer-wise language-model pruners as ``conf/prune`` methods ``fn(model, context, **options)``:
knowledge-retention OBS (docs/methods/kr.md#step-2), SparseGPT (Frantar & Alistarh 2023) and magnitude
pruning of the encoder's Linear layers (:mod:`robprune.prune.layerwise.language`). The calibration sentences come
from the calib stage through the :class:`PruneContext`; the masks are the exact zeros, kept through any
later fine-tuning (:class:`robprune.prune.masks.WeightMask`)."""
from __future__ import annotations

from torch import nn

from robprune.errors import ConfigError
from robprune.prune.context import PruneContext
from robprune.prune.layerwise.nm import parse_n_m

LM_METHODS = ("kr_obs", "sparsegpt", "magnitude")


def _prune(model: nn.Module, context: PruneContext, method: str, sparsity, n_m, **options) -> dict:
    from robprune.prune.layerwise.language import prune_language_model

    if not hasattr(model, "pad_id"):
        raise ConfigError(f"prune={method} prunes the Linear layers of a transformer text model, not "
                          f"{type(model).__name__}; use a channel pruner (e.g. prune=l1_filter) for images")
    pattern = parse_n_m(n_m)
    info = prune_language_model(model, context.calib_ids, method=method, sparsity=None if pattern else sparsity,
                                n_m=pattern, heldout_ids=context.heldout_ids, device=context.device,
                                progress=context.progress, **options)
    return {**info, "history": [], "report": True, "ratio_semantics": "params", "channel_ratio": None}


def kr_obs(model: nn.Module, context: PruneContext, *, sparsity: float | None = 0.5, n_m=None,
           method: str = "kr_obs", rel_damp: float = 0.01, batch_size: int = 32, refit_head: bool = True) -> dict:
    """Knowledge-retention OBS: layer by layer in forward order, inputs through the already pruned model,
    the dense weights refit to the dense outputs, then exact OBS removal per row (docs/methods/kr.md#step-2 (2a-2d));
    the pooler and classifier refit too unless ``refit_head`` is false."""
    return _prune(model, context, method, sparsity, n_m, rel_damp=rel_damp, batch_size=batch_size,
                  refit_head=refit_head)


def sparsegpt(model: nn.Module, context: PruneContext, *, sparsity: float | None = 0.5, n_m=None,
              method: str = "sparsegpt", percdamp: float = 0.01, blocksize: int = 128, batch_size: int = 32) -> dict:
    """SparseGPT, independent layer-wise (Frantar & Alistarh 2023, Algorithm 1): dense inputs, no refit."""
    return _prune(model, context, method, sparsity, n_m, rel_damp=percdamp, blocksize=blocksize,
                  batch_size=batch_size)


def magnitude(model: nn.Module, context: PruneContext, *, sparsity: float | None = 0.5, n_m=None,
              method: str = "magnitude", scope: str = "layer") -> dict:
    """Magnitude pruning of the encoder Linear weights, per layer or one global threshold (``scope``)."""
    if scope not in ("layer", "global"):
        raise ConfigError(f"prune.scope must be layer or global, got {scope!r}; e.g. prune.scope=layer")
    return _prune(model, context, method, sparsity, n_m, scope=scope)


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
