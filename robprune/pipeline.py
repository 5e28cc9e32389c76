"""``run(cfg)``: the recipe. Build the data, walk the stage graph the config asks for, write results.

The stages are declared in :mod:`robprune.stages` (what each reads, consumes and builds); their cache
keys and the slices their builders see are derived from those declarations by :mod:`robprune.graph`,
and :class:`robprune.store.StageCache` builds each key once. ``run`` knows no method: a method adds a
stage module, not a branch here.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

import robprune
from robprune.attacks.compat import attack_compat
from robprune.checkpoint import load_checkpoint
from robprune.data import DataBundle, build_data
from robprune.graph import (MODEL, ConfigView, DataView, Planned, Precheck, StageContext, config_slice,
                            data_fingerprint, keyed_by_content, plan, provenance, stage_keys)
from robprune.io import atomic_write_text
from robprune.measure import checkpoint_size_bytes, dense_model, measure
from robprune.results import write_metrics
from robprune.stages import STAGES
from robprune.stages.common import architecture, example_inputs
from robprune.stages.evaluate import EVAL_FILE
from robprune.store import StageCache, StageResult, publish_files
from robprune.tracking import live_curves, report_to_mlflow, write_curves
from robprune.train.trainer import resolve as resolve_trainer
from robprune.validate import validate

log = logging.getLogger("robprune")
CHECKPOINT_FILES = ["model.safetensors", "model.json"]


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda when available, else cpu. Called once per run; the result is passed down."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def walk(planned: list[Planned], cfg: DictConfig, data: DataBundle, cache: StageCache, device: torch.device,
         *, progress: bool = False, on_epoch=None) -> dict[str, StageResult]:
    """Build or reuse every planned stage in order; returns name -> result (insertion = graph order)."""
    results: dict[str, StageResult] = {}
    semantic: dict[str, str] = {}
    prints: dict[str, str] = {}
    env = provenance(device)
    for p in planned:
        stage = p.stage
        input_keys = {role: (results[up].key, semantic[up]) for role, up in p.inputs.items()}
        key, seed_key, sliced, view, keyed = keys_of(p, cfg, data, input_keys, prints, device)
        inputs = {role: results[up] for role, up in p.inputs.items()}
        meta = {"name": stage.name, "key": key, "inputs": {role: results[up].key for role, up in p.inputs.items()},
                "input_stages": dict(p.inputs), "data": {part: prints[part] for part in stage.data},
                "config": OmegaConf.to_container(keyed),
                "device": device.type, "provenance": env}

        def build(work: Path, stage=stage, view=view, inputs=inputs, key=key, seed_key=seed_key) -> None:
            stage.build(StageContext(stage.name, view, inputs, DataView(data, stage.name, stage.data), Path(work),
                                     key, seed_key, device, progress, on_epoch))

        results[stage.name] = cache.get(stage.name, key, build, meta=meta)
        semantic[stage.name] = seed_key
        r = results[stage.name]
        log.info("stage %-8s %s %s", r.name, r.key, "reused from cache" if r.reused else f"built in {r.seconds:.1f} s")
    return results


def keys_of(p: Planned, cfg: DictConfig, data: DataBundle, input_keys: dict[str, tuple[str, str]],
            prints: dict[str, str], device: torch.device):
    """(cache key, semantic key, config slice, its view, the slice the key is computed from) of a placed
    stage, given its inputs' (key, semantic key); ``prints`` collects the data fingerprints (computed once
    per part). The one place a key is derived: :func:`walk` builds under it, :func:`plan_run` looks it up."""
    stage = p.stage
    for part in stage.data:
        if part not in prints:
            prints[part] = data_fingerprint(data, part)
    sliced = config_slice(cfg, stage.reads, stage.ignores)
    readable = (*stage.reads, *stage.unkeyed)  # the builder also sees the unkeyed paths; the key does not
    view = ConfigView(config_slice(cfg, readable, stage.ignores), stage.name, readable, stage.ignores)
    externals = stage.externals(view) if stage.externals else None
    keyed = keyed_by_content(sliced, stage.content(view)) if stage.content else sliced
    key, seed_key = stage_keys(stage, keyed, input_keys, prints, device.type, externals)
    return key, seed_key, sliced, view, keyed


def precheck(planned: list[Planned], pc: Precheck) -> None:
    """Every planned stage's precheck, in graph order, before the first stage builds (a missing file or an
    unreachable target is one line now, not after an hour of training)."""
    for p in planned:
        if p.stage.precheck is not None:
            p.stage.precheck(pc)


def prepare(cfg: DictConfig) -> tuple[torch.device, object, DataBundle, list[Planned]]:
    """Everything before the first stage: validation, threads, device and trainer, the data, the dense
    model's checks and every planned stage's precheck. Returns (device, trainer, data, planned stages)."""
    validate(cfg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    trainer = resolve_trainer(cfg.get("trainer"), device)  # trainer.devices against this machine, GPU-only options
    data = build_data(cfg.dataset, cache_dir=cfg.data.cache_dir, loading=cfg.data)
    for note in data.audit.warnings:  # faults the run accepts (robprune.data.faults), also in metrics.json
        log.warning(note)
    dense = dense_model(architecture(cfg.model, data))
    data.check_model(dense)  # e.g. an image model on a text dataset
    planned = plan(STAGES, cfg)
    precheck(planned, Precheck(cfg, data, dense, example_inputs(data)))
    return device, trainer, data, planned


def plan_run(cfg: DictConfig, run_dir: Path | None = None) -> list[dict]:
    """What :func:`run` would do, without building anything: for every planned stage (graph order) its
    name, cache key, inputs (role -> upstream stage) and state in the cache (:meth:`StageCache.state`:
    cached, resume, damaged, build). Validates and prechecks as ``run`` does; writes no run directory
    and no cache entry (``robprune plan``, ``robprune run --dry-run``)."""
    device, _, data, planned = prepare(cfg)
    cache = StageCache(Path(cfg.cache_dir), enabled=bool(cfg.cache), scratch=Path(run_dir or ".") / "stages")
    keys: dict[str, tuple[str, str]] = {}
    prints: dict[str, str] = {}
    rows = []
    for p in planned:
        input_keys = {role: keys[up] for role, up in p.inputs.items()}
        key, seed_key = keys_of(p, cfg, data, input_keys, prints, device)[:2]
        keys[p.stage.name] = (key, seed_key)
        state = cache.state(p.stage.name, key) if cfg.cache else "build"
        rows.append({"stage": p.stage.name, "key": key, "inputs": dict(p.inputs), "state": state,
                     "reads": list(p.stage.reads)})
    return rows


def run(cfg: DictConfig, run_dir: Path, *, choices: dict | None = None, warnings: list[str] = ()) -> dict:
    """Run the whole pipeline for one config; writes config.yaml, metrics.json and the checkpoint to run_dir.
    ``warnings``: one-line notes about the config (robprune.compose.fit_experiment), kept in metrics.json."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    device, trainer, data, planned = prepare(cfg)
    log.info("run dir %s, device %s", run_dir, device)
    for note in trainer.notes:
        log.warning(note)
    cache = StageCache(Path(cfg.cache_dir), enabled=bool(cfg.cache), scratch=run_dir / "stages")
    live = live_curves(cfg.get("logger"), run_dir)  # tensorboard/<stage>/ and the MLflow run, while stages train
    with live or nullcontext():  # a job that raises ends its MLflow run as FAILED
        results = walk(planned, cfg, data, cache, device, progress=not cfg.quiet, on_epoch=live)
        if live is not None:
            live.close()  # the event files, before write_curves replaces their folder
        final = results[next(p.inputs[MODEL] for p in planned if p.stage.name == "eval")]

        metrics = assemble_metrics(cfg, data, results, final, choices, device)
        metrics["warnings"] = [*warnings, *metrics.get("warnings", [])]
        metrics["trainer"] = trainer.record()
        metrics["seconds"] = round(time.perf_counter() - started, 2)
        # Results are written only now, each file atomically (copies, never links into the cache): a run
        # that fails earlier leaves an earlier finished result in the same directory untouched.
        publish_files(final.path, run_dir, CHECKPOINT_FILES)
        for p in planned:  # each stage's reports (scores.json, reconstruction.md, average.json, corruptions.png, ...)
            out = results[p.stage.name].path
            publish_files(out, run_dir, [f for f in p.stage.publishes if (out / f).exists()])
        metrics["size_bytes"] = checkpoint_size_bytes(run_dir)
        curves = write_curves(cfg.get("logger"), results, run_dir)  # tensorboard/<stage>/
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_metrics(run_dir, metrics)  # last: with the digests of itself and config.yaml
        # after the results are safe on disk; into the run the live curves went to (rows not logged yet only)
        report_to_mlflow(cfg.get("logger"), curves, run_dir, cfg, metrics, live.mlflow if live else None)
    return metrics


