"""Fine-tuning of the compressed model with the one loop (masks keep pruned weights at zero).
Runs when ``finetune.epochs`` > 0."""
from __future__ import annotations

from robprune.checkpoint import load_checkpoint
from robprune.graph import MODEL, Stage, StageContext
from robprune.prune.masks import finetune_hooks
from robprune.stages.common import save_derived, seed_stage, train_model


def build(ctx: StageContext) -> None:
    generator = seed_stage(ctx.cfg.seed, ctx)
    model, meta = load_checkpoint(ctx.input(MODEL).path)
    model.to(ctx.device)
    history = train_model(model, ctx.cfg.finetune, "finetune", ctx, generator, hooks=finetune_hooks(model, meta))
    save_derived(model, ctx.work, meta, finetune_log=history)


STAGE = Stage("finetune", reads=("finetune", "seed", "data.batch_size", "dataset.augment", "trainer"), inputs=(MODEL,),
              data=("train",), build=build, when=lambda cfg: int(cfg.finetune.get("epochs") or 0) > 0)
