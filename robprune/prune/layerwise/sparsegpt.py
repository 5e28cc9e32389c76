"""SparseGPT (independent layer-wise pruning, no refit; a baseline of docs/methods/kr.md) as a pure
tensor function.

Same conventions as :mod:`robprune.prune.layerwise.obs`: W is (d_out, d_in), H = Σ x xᵀ is (d_in, d_in), masks
are bool with True = kept, N:M keeps N of every M consecutive input columns of a row.
"""
from __future__ import annotations

import torch

from robprune.prune.layerwise.obs import F64, dead_inputs, pruned_per_row


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
