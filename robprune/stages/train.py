"""The dense model: the model config trained with the train recipe on the training split."""
from __future__ import annotations

import shutil

from robprune.checkpoint import save_checkpoint
from robprune.graph import Stage, StageContext
from robprune.measure import dense_model
from robprune.stages.common import architecture, seed_stage, train_model


def build(ctx: StageContext) -> None:
    cfg = ctx.cfg
    arch = architecture(cfg.model, ctx.data)
    generator = seed_stage(cfg.train_seed, ctx)
    model = dense_model(arch).to(ctx.device)
    history = train_model(model, cfg.train, "train", ctx, generator)
    save_checkpoint(model, ctx.work, arch=arch, history=[], extra={"train_log": history})
    shutil.rmtree(ctx.work / "epochs", ignore_errors=True)


STAGE = Stage("train", reads=("model", "train", "train_seed", "data.batch_size", "dataset.augment", "trainer"),
              data=("train",), build=build)