def stage_record(result: StageResult) -> dict:
    """metrics.json → stages.<name>: key, inputs (role -> upstream key), reused, seconds, the device that built it."""
    meta = getattr(result, "meta", None) or {}
    record = result.record()
    record.setdefault("inputs", meta.get("inputs", {}))
    record.setdefault("device", meta.get("device"))
    return record


def assemble_metrics(cfg, data, results: dict[str, StageResult], final: StageResult, choices, device) -> dict:
    """metrics.json content: the eval stage's numbers plus size, cost and provenance of the final model."""
    model, meta = load_checkpoint(final.path)
    pruned = results.get("prune")
    prune_info = meta.get("prune") or (json.loads((pruned.path / "model.json").read_text()).get("prune", {})
                                       if pruned else {})
    metrics = json.loads((results["eval"].path / EVAL_FILE).read_text())
    metrics.update(measure(model, meta, data, cfg, device))
    metrics.update({
        "sparsity": float(prune_info.get("sparsity", 0.0)),
        "structured": bool(prune_info.get("structured", True)),
        "channel_ratio": prune_info.get("channel_ratio"),
        "prune_layers": prune_info.get("layers", []),
        "choices": dict(choices or {}), "seed": int(cfg.seed), "train_seed": int(cfg.train_seed), "device": str(device),
        "dataset": {"name": cfg.dataset.name, "n_train": len(data.train_y), "n_test": len(data.test_y)},
        "stages": {name: stage_record(r) for name, r in results.items()},
        "provenance": provenance(device),
        "version": robprune.__version__, "attack_compat": attack_compat(cfg),
    })
    trained = results.get("train")
    if trained is not None:  # where the dense model's weights came from (model.init), e.g. a zoo model's published accuracies
        metrics["start"] = json.loads((trained.path / "model.json").read_text()).get("start")
    add_int8_check(metrics)
    add_sparsity_check(metrics, model, prune_info)
    add_overfitting_checks(metrics, results)
    add_data_checks(metrics, data)
    return metrics


