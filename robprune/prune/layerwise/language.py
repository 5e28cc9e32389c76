"""Layer-wise pruning of a transformer text classifier's encoder (docs/methods/kr.md): knowledge-retention
OBS with cumulative-error correction, its uncorrected variant, SparseGPT and magnitude baselines.

Every method prunes the encoder's Linear weights IN PLACE as exact zeros (a mask; nothing is removed),
so :class:`robprune.prune.masks.WeightMask` re-derives the masks from the zeros when fine-tuning and
keeps them zero. Embeddings are neither pruned nor counted in the sparsity; the pooler and classifier
are never pruned (kr_obs refits them). The solvers are :mod:`robprune.prune.layerwise.obs` and
:mod:`robprune.prune.layerwise.sparsegpt`; the forward streaming is :mod:`robprune.prune.layerwise.streaming`.
"""
from __future__ import annotations

import copy
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from robprune.errors import ConfigError
from robprune.prune.layerwise.magnitude import weight_magnitude_masks
from robprune.prune.layerwise.nm import check_n_m_fits, parse_n_m
from robprune.prune.layerwise.obs import (
    HessianAccumulator,
    damped_cholesky,
    dead_inputs,
    obs_prune,
    refit,
)
from robprune.prune.layerwise.sparsegpt import sparsegpt_prune
from robprune.prune.layerwise.streaming import (
    Group,
    calibration_batches,
    capture,
    linear_groups,
    reconstruction_report,
    stream_inputs,
    token_rows,
)
from robprune.ui import track



@dataclass(frozen=True)
class Job:
    """What a solver prunes: the model (IN PLACE) and its frozen dense copy, the encoder's Linear groups
    (layers sharing an input, forward order) and the head (pooler, classifier: refit, never pruned),
    calibration ids (N, L) or None, the amount (sparsity or n_m), and the method's own options."""

    model: nn.Module
    dense: nn.Module
    groups: list
    head: list
    ids: torch.Tensor | None
    sparsity: float | None
    n_m: tuple[int, int] | None
    batch_size: int
    device: Any
    progress: bool
    options: dict


@dataclass(frozen=True)
class Solver:
    """How one layer-wise method prunes: ``run(job) -> {layer name: damping λ or None}``; a new method is
    a Solver and a registered function passing it to :func:`prune_language_model` (docs/how-to/add-pruner.md)."""

    run: Callable[[Job], dict]
    needs_calibration: bool = True


def _solve_obs(correct: bool) -> Callable[[Job], dict]:
    def run(job: Job) -> dict:
        return _obs(job.model, job.dense, job.groups, job.head if job.options.get("refit_head", True) else [], job.ids,
                    correct=correct, sparsity=job.sparsity, n_m=job.n_m, rel_damp=job.options.get("rel_damp", 0.01),
                    batch_size=job.batch_size, device=job.device, progress=job.progress)
    return run


def _solve_sparsegpt(job: Job) -> dict:
    blocksize = int(job.options.get("blocksize", 128))
    if job.n_m is not None and blocksize % job.n_m[1]:
        raise ConfigError(f"prune.blocksize={blocksize} must be a multiple of M={job.n_m[1]} (prune.n_m); e.g. prune.blocksize=128")
    return _sparsegpt(job.model, job.groups, job.ids, sparsity=job.sparsity, n_m=job.n_m,
                      rel_damp=job.options.get("rel_damp", 0.01), blocksize=blocksize, batch_size=job.batch_size,
                      device=job.device, progress=job.progress)


# kr_obs: docs/methods/kr.md#step-2. obs_independent: the same OBS with inputs from the dense model (no
# cumulative-error correction; an ablation). sparsegpt, magnitude: the baselines of docs/methods/baselines.md.
SOLVERS = {
    "kr_obs": Solver(_solve_obs(correct=True)),
    "obs_independent": Solver(_solve_obs(correct=False)),
    "sparsegpt": Solver(_solve_sparsegpt),
    "magnitude": Solver(lambda job: _magnitude(job.groups, job.sparsity, job.n_m, job.options.get("scope", "layer")),
                        needs_calibration=False),
}
METHODS = tuple(SOLVERS)

__all__ = ["METHODS", "SOLVERS", "Job", "Solver", "prune_language_model", "reconstruction_report", "write_report"]


