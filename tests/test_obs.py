"""Layer-wise pruning solvers (robprune.prune.layerwise.obs, robprune.prune.layerwise.sparsegpt): OBS, SparseGPT,
magnitude masks, refit, damped Cholesky — on small random layers, against brute force and plain
reference implementations."""
import math

import pytest
import torch

from robprune.prune.layerwise.magnitude import weight_magnitude_masks
from robprune.prune.layerwise.obs import (HessianAccumulator, damped_cholesky, dead_inputs, obs_prune, obs_prune_loop,
                                          output_error, refit, relative_error)
from robprune.prune.layerwise.sparsegpt import sparsegpt_prune

F64 = torch.float64


def correlated_layer(seed=0, n=512, d_in=32, d_out=16):
    """X: (n, d_in) with correlated columns of different scales, W: (d_out, d_in), float64."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g, dtype=F64) @ torch.randn(d_in, d_in, generator=g, dtype=F64)
    return X, torch.randn(d_out, d_in, generator=g, dtype=F64)


def hessian(X, **kw):
    acc = HessianAccumulator(X.shape[1], **kw)
    acc.add(X)
    return acc


def damped_inverse(H, rel_damp=0.01):
    L, lam = damped_cholesky(H, rel_damp)
    return torch.cholesky_inverse(L), lam


def sq_error(W_new, W, X):
    return float(((W_new - W) @ X.T).square().sum())


# ---------------------------------------------------------------- OBS


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_obs_exact_sparsity_and_beats_magnitude_and_sparsegpt(seed):
    X, W = correlated_layer(seed)
    acc = hessian(X)
    H_inv, _ = damped_inverse(acc.H, rel_damp=1e-6)
    W_obs, mask = obs_prune(W, H_inv, sparsity=0.5)
    assert ((~mask).sum(1) == 16).all() and ((W_obs == 0).sum(1) == 16).all()
    assert (W_obs[~mask] == 0).all()
    magnitude = W * weight_magnitude_masks({"w": W}, sparsity=0.5)["w"]
    W_sgpt, _ = sparsegpt_prune(W, acc.sparsegpt_hessian(), sparsity=0.5)
    e_obs, e_mag, e_sgpt = (sq_error(w, W, X) for w in (W_obs, magnitude, W_sgpt))
    assert e_obs < e_mag
    assert e_obs <= e_sgpt * 1.01
    assert relative_error(W_obs, W, acc.H) == pytest.approx(math.sqrt(e_obs / sq_error(0 * W, W, X)), rel=1e-9)


def test_obs_single_removal_matches_brute_force():
    """d_in = 6, k = 1: OBS removes the weight whose optimal compensated removal costs least, with the
    optimal update, and the cost is w_p² / (2 [H⁻¹]_pp) for E = ½ δ H δᵀ (Hassibi & Stork eq. 5)."""
    X, W = correlated_layer(3, n=64, d_in=6, d_out=5)
    H = X.T @ X + 0.1 * torch.eye(6, dtype=F64)
    H_inv = torch.linalg.inv(H)
    W_obs, mask = obs_prune(W, H_inv, sparsity=1 / 6)
    for r in range(len(W)):
        best = None
        for p in range(6):  # forced δ_p = −w_p, the rest minimise ½ δ H δᵀ: δ_rest = H_rr⁻¹ H_rp w_p
            rest = [j for j in range(6) if j != p]
            delta = torch.zeros(6, dtype=F64)
            delta[p] = -W[r, p]
            delta[rest] = torch.linalg.solve(H[rest][:, rest], H[rest, p] * W[r, p])
            cost = 0.5 * float(delta @ H @ delta)
            if best is None or cost < best[0]:
                best = (cost, p, W[r] + delta)
        cost, p, w_best = best
        assert (~mask[r]).nonzero().flatten().tolist() == [p]
        torch.testing.assert_close(W_obs[r], w_best, rtol=0, atol=1e-10)
        assert cost == pytest.approx(float(W[r, p] ** 2 / (2 * H_inv[p, p])), rel=1e-9)


@pytest.mark.parametrize("pattern", [{"sparsity": 0.5}, {"sparsity": 0.8}, {"n_m": (2, 4)}, {"n_m": (4, 8)}])
def test_obs_batched_equals_row_loop(pattern):
    X, W = correlated_layer(4)
    H_inv, _ = damped_inverse(hessian(X).H)
    W_loop, m_loop = obs_prune_loop(W, H_inv, **pattern)
    for rows, block in ((1, 64), (1, 3), (5, 3), (16, 7), (16, 1)):  # block < k: the blocked downdates run
        for compact in (True, False):  # removed columns dropped from the copies at block ends, or kept
            W_b, m_b = obs_prune(W, H_inv, rows_per_batch=rows, block=block, compact=compact, **pattern)
            assert torch.equal(m_b, m_loop)
            torch.testing.assert_close(W_b, W_loop, rtol=0, atol=1e-10)


def test_obs_bad_batching_raises():
    X, W = correlated_layer(0)
    H_inv, _ = damped_inverse(hessian(X).H)
    for kw in ({"block": 0}, {"rows_per_batch": 0}):
        with pytest.raises(ValueError, match="must be ≥ 1"):
            obs_prune(W, H_inv, sparsity=0.5, **kw)


@pytest.mark.parametrize("n_m", [(2, 4), (4, 8)])
def test_obs_n_m_pattern_and_bias_column(n_m):
    X, W = correlated_layer(5)
    acc = hessian(X, with_bias=True)
    H_inv, _ = damped_inverse(acc.H)
    W_b = torch.cat([W, torch.ones(len(W), 1, dtype=F64)], 1)
    W_new, mask = obs_prune(W_b, H_inv, n_m=n_m, bias_column=True, block=5)  # compacted every 5 removals
    n, m = n_m
    assert (mask[:, :32].reshape(16, -1, m).sum(2) == n).all()
    assert mask[:, -1].all() and not torch.equal(W_new[:, -1], W_b[:, -1])  # the bias is compensated
    W_loop, m_loop = obs_prune_loop(W_b, H_inv, n_m=n_m, bias_column=True)
    assert torch.equal(mask, m_loop)
    torch.testing.assert_close(W_new, W_loop, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kw, match", [
    ({"n_m": (4, 4)}, "0 < N < M"), ({"n_m": (5, 4)}, "0 < N < M"), ({"n_m": (0, 4)}, "0 < N < M"),
    ({"n_m": (2, 5)}, "divide"), ({"sparsity": 1.0}, r"\[0, 1\)"), ({"sparsity": -0.1}, r"\[0, 1\)"),
    ({"sparsity": 0.5, "n_m": (2, 4)}, "exactly one"), ({}, "exactly one")])
def test_bad_patterns_raise(kw, match):
    X, W = correlated_layer(0)
    H = hessian(X).H
    with pytest.raises(ValueError, match=match):
        obs_prune(W, torch.linalg.inv(H), **kw)
    with pytest.raises(ValueError, match=match):
        sparsegpt_prune(W, H, **kw)
    with pytest.raises(ValueError, match=match):
        weight_magnitude_masks({"w": W}, **kw)


# ---------------------------------------------------------------- SparseGPT


def reference_sparsegpt(W, H, *, sparsity=None, n_m=None, blocksize, percdamp=0.01):
    """Algorithm 1 of Frantar & Alistarh 2023 written out plainly: explicit inverse, every update applied
    at once to all later columns (no lazy batching), mask per block from the updated weights."""
    W, H = W.clone(), H.clone()
    H += percdamp * H.diagonal().mean() * torch.eye(len(H), dtype=F64)
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    keep = torch.ones_like(W, dtype=torch.bool)
    d_out, d_in = W.shape
    for j in range(d_in):
        if sparsity is not None and j % blocksize == 0:
            j2 = min(j + blocksize, d_in)
            score = (W[:, j:j2] ** 2 / U.diagonal()[j:j2] ** 2).flatten()
            n_zero = round(sparsity * d_out * j2) - round(sparsity * d_out * j)
            block = torch.ones(score.numel(), dtype=torch.bool)
            block[torch.argsort(score, stable=True)[:n_zero]] = False
            keep[:, j:j2] = block.view(d_out, -1)
        if n_m is not None and j % n_m[1] == 0:
            score = W[:, j:j + n_m[1]] ** 2 / U.diagonal()[j:j + n_m[1]] ** 2
            for r in range(d_out):
                for c in torch.argsort(score[r], stable=True)[:n_m[1] - n_m[0]]:
                    keep[r, j + int(c)] = False
        err = (W[:, j] - W[:, j] * keep[:, j]) / U[j, j]
        W[:, j:] -= torch.outer(err, U[j, j:])
    return W * keep, keep


@pytest.mark.parametrize("pattern, blocksize", [({"sparsity": 0.5}, 128), ({"sparsity": 0.3}, 8),
                                                ({"n_m": (2, 4)}, 128), ({"n_m": (2, 4)}, 8)])
def test_sparsegpt_matches_reference(pattern, blocksize):
    X, W = correlated_layer(6)
    H = hessian(X).sparsegpt_hessian()
    W_new, mask = sparsegpt_prune(W, H, blocksize=blocksize, **pattern)
    W_ref, m_ref = reference_sparsegpt(W, H, blocksize=blocksize, **pattern)
    assert torch.equal(mask, m_ref)
    torch.testing.assert_close(W_new, W_ref, rtol=0, atol=1e-10)


def test_sparsegpt_counts_pattern_and_identity():
    X, W = correlated_layer(7, d_in=40)
    H = hessian(X).sparsegpt_hessian()
    for sparsity in (0.3, 0.5, 0.77):
        W_new, mask = sparsegpt_prune(W, H, sparsity=sparsity, blocksize=16)
        assert int((~mask).sum()) == round(sparsity * W.numel()) == int((W_new == 0).sum())
    W_new, mask = sparsegpt_prune(W, H, n_m=(2, 4), blocksize=8)
    assert (mask.reshape(16, -1, 4).sum(2) == 2).all()
    W_same, mask = sparsegpt_prune(W, H, sparsity=0.0)
    assert torch.equal(W_same, W) and mask.all()
    W32, _ = sparsegpt_prune(W.float(), H, sparsity=0.5)
    assert W32.dtype == torch.float32


def test_sparsegpt_scale_invariant_and_dead_inputs():
    X, W = correlated_layer(8)
    acc = hessian(X)
    a, mask_a = sparsegpt_prune(W, acc.H, sparsity=0.5)
    b, mask_b = sparsegpt_prune(W, acc.sparsegpt_hessian(), sparsity=0.5)
    assert torch.equal(mask_a, mask_b)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    X[:, 3] = 0.0  # a dead input: H_33 = 1 (so the scale now matters, through the damping) and W[:, 3] = 0
    acc = hessian(X)
    assert dead_inputs(acc.H).nonzero().flatten().tolist() == [3]
    c, mask_c = sparsegpt_prune(W, acc.sparsegpt_hessian(), sparsity=0.5)
    assert (c[:, 3] == 0).all() and not mask_c[:, 3].any() and int((~mask_c).sum()) == 256


# ---------------------------------------------------------------- Hessians, refit, damping


def test_refit_recovers_weights_and_bias_streaming():
    g = torch.Generator().manual_seed(9)
    X = torch.randn(300, 12, generator=g, dtype=F64)
    W_true, b_true = torch.randn(5, 12, generator=g, dtype=F64), torch.randn(5, generator=g, dtype=F64)
    Y = X @ W_true.T + b_true
    one = HessianAccumulator(12, with_bias=True, target_dim=5)
    one.add(X, Y)
    three = HessianAccumulator(12, with_bias=True, target_dim=5)
    three.add(X[:100].reshape(50, 2, 12), Y[:100].reshape(50, 2, 5))  # (batch, tokens, features) is fine
    three.add(X[100:170], Y[100:170])
    three.add(X[170:], Y[170:])
    assert three.n == one.n == 300 and one.H.shape == (13, 13) and one.C.shape == (13, 5)
    torch.testing.assert_close(three.H, one.H, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(three.C, one.C, rtol=1e-12, atol=1e-10)
    L, lam = damped_cholesky(one.H, rel_damp=1e-10)
    for W_bar in (refit(one.H, one.C, lam), refit(one.H, one.C, lam, factor=L)):
        assert W_bar.shape == (5, 13)
        torch.testing.assert_close(W_bar, torch.cat([W_true, b_true[:, None]], 1), rtol=0, atol=1e-7)
    assert output_error(X @ W_bar[:, :12].T + W_bar[:, 12], Y) < 1e-8


def test_accumulator_needs_targets():
    acc = HessianAccumulator(4, target_dim=2)
    with pytest.raises(ValueError, match="targets"):
        acc.add(torch.randn(3, 4))
    with pytest.raises(ValueError, match="empty"):
        HessianAccumulator(4).sparsegpt_hessian()
    with pytest.raises(ValueError, match="4 features"):
        HessianAccumulator(4).add(torch.randn(3, 5))


def test_damped_cholesky_raises_lambda_on_singular_hessian():
    g = torch.Generator().manual_seed(10)
    # integer entries, so H = Xᵀ X is exactly of rank 4 < 16
    X = torch.randint(-3, 4, (64, 4), generator=g).to(F64) @ torch.randint(-3, 4, (4, 16), generator=g).to(F64)
    H = X.T @ X
    start = 1e-20 * H.diagonal().mean().item()
    L, lam = damped_cholesky(H, rel_damp=1e-20)
    assert lam > start and math.isclose(math.log10(lam / start) % 1, 0, abs_tol=1e-9)
    torch.testing.assert_close(L @ L.T, H + lam * torch.eye(16, dtype=F64), rtol=1e-9, atol=1e-9)
    ones = torch.ones(2, 2, dtype=F64)  # exactly singular: λ = 1e-18 is lost to rounding, 1e-15 is not
    assert damped_cholesky(ones, rel_damp=1e-18)[1] == pytest.approx(1e-15)
    with pytest.raises(RuntimeError, match="not positive definite after 3 tries"):
        damped_cholesky(-torch.eye(3, dtype=F64), max_tries=3)
    with pytest.raises(ValueError, match="rel_damp"):
        damped_cholesky(H, rel_damp=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        damped_cholesky(torch.full((2, 2), math.nan, dtype=F64))


def test_damped_cholesky_dead_inputs():
    X, _ = correlated_layer(11)
    X[:, [0, 7]] = 0.0
    H = hessian(X).H
    L, lam = damped_cholesky(H)
    d = H.diagonal().clone()
    d[[0, 7]] = 1.0
    assert lam == pytest.approx(0.01 * d.mean().item())
    assert L[0, 0] ** 2 == pytest.approx(1 + lam)


# ---------------------------------------------------------------- magnitude, errors


def test_magnitude_masks_layer_vs_global():
    g = torch.Generator().manual_seed(12)
    weights = {"small": torch.randn(8, 16, generator=g), "large": 1000 * torch.randn(4, 16, generator=g)}
    layer = weight_magnitude_masks(weights, sparsity=0.5, scope="layer")
    glob = weight_magnitude_masks(weights, sparsity=0.5, scope="global")
    assert int((~layer["small"]).sum()) == 64 and int((~layer["large"]).sum()) == 32
    assert int((~glob["small"]).sum()) + int((~glob["large"]).sum()) == 96
    assert int((~glob["small"]).sum()) == 96 and glob["large"].all()  # one threshold: only small ones go
    assert layer["small"].shape == (8, 16) and layer["small"].dtype == torch.bool
    tied = weight_magnitude_masks({"w": torch.ones(2, 4)}, sparsity=0.25)["w"]
    assert tied.tolist() == [[False, False, True, True], [True, True, True, True]]
    nm = weight_magnitude_masks(weights, n_m=(2, 4))
    assert all((m.reshape(-1, 4).sum(1) == 2).all() for m in nm.values())
    assert torch.equal(weight_magnitude_masks({"w": torch.tensor([[4., -1, 3, 2, 0, 5, -6, 1]])}, n_m=(2, 4))["w"],
                       torch.tensor([[True, False, True, False, False, True, True, False]]))
    with pytest.raises(ValueError, match="scope"):
        weight_magnitude_masks(weights, sparsity=0.5, scope="model")


def test_error_measures():
    X, W = correlated_layer(13)
    H = X.T @ X
    W2 = W + 0.1 * torch.randn_like(W)
    direct = output_error(X @ W2.T, X @ W.T)
    assert relative_error(W2, W, H) == pytest.approx(direct, rel=1e-9)
    assert relative_error(W, W, H) == 0.0 and output_error(W, W) == 0.0
