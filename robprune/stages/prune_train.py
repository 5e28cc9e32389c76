"""Pruning during training (``prune=adasap``, ``prune=hydra``): the dense model trained further with the
prune node's ``during_training`` recipe while channels are masked step by step, then cut physically
(adasap), or its frozen weights' scores trained under the robust objective, then the mask fixed (hydra).
Runs instead of the one-shot prune stage when the prune node has a ``during_training`` node."""
from __future__ import annotations

from robprune.checkpoint import load_checkpoint, save_checkpoint
from robprune.graph import Precheck, Stage, StageContext, seed_from
from robprune.prune import PruneContext, prune_model
from robprune.prune.channel.scores import log_layer_table
from robprune.stages.common import example_inputs, seed_stage, train_model


def during_training(cfg) -> bool:
    return cfg.prune.get("during_training") is not None


def build(ctx: StageContext) -> None:
    generator = seed_stage(ctx.cfg.seed, ctx)
    model, meta = load_checkpoint(ctx.input("train").path)
    model.to(ctx.device)

    def train(model, node, hooks):
        return train_model(model, node, "prune.during_training", ctx, generator, hooks=hooks)

    context = PruneContext(example_inputs(ctx.data).to(ctx.device), device=ctx.device,
                           seed=seed_from(ctx.cfg.seed, ctx.seed_key), train=train)
    info = prune_model(model, ctx.cfg.prune, context)
    log_layer_table(info)
    log = info.pop("train_log", [])
    save_checkpoint(model.cpu(), ctx.work, arch=meta["arch"], history=info.get("history", []),
                    extra={"prune": {k: v for k, v in info.items() if k != "history"}, "prune_train_log": log})


def precheck(pc: Precheck) -> None:
    """The target reachable on this model, and the pruning schedule inside the training it runs in."""
    from robprune.prune.channel.gradual import check_schedule
    from robprune.prune.channel.hydra import check_single_process
    from robprune.validate_prune import check_before_stages

    check_single_process(pc.cfg)
    check_before_stages(pc.cfg, pc.dense, pc.example_inputs)
    check_schedule(pc.cfg.prune, len(pc.data.train_y), int(pc.cfg.data.batch_size))


STAGE = Stage("prune_train", reads=("prune", "seed", "data.batch_size", "dataset.augment", "trainer"), inputs=("train",),
              data=("train",), build=build, when=during_training, precheck=precheck)