def prune_language_model(model: nn.Module, calib_ids: torch.Tensor | None = None, *, method: str,
                         sparsity: float | None = None, n_m: tuple[int, int] | None = None, scope: str = "layer",
                         rel_damp: float = 0.01, blocksize: int = 128, batch_size: int = 32,
                         refit_head: bool = True, heldout_ids: torch.Tensor | None = None, device: torch.device | str = "cpu",
                         progress: bool = False, solver: Solver | None = None, **extra) -> dict:
    """Prune the encoder Linear layers of a TextClassifier IN PLACE (exact zeros in the weights).

    calib_ids: (N, L) int64 calibration sentences, right-padded with model.pad_id (any padding length:
    padding tokens are left out of every statistic by each batch's own attention mask); not needed by
    magnitude. method: one of METHODS. sparsity in [0, 1): per row for the OBS methods, per layer for
    sparsegpt, per layer or global (``scope``) for magnitude; None means 0.5, or 1 − N/M with n_m.
    n_m=(N, M): keep N of every M consecutive input weights of a row. rel_damp: relative damping
    (OBS: raised ×10 until Cholesky succeeds; SparseGPT's percdamp). blocksize: SparseGPT's column block.
    refit_head: the OBS methods also refit the pooler and classifier to the dense outputs (docs/methods/kr.md#step-2);
    False leaves them as in the dense model (an ablation: their refit sees one vector per sentence).
    heldout_ids: sentences for the per-layer reconstruction errors (default calib_ids). The model is
    moved to ``device``; model.training is left as it was. Returns the JSON-able info dict described
    in :func:`_info`.
    """
    started = time.perf_counter()
    solver = solver or SOLVERS.get(method)
    if solver is None:
        raise ConfigError(f"prune.method={method!r} is not a language-model pruning method; use one of {', '.join(METHODS)}")
    sparsity, n_m = _check_options(sparsity, n_m, scope, rel_damp, blocksize, batch_size)
    if not isinstance(refit_head, bool):
        raise ConfigError(f"prune.refit_head must be true or false, got {refit_head!r}; e.g. prune.refit_head=false")
    if calib_ids is None and solver.needs_calibration:
        raise ConfigError(f"prune.method={method} needs calibration sentences; pass calib_ids (N, L) token ids")
    training = model.training
    model.to(device).eval()
    try:
        ids = calib_ids if calib_ids is not None else heldout_ids
        groups, head = linear_groups(model, None if ids is None else ids[:1].to(device))
        if n_m is not None:
            check_n_m_fits(n_m, ((name, module.in_features) for group in groups for name, module in group))
        dense = copy.deepcopy(model).requires_grad_(False)  # frozen reference (knowledge to retain)
        params = sum(p.numel() for p in model.parameters())
        job = Job(model, dense, groups, head, calib_ids, sparsity, n_m, batch_size, device, progress,
                  {"scope": scope, "rel_damp": rel_damp, "blocksize": blocksize, "refit_head": refit_head, **extra})
        with torch.no_grad():
            damping = solver.run(job)
        report_ids = heldout_ids if heldout_ids is not None else calib_ids
        errors = [] if report_ids is None else reconstruction_report(dense, model, report_ids, batch_size, device)
    finally:
        model.train(training)
    return _info(model, method, groups, head, damping, errors, sparsity=sparsity, n_m=n_m, params=params,
                 seconds=time.perf_counter() - started)


def _check_options(sparsity, n_m, scope, rel_damp, blocksize, batch_size):
    """ConfigError (one line, naming the key) for a bad option; returns (sparsity, n_m) resolved."""
    if scope not in ("layer", "global"):
        raise ConfigError(f"prune.scope must be layer or global, got {scope!r}")
    if not rel_damp > 0:
        raise ConfigError(f"prune.rel_damp must be > 0 (relative damping of the Hessian), got {rel_damp}; e.g. prune.rel_damp=0.01")
    if int(blocksize) < 1 or int(batch_size) < 1:
        raise ConfigError(f"prune.blocksize and prune.batch_size must be >= 1, got {blocksize} and {batch_size}")
    if n_m is not None:
        n, m = parse_n_m(n_m)
        if sparsity is not None and abs(float(sparsity) - (1 - n / m)) > 1e-12:
            raise ConfigError(f"prune.sparsity={sparsity} and prune.n_m={n}:{m} are exclusive; "
                              "set prune.sparsity=null to prune N:M")
        return None, (n, m)
    sparsity = 0.5 if sparsity is None else float(sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"prune.sparsity must be in [0, 1), got {sparsity}; e.g. prune.sparsity=0.5")
    return sparsity, None


def _magnitude(groups: list[Group], sparsity, n_m, scope: str) -> dict[str, float | None]:
    """Magnitude masks (Han et al. 2015) over the encoder Linear weights; no data, no damping."""
    layers = {name: m for group in groups for name, m in group}
    masks = weight_magnitude_masks({n: m.weight for n, m in layers.items()}, sparsity=sparsity, n_m=n_m, scope=scope)
    for name, m in layers.items():
        m.weight.mul_(masks[name].to(m.weight.device, m.weight.dtype))
    return {name: None for name in layers}


