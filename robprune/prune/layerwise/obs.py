"""Layer-wise pruning solvers for language models (docs/methods/kr.md#step-2): pure tensor functions.

Conventions: a Linear layer's weight W is (d_out, d_in); its inputs X are rows x of shape (d_in,), so
H = Σ x xᵀ is (d_in, d_in) and ‖W X‖ means ‖W xᵀ‖ summed over rows. All Hessian maths in float64.
Masks are bool, True = kept. N:M means N weights KEPT in every M consecutive input columns of a row
(NVIDIA's semi-structured 2:4; 32:64 keeps 32 of 64).

Step 2 for one layer:
    acc = HessianAccumulator(d_in, with_bias=True, target_dim=d_out); acc.add(x_hat, y_dense) ...
    L, lam = damped_cholesky(acc.H)                 # 2a
    W_bar = refit(acc.H, acc.C, lam, factor=L)      # 2b, (d_out, d_in + 1): bias is the last column
    W_bar[:, dead_inputs(acc.H)] = 0                 # as SparseGPT does (already 0 after a refit)
    W_new, mask = obs_prune(W_bar, torch.cholesky_inverse(L), sparsity=0.5, bias_column=True)   # 2c
The SparseGPT and magnitude baselines are in :mod:`robprune.prune.layerwise.sparsegpt`.
"""
from __future__ import annotations

import math

import torch

from robprune.prune.layerwise.nm import check_n_m

F64 = torch.float64
BATCH_BYTES = 256 * 2**20  # memory budget of obs_prune's per-batch downdate factors when rows_per_batch=None
SHRINK = 0.25  # obs_prune(compact=True) drops removed columns once they are this fraction of the copies' width


