"""The scores stage's work: compute a pruning method's per-layer scores once per dense model and
write them as data (``scores.json``), a table (``scores.md``), a bar chart (``mrs.png``) and the
calibration adversarial set (``calib.safetensors``, used by Taylor importance).

scores.json = {"kind", "baseline_loss", "n_images", "seed", ..., "layers": [{name, type, params,
weight_norm, mrs, losses}], "groups": [{root, members, mrs}]}; layer order = module order. Groups are
the architecture's coupled groups (no exclusions applied: the prune config decides those).
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from robprune.config import instantiate
from robprune.io import atomic_save_tensors, atomic_write_json, atomic_write_text
from robprune.prune.context import CALIB_FILE, SCORES_FILE
from robprune.prune.sensitivity import Sensitivity, group_scores, prunable_layers
from robprune.prune.structured import build_groups

PLOT_FILE, TABLE_FILE = "mrs.png", "scores.md"
PUBLISHED_FILES = (SCORES_FILE, TABLE_FILE, PLOT_FILE)  # what a run directory gets (when present)


def compute_scores(model: nn.Module, scores_cfg: DictConfig, x: torch.Tensor, y: torch.Tensor, *,
                   device: torch.device, example_inputs: torch.Tensor, out_dir: Path) -> dict:
    """Instantiate ``prune.scores`` (a partial of :func:`~robprune.prune.sensitivity.mrs_scores` or
    :func:`~robprune.prune.sensitivity.calibration_set`), run it on the dense ``model`` with the
    training split (x: (N, C, H, W) uint8, y: (N,)), and write the files above into ``out_dir``.
    Returns the scores.json dict."""
    compute = instantiate(scores_cfg, "prune.scores")
    result: Sensitivity = compute(model, x, y, device=device)
    record = scores_record(model.cpu(), result, example_inputs)
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / SCORES_FILE, record)
    atomic_save_tensors(out_dir / CALIB_FILE, {"x_adv": result.x_adv.detach().cpu().contiguous(),
                                               "y": result.y.detach().cpu().contiguous()})
    if record["layers"]:
        atomic_write_text(out_dir / TABLE_FILE, markdown_table(record))
        from robprune.report.plot import bar_chart

        bar_chart({row["name"]: row["mrs"] for row in record["layers"]}, out_dir / PLOT_FILE,
                  title="MRS per layer", ylabel="Δ adversarial loss")
    return record


def scores_record(model: nn.Module, result: Sensitivity, example_inputs: torch.Tensor) -> dict:
    """The JSON form of ``result`` with per-layer rows and per-coupled-group means (model on the CPU)."""
    types = {name: type(m).__name__ for name, m in prunable_layers(model).items()}
    layers = [{"name": name, "type": types[name], **row} for name, row in result.layers.items()]
    groups = []
    if layers:
        was_training = model.training
        _, found = build_groups(model, example_inputs, exclude_stem=False, exclude_linear=False)
        model.train(was_training)
        groups = [{"root": g.root, "members": list(g.members)} for g in found]
        means = group_scores({row["name"]: row["mrs"] for row in layers}, groups)
        for g in groups:
            g["mrs"] = means[g["root"]]
    kind = "mrs" if layers else "calibration"
    return {"kind": kind, "baseline_loss": result.baseline_loss, **result.info, "layers": layers, "groups": groups}


def markdown_table(record: dict) -> str:
    """Per-layer MRS as a markdown table (also what the run log shows)."""
    lines = ["| layer | type | params | MRS |", "|---|---|---:|---:|"]
    lines += [f"| {r['name']} | {r['type']} | {r['params']:,} | {r['mrs']:.6g} |" for r in record["layers"]]
    return "\n".join(lines) + "\n"


def log_layer_table(info: dict) -> None:
    """Per-layer channels, allocated ratio and (when present) MRS into the run log, as a table."""
    import logging

    rows = info.get("layers") or []
    if not rows or not info.get("structured"):
        return
    lines = [f"{'layer':<28} {'channels':>12} {'ratio':>7} {'MRS':>12}"]
    for r in rows:
        mrs = r.get("mrs")
        lines.append(f"{r['name']:<28} {r['channels_before']:>5} → {r['channels_after']:<4} {r.get('ratio', 0.0):>7.3f} "
                     f"{'' if mrs is None else format(mrs, '.4g'):>12}")
    logging.getLogger("robprune").info("pruning %s: sparsity %.4f\n%s", info.get("method"), info.get("sparsity", 0.0), "\n".join(lines))