def _sparsegpt(model, groups: list[Group], ids, *, sparsity, n_m, rel_damp, blocksize, batch_size, device,
               progress) -> dict[str, float]:
    """SparseGPT (Frantar & Alistarh 2023), independent layer-wise: every layer's H from the DENSE
    model's inputs in one pass (H = 2 X Xᵀ / N, one per group of layers sharing an input), then
    Algorithm 1 per layer; no refit. Memory: one d_in² float64 matrix per group."""
    firsts = {group[0][1]: HessianAccumulator(group[0][1].in_features) for group in groups}
    stream_inputs(model, ids, list(firsts), batch_size, lambda module, rows: firsts[module].add(rows), device)
    damping = {}
    for group in track(groups, "sparsegpt", enabled=progress):
        H = firsts[group[0][1]].sparsegpt_hessian()
        lam = rel_damp * float(torch.where(dead_inputs(H), 1.0, H.diagonal()).mean())  # SparseGPT §3.2 damping
        for name, m in group:
            W, _ = sparsegpt_prune(m.weight, H, sparsity=sparsity, n_m=n_m, blocksize=blocksize, percdamp=rel_damp)
            m.weight.copy_(W)
            damping[name] = lam
    return damping


def _obs(model, dense, groups: list[Group], head: list[Group], ids, *, correct: bool, sparsity, n_m, rel_damp,
         batch_size, device, progress) -> dict[str, float]:
    """docs/methods/kr.md#step-2, one group of layers at a time in forward order: 2a H from the inputs X̂ of
    the partially pruned model (correct=False: from the dense model), 2b refit to the dense outputs,
    2c OBS; 2d is the next group's forward pass through the layers pruned so far. The pooler and
    classifier (``head``; empty: left dense) are refit the same way, not pruned."""
    damping = {}
    steps = [(g, True) for g in groups] + [(g, False) for g in head]
    for group, prune in track(steps, "kr_obs" if correct else "obs_independent", enabled=progress):
        acc, bias = _accumulate(model, dense, group, ids, correct, batch_size, device)
        L, lam = damped_cholesky(acc.H, rel_damp)            # 2a: H + λI, λ raised ×10 until Cholesky works
        W_bar = refit(acc.H, acc.C, lam, factor=L)            # 2b: W̄ᵀ = (H + λI)⁻¹ C, bias as the last column
        W_bar[:, dead_inputs(acc.H)] = 0.0
        H_inv = torch.cholesky_inverse(L) if prune else None
        rows = W_bar.split([m.out_features for _, m in group])
        for (name, m), W in zip(group, rows):
            if prune:  # 2c: greedy OBS per row (Hassibi & Stork 1993), the bias column never pruned
                W, _ = obs_prune(W, H_inv, sparsity=sparsity, n_m=n_m, bias_column=bias)
            m.weight.copy_(W[:, :m.in_features])
            if bias:
                m.bias.copy_(W[:, -1])
            damping[name] = lam
    return damping


def _accumulate(model, dense, group: Group, ids, correct: bool, batch_size: int, device):
    """H = Σ x̂ x̂ᵀ and C = Σ x̂ [y_1, ..., y_k]ᵀ (targets of the group's layers side by side) over the
    non-padding tokens of every calibration batch, float64. x̂: the group's input in ``model`` (correct)
    or in ``dense``; y_i: the dense layer's output on dense inputs. With a bias column only when every
    layer of the group has a bias; otherwise biases stay fixed and are subtracted from the targets."""
    names = [name for name, _ in group]
    dense_mods = [dense.get_submodule(name) for name in names]
    first = group[0][1]
    bias = all(m.bias is not None for _, m in group)
    acc = HessianAccumulator(first.in_features, with_bias=bias, target_dim=sum(m.out_features for _, m in group))
    for batch, keep in calibration_batches(model, ids, batch_size, device):
        ins, outs = capture(dense, batch, inputs=[] if correct else dense_mods[:1], outputs=dense_mods)
        x = capture(model, batch, inputs=[first])[0][first] if correct else ins[dense_mods[0]]
        targets = [token_rows(outs[d], keep) - (0 if bias or m.bias is None else m.bias)
                   for d, (_, m) in zip(dense_mods, group)]
        acc.add(token_rows(x, keep), torch.cat(targets, dim=1))
    return acc, bias


