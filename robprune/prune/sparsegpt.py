"""The two baselines of docs/methods/baselines.md as pure tensor functions: SparseGPT (independent layer-wise
pruning, no refit) and magnitude masks (layer-wise, global or N:M).

Same conventions as :mod:`robprune.prune.obs`: W is (d_out, d_in), H = Σ x xᵀ is (d_in, d_in), masks
are bool with True = kept, N:M keeps N of every M consecutive input columns of a row.
"""
from __future__ import annotations

import torch

from robprune.prune.obs import F64, check_n_m, dead_inputs, pruned_per_row


def sparsegpt_prune(W: torch.Tensor, H: torch.Tensor, *, sparsity: float | None = None,
                    n_m: tuple[int, int] | None = None, blocksize: int = 128,
                    percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh 2023, Algorithm 1) on one layer, in float64.

    W: (d_out, d_in). H: (d_in, d_in), as SparseGPT accumulates it 2 X Xᵀ / N (see
    HessianAccumulator.sparsegpt_hessian; any positive scale gives the same result unless an input is
    dead). Dead inputs (H_ii = 0) get H_ii = 1 and a zero weight column; damping
    percdamp · mean(diag H); U = upper Cholesky factor of H⁻¹. Masks are chosen per block of
    ``blocksize`` columns from the weights updated so far, by w² / U_jj²: the
    round(sparsity · d_out · i2) − round(sparsity · d_out · i1) smallest of block [i1, i2), so the
    layer has exactly round(sparsity · numel) zeros (rows may differ); or for n_m=(N, M) the M − N
    smallest of every M columns of a row (blocksize a multiple of M). Updates are eager within a block
    and lazy across blocks. No refit. Returns (W_pruned in W's dtype, mask (d_out, d_in) bool, True = kept).
    """
    d_out, d_in = W.shape
    pruned_per_row(d_in, sparsity, n_m)  # validates the pattern
    if n_m is not None and blocksize % n_m[1]:
        raise ValueError(f"sparsegpt_prune: blocksize {blocksize} must be a multiple of M={n_m[1]}")
    dtype, W, U = W.dtype, W.to(F64).clone(), _upper_inverse_factor(H, percdamp)
    W[:, dead_inputs(H)] = 0.0
    keep = torch.ones(d_out, d_in, dtype=torch.bool, device=W.device)
    for i1 in range(0, d_in, blocksize):
        i2 = min(i1 + blocksize, d_in)
        err = _prune_block(W[:, i1:i2], U[i1:i2, i1:i2], keep[:, i1:i2], sparsity, n_m, (i1, i2, d_out))
        W[:, i2:] -= err @ U[i1:i2, i2:]  # Algorithm 1, lazy batch update E · [H⁻¹]_{J, J+B:}
    return W.masked_fill_(~keep, 0.0).to(dtype), keep


def _upper_inverse_factor(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """U with H_d⁻¹ = Uᵀ U, U upper: H_d = H (dead diagonals 1) + percdamp · mean(diag) I (SparseGPT §3.2)."""
    H = H.to(F64).clone()
    H.diagonal()[dead_inputs(H)] = 1.0
    H.diagonal().add_(percdamp * H.diagonal().mean())
    L, info = torch.linalg.cholesky_ex(H)
    if info.item() != 0:
        raise RuntimeError(f"sparsegpt_prune: H + {percdamp}·mean(diag)·I is not positive definite; raise percdamp")
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


def _prune_block(W1: torch.Tensor, U1: torch.Tensor, keep1: torch.Tensor, sparsity, n_m, where) -> torch.Tensor:
    """Prune the block W1: (d_out, B) IN PLACE (and its mask keep1), column by column with OBS updates
    inside the block (Algorithm 1, inner loop). Returns the scaled errors E: (d_out, B) for the lazy
    update of the columns after the block."""
    i1, i2, d_out = where
    d = U1.diagonal()
    if sparsity is not None:  # adaptive mask selection for the whole block: w² / [H⁻¹]_jj² (U_jj²)
        n_zero = round(sparsity * d_out * i2) - round(sparsity * d_out * i1)
        block = torch.ones(W1.numel(), dtype=torch.bool, device=W1.device)
        block[torch.argsort((W1 ** 2 / d ** 2).flatten(), stable=True)[:n_zero]] = False
        keep1.copy_(block.view_as(W1))
    err = torch.zeros_like(W1)
    for i in range(W1.shape[1]):
        if n_m is not None and i % n_m[1] == 0:  # N:M: the M − N smallest w² / U_jj² of the group
            score = W1[:, i:i + n_m[1]] ** 2 / d[i:i + n_m[1]] ** 2
            drop = torch.argsort(score, dim=1, stable=True)[:, :n_m[1] - n_m[0]]
            keep1[:, i:i + n_m[1]].scatter_(1, drop, False)
        q = W1[:, i] * keep1[:, i]
        err[:, i] = (W1[:, i] - q) / d[i]  # Algorithm 1: E_{:, j} = (W_{:, j} − M ⊙ W_{:, j}) / [H⁻¹]_jj
        W1[:, i:] -= err[:, i:i + 1] * U1[i:i + 1, i:]  # W_{:, j:} −= E_{:, j} · [H⁻¹]_{j, j:}
        W1[:, i] = q
    return err


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
