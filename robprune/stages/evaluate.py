"""Clean and robust accuracy of the final model on the test split, with the sanity checks: for images
under the image attacks and, when ``eval.corruptions`` is set, corruption accuracy and its plot; for
text under the text attacks, with every attacked sentence in ``adversarial.jsonl`` (``eval.latency`` is measured per run,
outside the cache, so it is not part of the key). ``dataset.test_split`` is read to map released
corruption files (CIFAR-10-C) onto the run's test points; those files' (path, size, mtime) enter the key.

With ``trainer.devices`` > 1 (or under torchrun) an image evaluation's seeded blocks are shared out over
the data-parallel ranks (robprune.evaluate.blocks) and gathered here, where eval.json is written; the
numbers equal one process's for any number of ranks, so ``trainer.devices`` is read but not keyed.
Text evaluation runs in this process."""
from __future__ import annotations

import functools

from robprune.checkpoint import load_checkpoint
from robprune.graph import LIBRARIES, MODEL, TEXT_ATTACK_LIBRARIES, ConfigView, Precheck, Stage, StageContext
from robprune.io import atomic_write_json
from robprune.stages.common import seed_stage

EVAL_FILE = "eval.json"
EVAL_PLOTS = ("corruptions.png", "adversarial.jsonl")  # published into the run directory when present


def build(ctx: StageContext) -> None:
    from robprune.evaluate.model import evaluate_model

    seed_stage(ctx.cfg.seed, ctx)
    model, _ = load_checkpoint(ctx.input(MODEL).path)
    model.to(ctx.device).eval()
    metrics = evaluate_model(model, ctx.data, ctx.cfg.eval, seed=int(ctx.cfg.seed),
                             test_split=str(ctx.cfg.dataset.test_split), device=ctx.device, progress=ctx.progress,
                             work=ctx.work, on_ranks=_ranks(ctx))
    atomic_write_json(ctx.work / EVAL_FILE, metrics)


def _ranks(ctx: StageContext):
    """How the evaluation's blocks are shared out: None (this process) or the data-parallel ranks of
    ``trainer.devices`` / torchrun (robprune.train.trainer.on_ranks)."""
    from robprune.train.trainer import on_ranks, resolve

    devices = ctx.cfg.trainer.get("devices")
    trainer = resolve(None if devices is None else {"devices": devices}, ctx.device)
    if trainer.devices == 1 or _one_block(ctx):
        return None
    return functools.partial(on_ranks, trainer=trainer, device=ctx.device, what="evaluation")


def _one_block(ctx: StageContext) -> bool:
    """Everything fits in one block (so one rank would do all the work): no processes are started for it.
    Corruption folders have their own subsets, so they always count as more."""
    from robprune.evaluate.blocks import block_size

    node = ctx.cfg.eval.get("corruptions")
    folders = node is not None and str(node.get("source", "generate")) == "folders"
    return ctx.data.modality == "image" and not folders and len(ctx.data.test_y) <= block_size(ctx.cfg.eval)


def externals(view: ConfigView) -> list:
    from robprune.evaluate.corruption import input_stats
    from robprune.evaluate.text import input_stats as text_input_stats

    from robprune.evaluate.shift import fingerprints

    return input_stats(view.eval.get("corruptions")) + text_input_stats(view.eval) + fingerprints(view.eval)


def check_autoattack_classes(node, n_classes: int) -> None:
    """AutoAttack's targeted attacks on fewer than 4 classes: refused before training, not after it."""
    from robprune.attacks.autoattack import autoattack, check_classes
    from robprune.registry import locate

    for name, attack in (node.get("attacks") or {}).items():
        target = attack.get("_target_") if hasattr(attack, "get") else None
        if target and locate(str(target)) is autoattack:
            check_classes(attack.get("version", "standard"), attack.get("attacks"), n_classes, f"eval.attacks.{name}")


def precheck(pc: Precheck) -> None:
    """Corruption files and text attacks' word vectors, encoders and WordNet load before any training."""
    from robprune.evaluate.corruption import check_inputs as check_corruption_inputs
    from robprune.evaluate.text import check_inputs as check_text_attack_inputs

    from robprune.evaluate.shift import check_sets

    check_corruption_inputs(pc.cfg, pc.data)
    check_autoattack_classes(pc.cfg.eval, int(pc.data.num_classes))
    check_text_attack_inputs(pc.cfg.eval)
    check_sets(pc.cfg.eval, int(pc.data.num_classes))


STAGE = Stage("eval", reads=("eval", "seed", "dataset.test_split"), ignores=("eval.latency",), inputs=(MODEL,),
              unkeyed=("trainer.devices",),  # how many ranks share the blocks: the same numbers for any
              data=("test",), build=build, produces_model=False, externals=externals, publishes=EVAL_PLOTS,
              precheck=precheck,
              # Pillow: the JPEG corruption's fallback codec and frost texture reader
              libraries=(*LIBRARIES, "pillow", *TEXT_ATTACK_LIBRARIES))
