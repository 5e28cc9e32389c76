"""Fake quantisation of the (pruned) model, calibrated on training images; QAT then trains it with the
one loop. Runs when ``quant.method`` is not none."""
from __future__ import annotations

from robprune.checkpoint import load_checkpoint
from robprune.graph import MODEL, Stage, StageContext
from robprune.prune.masks import finetune_hooks
from robprune.quant import quantize_and_calibrate, spec_from_config
from robprune.stages.common import save_derived, seed_stage, train_model


def build(ctx: StageContext) -> None:
    cfg = ctx.cfg
    generator = seed_stage(cfg.seed, ctx)
    model, meta = load_checkpoint(ctx.input(MODEL).path)
    model.to(ctx.device)
    calibration = quantize_and_calibrate(model, cfg.quant, ctx.data.train_x, seed=cfg.seed, device=ctx.device)
    qat_log = []
    if cfg.quant.method == "qat" and int(cfg.quant.train.epochs) > 0:
        qat_log = train_model(model, cfg.quant.train, "quant.train", ctx, generator, hooks=finetune_hooks(model, meta))
    save_derived(model, ctx.work, meta, quant_calibration=calibration, qat_log=qat_log)


STAGE = Stage("quant", reads=("quant", "seed", "data.batch_size", "dataset.augment", "trainer"), inputs=(MODEL,),
              data=("train",), build=build, when=lambda cfg: spec_from_config(cfg.get("quant")) is not None)