def add_data_checks(metrics: dict, data) -> None:
    """The data's faults: its warnings appended to metrics.json ``warnings`` (created when absent), and the checks
    of test examples identical to training ones and of classes never trained on (robprune.evaluate.checks.data_checks)."""
    from robprune.evaluate.checks import data_checks

    audit = data.audit
    metrics.setdefault("warnings", []).extend(audit.warnings)
    values, failed = data_checks(audit.overlap, audit.unseen, audit.n_test)
    checks = metrics.setdefault("checks", {})
    checks.update(values)
    checks.setdefault("failed", []).extend(failed)
    checks["passed"] = not checks.get("failed")


TRAINING_LOGS = {"train": "train_log", "prune_train": "prune_train_log", "finetune": "finetune_log"}  # stage -> model.json key


def add_overfitting_checks(metrics: dict, results: dict[str, StageResult]) -> None:
    """Catastrophic overfitting of a monitored recipe (train=fast_at) in any training stage fails the run's checks
    (robprune.evaluate.checks.overfitting_check)."""
    from robprune.evaluate.checks import overfitting_check

    for stage, key in TRAINING_LOGS.items():
        if stage not in results or not (results[stage].path / "model.json").exists():
            continue
        rows = json.loads((results[stage].path / "model.json").read_text()).get(key) or []
        values, failed = overfitting_check(stage, rows)
        if not values:
            continue
        checks = metrics.setdefault("checks", {})
        checks.update(values)
        checks.setdefault("failed", []).extend(failed)
        checks["passed"] = not checks.get("failed")


def add_sparsity_check(metrics: dict, model, prune_info: dict) -> None:
    """Layer-wise language-model pruning: the sparsity reported is the one measured on the saved (and
    possibly fine-tuned) checkpoint; it must equal what the pruner reported (masks kept zero)."""
    from robprune.prune.layerwise.methods import measured_sparsity

    if prune_info.get("sparsity_total") is None:
        return
    measured, checks = measured_sparsity(model), metrics.setdefault("checks", {})
    metrics.update(measured)
    ok = abs(measured["sparsity"] - float(prune_info["sparsity"])) <= 1e-9
    checks["sparsity_matches_pruner"] = ok
    if not ok:
        checks.setdefault("failed", []).append(
            f"sparsity_matches_pruner: the checkpoint's encoder sparsity {measured['sparsity']:.6f} differs from the "
            f"pruner's {float(prune_info['sparsity']):.6f} (masked weights revived?)")
    checks["passed"] = not checks.get("failed")


def add_int8_check(metrics: dict) -> None:
    """A quantised model's INT8 conversion must predict like the fake-quantised model it times
    (``int8_check`` from :func:`robprune.measure.measure`); a mismatch fails the run's checks."""
    record, checks = metrics.get("int8_check"), metrics.setdefault("checks", {})
    if not record:
        return
    checks["int8_matches_fake"] = bool(record["ok"])
    if not record["ok"]:
        tol = record.get("tolerance", {})
        checks.setdefault("failed", []).append(
            f"int8_matches_fake: INT8 accuracy {record['acc_int8']:.4f} vs fake-quant {record['acc_fake']:.4f}, "
            f"agreement {record['agreement']:.4f} (allowed: ±{tol.get('acc')}, ≥ {tol.get('agreement')})")
    checks["passed"] = not checks.get("failed")
