"""The scores stage's work: compute a pruning method's per-layer scores once per dense model and
write them as data (``scores.json``), a table (``scores.md``), a bar chart (``mrs.png``), the damage
check's scatter plot (``damage.png``) and the calibration adversarial set (``calib.safetensors``, used
by Taylor importance).

scores.json = {"kind", "baseline_loss", "n_images", "seed", "seconds_calibration", "seconds_mrs",
"seconds_damage", ..., "layers": [{name, type, params, weight_norm, mrs, losses}], "groups": [{root,
members, mrs}], "damage": {...} (with ``prune.scores.damage_check: true``, see
:mod:`robprune.prune.channel.damage`)}; layer order = module order. Groups are the architecture's coupled
groups (no exclusions applied: the prune config decides those).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from robprune.config import instantiate
from robprune.io import atomic_save_tensors, atomic_write_json, atomic_write_text
from robprune.prune.channel.sensitivity import Sensitivity, group_scores, prunable_layers
from robprune.prune.channel.structured import build_groups
from robprune.prune.context import CALIB_FILE, SCORES_FILE

PLOT_FILE, TABLE_FILE, DAMAGE_PLOT_FILE = "mrs.png", "scores.md", "damage.png"
PUBLISHED_FILES = (SCORES_FILE, TABLE_FILE, PLOT_FILE, DAMAGE_PLOT_FILE)  # what a run directory gets (when present)


def compute_scores(model: nn.Module, scores_cfg: DictConfig, x: torch.Tensor, y: torch.Tensor, *,
                   device: torch.device, example_inputs: torch.Tensor, out_dir: Path) -> dict:
    """Instantiate ``prune.scores`` (a partial of :func:`~robprune.prune.channel.sensitivity.mrs_scores` or
    :func:`~robprune.prune.channel.sensitivity.calibration_set`), run it on the dense ``model`` with the
    training split (x: (N, C, H, W) uint8, y: (N,)), run the damage check when ``damage_check`` is
    true, and write the files above into ``out_dir``. Returns the scores.json dict."""
    compute = instantiate(scores_cfg, "prune.scores")
    result: Sensitivity = compute(model, x, y, device=device)
    damage = None
    if result.layers and bool(scores_cfg.get("damage_check", False)):
        from robprune.prune.channel.damage import damage_check

        damage = damage_check(compute, model, x, y, main=result, seeds=[int(s) for s in scores_cfg.damage_seeds],
                              device=device, batch_size=int(scores_cfg.get("batch_size", 256)))
    record = scores_record(model.cpu(), result, example_inputs)
    if damage is not None:
        record.update(seconds_damage=damage["seconds"]["total"], damage=damage)
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / SCORES_FILE, record)
    atomic_save_tensors(out_dir / CALIB_FILE, {"x_adv": result.x_adv.detach().cpu().contiguous(),
                                               "y": result.y.detach().cpu().contiguous()})
    if record["layers"]:
        write_report(record, out_dir)
    log_seconds(record)
    return record


def write_report(record: dict, out_dir: Path) -> None:
    """scores.md, mrs.png and (with a damage block) damage.png into ``out_dir``."""
    from robprune.report.plot import bar_chart, scatter_plot

    table = markdown_table(record)
    if "damage" in record:
        from robprune.prune.channel.damage import markdown_section

        block = record["damage"]
        rho = block["spearman"]["mrs"]
        table += markdown_section(block)
        scatter_plot({r["name"]: (r["mrs"], r["damage"]) for r in block["layers"]}, out_dir / DAMAGE_PLOT_FILE,
                     title=f"MRS vs damage of pruning the layer alone (Spearman ρ {'n/a' if rho is None else f'{rho:+.2f}'})",
                     xlabel="MRS (Δ adversarial loss)", ylabel=f"damage (Δ adversarial loss, {block['ratio']:.0%} channels cut)")
    atomic_write_text(out_dir / TABLE_FILE, table)
    bar_chart({row["name"]: row["mrs"] for row in record["layers"]}, out_dir / PLOT_FILE,
              title="MRS per layer", ylabel="Δ adversarial loss")


def log_seconds(record: dict) -> None:
    """The scores stage's cost per part (seconds) and the damage check's summary into the run log."""
    log = logging.getLogger("robprune")
    parts = {k.removeprefix("seconds_"): v for k, v in record.items() if k.startswith("seconds_")}
    log.info("scores stage seconds: %s", ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    if "damage" in record:
        from robprune.prune.channel.damage import markdown_section

        log.info("%s", markdown_section(record["damage"]))


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
    rows = info.get("layers") or []
    if not rows or not info.get("structured"):
        return
    lines = [f"{'layer':<28} {'channels':>12} {'ratio':>7} {'MRS':>12}"]
    for r in rows:
        mrs = r.get("mrs")
        lines.append(f"{r['name']:<28} {r['channels_before']:>5} → {r['channels_after']:<4} {r.get('ratio', 0.0):>7.3f} "
                     f"{'' if mrs is None else format(mrs, '.4g'):>12}")
    logging.getLogger("robprune").info("pruning %s: sparsity %.4f\n%s", info.get("method"), info.get("sparsity", 0.0), "\n".join(lines))