class HessianAccumulator:
    """Streaming H = Σ x xᵀ and C = Σ x yᵀ over calibration batches; never holds the activations.

    d_in: input width. with_bias: append a constant 1 to every x, so H is (d_in+1)² and a refit treats
    the bias as the last weight column. target_dim: d_out of the targets y (then C is (d_in[+1], d_out));
    None: no C. The tensors live on the device of the first batch, in float64. n counts rows seen.
    """

    def __init__(self, d_in: int, *, with_bias: bool = False, target_dim: int | None = None):
        self.d_in, self.with_bias, self.target_dim = d_in, with_bias, target_dim
        self.H: torch.Tensor | None = None
        self.C: torch.Tensor | None = None
        self.n = 0

    def add(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """x: (..., d_in) inputs, one row per token (drop padding tokens first); y: (..., d_out) targets
        for the same rows, required iff target_dim was given. Adds in place."""
        if x.shape[-1] != self.d_in:
            raise ValueError(f"HessianAccumulator: inputs must have {self.d_in} features, got shape {tuple(x.shape)}")
        x = x.reshape(-1, self.d_in).to(F64)
        if self.with_bias:
            x = torch.cat([x, x.new_ones(len(x), 1)], dim=1)
        if self.H is None:
            width = x.shape[1]
            self.H = x.new_zeros(width, width)
            self.C = x.new_zeros(width, self.target_dim) if self.target_dim is not None else None
        self.H.addmm_(x.T, x)
        if self.C is not None:
            if y is None:
                raise ValueError("HessianAccumulator(target_dim=...) needs the targets y in add(x, y)")
            self.C.addmm_(x.T, y.reshape(-1, self.target_dim).to(device=x.device, dtype=F64))
        self.n += len(x)

    def sparsegpt_hessian(self) -> torch.Tensor:
        """H scaled as SparseGPT accumulates it: 2 X Xᵀ / N (Frantar & Alistarh 2023, §3)."""
        if self.H is None or self.n == 0:
            raise ValueError("HessianAccumulator is empty: call add() with calibration inputs first")
        return self.H * (2.0 / self.n)


def dead_inputs(H: torch.Tensor) -> torch.Tensor:
    """(d,) bool: inputs that were always zero (H_ii = 0); their weight columns should be zeroed."""
    return H.diagonal() == 0


def damped_cholesky(H: torch.Tensor, rel_damp: float = 0.01, max_tries: int = 8) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor L of H' + λI, and λ (docs/methods/kr.md#step-2 (2a)).

    H: (d, d) symmetric PSD. H' is H in float64 with dead inputs' diagonal set to 1 (SparseGPT's rule;
    zero those weight columns, see :func:`dead_inputs`). λ = rel_damp · mean(diag H'), multiplied by 10
    after each failed factorisation; RuntimeError after max_tries. H^-1 = torch.cholesky_inverse(L).
    """
    if not rel_damp > 0:
        raise ValueError(f"damped_cholesky: rel_damp must be > 0 (it is raised ×10 on failure), got {rel_damp}")
    H = H.to(F64).clone()
    if not torch.isfinite(H).all():
        raise ValueError("damped_cholesky: H has non-finite entries (NaN/inf in the calibration activations?)")
    H.diagonal()[dead_inputs(H)] = 1.0
    lam = rel_damp * H.diagonal().mean().item()
    eye = torch.eye(len(H), dtype=F64, device=H.device)
    for _ in range(max_tries):
        L, info = torch.linalg.cholesky_ex(H + lam * eye)
        if info.item() == 0:
            return L, lam
        lam *= 10.0
    raise RuntimeError(f"damped_cholesky: H + λI is not positive definite after {max_tries} tries "
                       f"(last λ = {lam / 10:.3g}, mean diag {H.diagonal().mean().item():.3g}); "
                       f"check the calibration activations")


def refit(H: torch.Tensor, C: torch.Tensor, lam: float, *, factor: torch.Tensor | None = None) -> torch.Tensor:
    """Damped least squares W̄ = argmin_W ‖W X̂ − Y‖² + λ‖W‖², i.e. W̄ᵀ = (H + λI)⁻¹ C
    (docs/methods/kr.md#step-2 (2b)).

    H: (d, d) = Σ x̂ x̂ᵀ, C: (d, d_out) = Σ x̂ yᵀ (d = d_in[+1] with the bias column). factor: the lower
    Cholesky factor of H + λI if already computed (e.g. damped_cholesky's; its dead-input diagonal
    differs, which does not change W̄ since C is 0 there). Solved by Cholesky, no explicit inverse.
    Returns W̄: (d_out, d) float64.
    """
    if factor is None:
        H = H.to(F64)
        factor, info = torch.linalg.cholesky_ex(H + lam * torch.eye(len(H), dtype=F64, device=H.device))
        if info.item() != 0:
            raise RuntimeError(f"refit: H + λI is not positive definite at λ = {lam:.3g}; use damped_cholesky's λ")
    return torch.cholesky_solve(C.to(F64), factor).T  # normal equations (H + λI) W̄ᵀ = C


def pruned_per_row(d_in: int, sparsity: float | None, n_m: tuple[int, int] | None) -> int:
    """Weights to remove per row: round(sparsity · d_in), or (M − N) · d_in / M for N:M (N kept of M).
    ValueError for a bad or ambiguous pattern."""
    if (sparsity is None) == (n_m is None):
        raise ValueError(f"give exactly one of sparsity and n_m, got sparsity={sparsity}, n_m={n_m}")
    if n_m is not None:
        n, m = check_n_m(n_m, d_in)
        return (m - n) * (d_in // m)
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return round(float(sparsity) * d_in)


def obs_prune(W: torch.Tensor, H_inv: torch.Tensor, *, sparsity: float | None = None,
              n_m: tuple[int, int] | None = None, rows_per_batch: int | None = None,
              bias_column: bool = False, block: int = 64, compact: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact greedy Optimal Brain Surgeon per row (Hassibi & Stork 1993; docs/methods/kr.md#step-2 (2c)).

    W: (d_out, d) with d = d_in, or d_in + 1 when bias_column (the last column is the bias: never
    pruned, but it takes OBS updates). H_inv: (d, d) = (H + λI)⁻¹, e.g. cholesky_inverse of
    damped_cholesky's factor. Removes k = round(sparsity · d_in) weights per row, or for n_m=(N, M)
    exactly M − N of every M consecutive columns (N kept), picking greedily among groups not yet full.
    Returns (W_pruned in W's dtype, mask (d_out, d) bool, True = kept): exactly k pruned per row.

    Rows are independent, each with its own shrinking H⁻¹_t = H⁻¹ − Σ_{j<t} v_j v_jᵀ (the downdates are
    a pivoted Cholesky of H⁻¹ in OBS order). Computed blocked, as LAPACK's pivoted Cholesky (dpstrf)
    is: each row keeps H⁻¹ as of the start of its current block of `block` removals; inside a block
    the column H⁻¹_t[:, p] is that copy's row p minus the block's few factors (left-looking, a short
    matrix-vector product), and at the end of the block the copy is downdated by the block's factors
    at once (one batched matrix product, compute-bound). Per row this is 2·k·d² flops in matrix
    products plus k·block·d in matrix-vector ones, where keeping every factor since the start costs
    k²·d memory-bound flops: on 2 CPU cores ~3× faster for a 1536-wide layer at 50%, more at higher
    sparsity (scripts/bench_obs_solver.py). Memory: B·d²·8 bytes per batch of B rows (twice that
    when compact). rows_per_batch=None: B ≤ 64 within 256 MiB. Same result as :func:`obs_prune_loop` up to rounding.
    compact (default): once the removed columns are SHRINK (a quarter) of the copies' width, a block end
    drops them from every row's copy, so later downdates run on the r active columns (2·T·r² per block
    instead of 2·T·d²). Dropping costs about one downdate (a memory-bound gather), hence not every
    block; measured 1.05–1.1× at 50% and ~1.4× at 87.5% on a 1536-wide layer (bench_obs_solver.py).
    compact=False keeps the full copies (the reference the benchmark times it against).
    """
    d_out, d = W.shape
    d_in = d - int(bias_column)
    k = pruned_per_row(d_in, sparsity, n_m)
    H_inv = H_inv.to(device=W.device, dtype=F64)
    if rows_per_batch is None:  # the compacted solver holds two (B, d, d) buffers
        rows_per_batch = int(min(64, max(1, BATCH_BYTES // (d * d * 8 * (2 if compact else 1)))))
    elif rows_per_batch < 1:
        raise ValueError(f"obs_prune: rows_per_batch must be ≥ 1, got {rows_per_batch}")
    if block < 1:
        raise ValueError(f"obs_prune: block must be ≥ 1, got {block}")
    frozen = torch.zeros(d, dtype=torch.bool, device=W.device)
    frozen[d_in:] = True
    out, masks = [], []
    for start in range(0, d_out, rows_per_batch):
        w, removed = _obs_rows(W[start:start + rows_per_batch].to(F64), H_inv, k, n_m, frozen, block, compact)
        out.append(w)
        masks.append(~removed)
    return torch.cat(out).to(W.dtype), torch.cat(masks)


def _obs_rows(w: torch.Tensor, H_inv: torch.Tensor, k: int, n_m, frozen: torch.Tensor, block: int,
              compact: bool = True):
    """k greedy OBS removals in each row of w: (B, d) float64, vectorised over the batch, in blocks of
    `block` removals (see :func:`obs_prune`). Returns (w updated, removed (B, d) bool).

    compact: at a block end, once enough columns were removed (SHRINK), drop them from each row's copy of
    H⁻¹ (and from w, the factors, the diagonal). Every row removes exactly one weight per step, so all rows keep the
    same number r of active columns and the copies stay one (B, r, r) tensor (gathered through `idx`,
    each row's active original columns). A removed column q plays no further part: after its downdate
    row and column q of H⁻¹ are zero, so later updates leave w_q alone. The downdates then cost
    2·T·r² per block instead of 2·T·d².
    """
    B, d = w.shape
    w = w.clone()  # (B, r): the active columns
    rows = torch.arange(B, device=w.device)
    T = max(1, min(block, k))
    # per row: H⁻¹ at the block start; a fresh contiguous copy (expand(1, …).contiguous() would alias H⁻¹,
    # and the downdates below are in place)
    Hb = H_inv.expand(B, d, d).clone(memory_format=torch.contiguous_format) if k > T else H_inv.expand(B, d, d)
    compact = compact and k > T
    dropped = 0  # removals already dropped from the copies
    if compact:  # Hb's storage and a spare of the same size hold the shrinking copies
        store, spare = Hb.view(-1), torch.empty(B * d * d, dtype=w.dtype, device=w.device)
    diag = H_inv.diagonal().expand(B, d).clone()  # [H⁻¹_t]_ii per row
    V = w.new_empty(B, T, d)                        # this block's downdate factors v_j
    idx = torch.arange(d, device=w.device).expand(B, d)  # active column c of row b is original column idx[b, c]
    removed = torch.zeros(B, d, dtype=torch.bool, device=w.device)  # original columns
    gone = torch.zeros(B, d, dtype=torch.bool, device=w.device)     # active columns removed in this block
    fixed = frozen.expand(B, d)                     # active columns never removed (the bias column)
    lost = torch.zeros(B, d // n_m[1], dtype=torch.long, device=w.device) if n_m else None
    for t in range(k):
        j = t % T
        blocked = gone | fixed
        if n_m:
            blocked |= _full_groups(lost, n_m, d).gather(1, idx)
        # Hassibi & Stork 1993 eq. 5: saliency L_q = w_q² / (2 [H⁻¹]_qq) for E = ½ δwᵀ H δw
        p = (w * w / diag).masked_fill(blocked, math.inf).argmin(1)
        col = Hb[rows, p]  # column p of H⁻¹_t = H⁻¹_block[:, p] − Σ_{block's j} v_j v_j[p]  (H⁻¹ symmetric)
        if j:
            col = col - torch.bmm(V[rows, :j, p].unsqueeze(1), V[:, :j]).squeeze(1)
        d_p = col[rows, p]
        # Hassibi & Stork 1993 eq. 5: δw = −(w_q / [H⁻¹]_qq) H⁻¹ e_q
        w -= col * (w[rows, p] / d_p).unsqueeze(1)
        # OBC (Frantar et al. 2022) Lemma 1: H⁻¹ ← H⁻¹ − H⁻¹[:, q] H⁻¹[q, :] / [H⁻¹]_qq; stored as
        # the factor v = H⁻¹[:, q] / √[H⁻¹]_qq
        V[:, j] = col / d_p.sqrt().unsqueeze(1)
        diag -= V[:, j] ** 2
        w[rows, p] = 0.0
        gone[rows, p] = True
        q = idx[rows, p]
        removed[rows, q] = True
        if n_m:
            lost[rows, q // n_m[1]] += 1
        if j == T - 1 and t < k - 1:  # end of a block: apply its downdates to every row's copy at once
            if compact and (t + 1 - dropped) >= SHRINK * Hb.shape[2]:
                # first drop the removed columns, then downdate the smaller copies
                keep = (~gone).nonzero()[:, 1].view(B, -1)  # same count per row; nonzero is row-major, sorted
                dropped = t + 1
                r, r_old = keep.shape[1], Hb.shape[2]
                # gathered into the two preallocated buffers (fresh (B, r, r) tensors cost more in page
                # faults than the downdate itself): rows into `spare`, then columns back into `store`
                rows_kept = spare[:B * r * r_old].view(B, r, r_old)
                torch.gather(Hb, 1, keep.unsqueeze(2).expand(B, r, r_old), out=rows_kept)
                Hb = store[:B * r * r].view(B, r, r)
                torch.gather(rows_kept, 2, keep.unsqueeze(1).expand(B, r, r), out=Hb)
                Vk = V.gather(2, keep.unsqueeze(1).expand(B, T, r))
                Hb.baddbmm_(Vk.transpose(1, 2), Vk, alpha=-1.0)
                w, diag, idx, fixed = w.gather(1, keep), diag.gather(1, keep), idx.gather(1, keep), fixed.gather(1, keep)
                V = w.new_empty(B, T, r)
                gone = torch.zeros(B, r, dtype=torch.bool, device=w.device)
            else:
                Hb.baddbmm_(V.transpose(1, 2), V, alpha=-1.0)
    if w.shape[1] < d:  # compacted: the active columns back in place, the dropped (removed) ones 0
        w = w.new_zeros(B, d).scatter_(1, idx, w)
    return w.masked_fill_(removed, 0.0), removed  # removed entries drift by rounding in later updates


def _full_groups(lost: torch.Tensor, n_m: tuple[int, int], d: int) -> torch.Tensor:
    """(B, d) bool: columns whose group of M has already lost its M − N weights (a bias column: False).
    lost: (B, d_in / M) removals per group so far."""
    full = (lost >= n_m[1] - n_m[0]).repeat_interleave(n_m[1], dim=1)
    return torch.nn.functional.pad(full, (0, d - full.shape[1]))


def obs_prune_loop(W: torch.Tensor, H_inv: torch.Tensor, *, sparsity: float | None = None,
                   n_m: tuple[int, int] | None = None, bias_column: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for :func:`obs_prune`: one row at a time, explicit rank-1 downdate of a (d, d) H⁻¹ copy,
    exactly as docs/methods/kr.md#step-2 (2c) states it. Same arguments and result; slow, for tests and benchmarks."""
    d_out, d = W.shape
    d_in = d - int(bias_column)
    k = pruned_per_row(d_in, sparsity, n_m)
    W_new, mask = W.to(F64).clone(), torch.ones(d_out, d, dtype=torch.bool, device=W.device)
    frozen = torch.arange(d, device=W.device) >= d_in
    for r in range(d_out):
        w, Hi = W_new[r], H_inv.to(F64).clone()
        lost = torch.zeros(1, d_in // n_m[1] if n_m else 0, dtype=torch.long, device=W.device)
        for _ in range(k):
            blocked = ~mask[r] | frozen | (_full_groups(lost, n_m, d)[0] if n_m else False)
            p = int((w * w / Hi.diagonal()).masked_fill(blocked, math.inf).argmin())
            w -= (w[p] / Hi[p, p]) * Hi[:, p]
            Hi -= torch.outer(Hi[:, p], Hi[p, :]) / Hi[p, p]
            w[p], mask[r, p] = 0.0, False
            if n_m:
                lost[0, p // n_m[1]] += 1
    return W_new.masked_fill_(~mask, 0.0).to(W.dtype), mask


def relative_error(W_new: torch.Tensor, W_ref: torch.Tensor, H: torch.Tensor) -> float:
    """‖(W_new − W_ref) X‖_F / ‖W_ref X‖_F from H = Σ x xᵀ: ‖A X‖_F² = tr(A H Aᵀ).
    W_*: (d_out, d), H: (d, d) (with the bias column if W has one). 0.0 when both norms are 0."""
    H = H.to(F64)
    delta, ref = (W_new.to(F64) - W_ref.to(F64)), W_ref.to(F64)
    num = ((delta @ H) * delta).sum().clamp_min(0).item()
    den = ((ref @ H) * ref).sum().clamp_min(0).item()
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return math.sqrt(num / den)


def output_error(Y_hat: torch.Tensor, Y: torch.Tensor) -> float:
    """‖Ŷ − Y‖_F / ‖Y‖_F over all entries (any matching shapes), in float64."""
    num = torch.linalg.vector_norm(Y_hat.to(F64) - Y.to(F64)).item()
    den = torch.linalg.vector_norm(Y.to(F64)).item()
    return (0.0 if num == 0.0 else math.inf) if den == 0.0 else num / den