def _info(model, method, groups: list[Group], head: list[Group], damping: dict, errors: list[dict], *,
          sparsity, n_m, params: int, seconds: float) -> dict:
    """The result record. sparsity: zero fraction of the ENCODER Linear weights (embeddings, pooler,
    classifier excluded, as the paper counts); sparsity_total: zeros of all Linear weights / all
    parameter elements; prunable_before/after: encoder Linear weight elements / nonzero ones;
    params_before/after: all parameter elements (a mask removes none); layers: per Linear in forward
    order {name, shape, pruned, sparsity, damping λ (null for magnitude), rel_error (null without ids)};
    logit_rel_error: ‖Ŷ − Y‖/‖Y‖ of the logits; peak_rss_mb: the process's peak resident memory."""
    encoder = [m for group in groups for _, m in group]
    total = sum(m.weight.numel() for m in encoder)
    zeros = sum(int((m.weight == 0).sum()) for m in encoder)
    all_zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, nn.Linear))
    rel = {row["name"]: row["rel_error"] for row in errors}
    layers = [{"name": name, "shape": list(m.weight.shape), "pruned": pruned,
               "sparsity": float((m.weight == 0).sum()) / m.weight.numel(),
               "damping": damping.get(name), "rel_error": rel.get(name)}
              for pruned, gs in ((True, groups), (False, head)) for group in gs for name, m in group]
    return {"method": method, "structured": False, "masked": True,
            "sparsity": zeros / total if total else 0.0, "sparsity_total": all_zeros / params if params else 0.0,
            "sparsity_target": sparsity if n_m is None else 1 - n_m[0] / n_m[1],
            "n_m": None if n_m is None else f"{n_m[0]}:{n_m[1]}",
            "prunable_before": total, "prunable_after": total - zeros, "params_before": params, "params_after": params,
            "layers": layers, "logit_rel_error": rel.get("logits"), "seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def write_report(info: dict | list[dict], folder: Path) -> tuple[Path, Path]:
    """``folder/reconstruction.md`` (a summary row per method, then the relative error per layer with
    one column per method) and ``folder/reconstruction.png`` (relative error per layer in forward
    order, one line per method, log scale). info: one result of :func:`prune_language_model` or a list
    of them over the same model. Returns the two paths."""
    from robprune.io import atomic_write, atomic_write_text
    from robprune.report.plot import line_figure

    infos = [info] if isinstance(info, dict) else list(info)
    labels = [f"{i['method']} {i['n_m'] or format(i['sparsity_target'], 'g')}" for i in infos]
    names = [row["name"] for row in infos[0]["layers"]] + ["logits"]
    errors = [{**{r["name"]: r["rel_error"] for r in i["layers"]}, "logits": i.get("logit_rel_error")} for i in infos]
    lines = ["# Layer-wise reconstruction", "",
             ("‖Ŷ − Y‖ / ‖Y‖ of each layer's output, pruned vs dense model, over the tokens of the held-out "
              "sentences (the calibration ones when none were given)."),
             "", "| method | encoder sparsity | logits rel. error | seconds |", "|---|---|---|---|"]
    lines += [f"| {label} | {i['sparsity']:.4f} | {_num(i.get('logit_rel_error'))} | {i['seconds']:.1f} |"
              for label, i in zip(labels, infos)]
    lines += ["", "| layer | shape | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    shapes = {row["name"]: "×".join(map(str, row["shape"])) for row in infos[0]["layers"]}
    lines += [f"| {name} | {shapes.get(name, '')} | " + " | ".join(_num(e.get(name)) for e in errors) + " |" for name in names]
    folder = Path(folder)
    md = atomic_write_text(folder / "reconstruction.md", "\n".join(lines) + "\n")
    series = {label: [(x, e[name], "") for x, name in enumerate(names) if e.get(name) is not None]
              for label, e in zip(labels, errors)}
    if any(series.values()):
        fig = line_figure(series, title="Layer-wise reconstruction error", xlabel="layer (forward order)",
                          ylabel="relative output error")
        ax = fig.axes[0]
        ax.set_xticks(range(len(names)), [_short(n) for n in names], rotation=90, fontsize=6)
        if all(y > 0 for points in series.values() for _, y, _ in points):
            ax.set_yscale("log")
        fig.set_size_inches(max(6.0, 0.22 * len(names) + 2), 4.5)
    else:  # magnitude without sentences: nothing measured
        fig = _empty_figure()
    png = atomic_write(folder / "reconstruction.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return md, png


def _empty_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    fig.add_subplot().set_title("no reconstruction error measured (no sentences given)")
    return fig


def _short(name: str) -> str:
    """'hf.bert.encoder.layer.0.attention.self.query' -> '0.attention.self.query'."""
    for marker in ("layer.", "transformer.", "encoder."):
        if marker in name:
            return name.split(marker, 1)[1]
    return name.removeprefix("hf.")


def _num(value) -> str:
    return "–" if value is None else f"{value:.4g}"
