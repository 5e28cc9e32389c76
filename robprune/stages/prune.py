"""The cut: the prune method of ``conf/prune`` applied to the dense model (with the scores stage's
output when the method has one)."""
from __future__ import annotations

from robprune.checkpoint import load_checkpoint, save_checkpoint
from robprune.graph import Stage, StageContext, seed_from
from robprune.prune import PruneContext, prune_model
from robprune.prune.scores import log_layer_table
from robprune.stages.common import example_inputs, seed_stage


def build(ctx: StageContext) -> None:
    seed_stage(ctx.cfg.seed, ctx)
    model, meta = load_checkpoint(ctx.input("train").path)
    scores = ctx.inputs.get("scores")
    context = PruneContext.from_stage(example_inputs(ctx.data), scores_dir=scores.path if scores else None,
                                      device=ctx.device, seed=seed_from(ctx.cfg.seed, ctx.seed_key))
    info = prune_model(model, ctx.cfg.prune, context)
    log_layer_table(info)
    save_checkpoint(model, ctx.work, arch=meta["arch"], history=info.get("history", []),
                    extra={"prune": {k: v for k, v in info.items() if k != "history"}})


STAGE = Stage("prune", reads=("prune", "seed"), inputs=("train", "scores?"), data=("meta",), build=build,
              when=lambda cfg: cfg.prune.get("during_training") is None)  # else prune_train prunes while training
