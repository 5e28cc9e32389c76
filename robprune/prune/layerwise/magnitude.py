"""Magnitude masks (Han et al. 2015; a baseline of docs/methods/kr.md) as a pure tensor function:
layer-wise, global or N:M.

Same conventions as :mod:`robprune.prune.layerwise.obs`: masks are bool with True = kept, N:M keeps N of
every M consecutive input columns of a row.
"""
from __future__ import annotations

import torch

from robprune.prune.layerwise.nm import check_n_m
from robprune.prune.layerwise.obs import F64, pruned_per_row


def weight_magnitude_masks(weights: dict[str, torch.Tensor], *, sparsity: float | None = None,
                           n_m: tuple[int, int] | None = None, scope: str = "layer") -> dict[str, torch.Tensor]:
    """Magnitude masks (Han et al. 2015) for tensors {name: W}; returns {name: bool mask, True = kept}.

    scope="layer": each tensor loses its round(sparsity · numel) smallest |w|; "global": one threshold,
    round(sparsity · total numel) smallest over all tensors together. n_m=(N, M): the N largest |w| of
    every M consecutive entries of each row (W viewed as (shape[0], -1); scope does not apply). Exact
    counts; ties go to the earlier position (stable sort).
    """
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if n_m is not None:
        return {name: _n_m_mask(w, n_m, sparsity) for name, w in weights.items()}
    if scope == "layer":
        return {name: _smallest_removed(w.detach().abs().flatten(), sparsity).view_as(w) for name, w in weights.items()}
    flat = torch.cat([w.detach().abs().flatten().to(F64) for w in weights.values()])
    keep, masks, start = _smallest_removed(flat, sparsity), {}, 0
    for name, w in weights.items():
        masks[name] = keep[start:start + w.numel()].view_as(w)
        start += w.numel()
    return masks


def _smallest_removed(magnitude: torch.Tensor, sparsity: float | None) -> torch.Tensor:
    """(n,) bool keep-mask without the round(sparsity · n) smallest entries (stable: earlier first)."""
    n_zero = pruned_per_row(magnitude.numel(), sparsity, None)
    keep = torch.ones_like(magnitude, dtype=torch.bool)
    keep[torch.argsort(magnitude, stable=True)[:n_zero]] = False
    return keep


def _n_m_mask(w: torch.Tensor, n_m: tuple[int, int], sparsity: float | None) -> torch.Tensor:
    """N largest |w| kept in every M consecutive entries of each row of w viewed as (shape[0], -1)."""
    rows = w.detach().reshape(w.shape[0], -1)
    pruned_per_row(rows.shape[1], sparsity, n_m)
    n, m = check_n_m(n_m, rows.shape[1])
    groups = rows.abs().reshape(-1, m)
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(1, torch.argsort(groups, dim=1, stable=True)[:, :m - n], False)
    return keep.view_as(w)
