"""The cut: the prune method of ``conf/prune`` applied to the model before it (the dense model, or a
weight average), with the scores stage's output (MRPF) or the calibration sentences (layer-wise
language-model pruners) when the method has them."""
from __future__ import annotations

from robprune.checkpoint import load_checkpoint, save_checkpoint
from robprune.graph import MODEL, Precheck, Stage, StageContext, seed_from
from robprune.prune import PruneContext, prune_model
from robprune.prune.channel.scores import log_layer_table
from robprune.stages.common import example_inputs, seed_stage


def build(ctx: StageContext) -> None:
    seed_stage(ctx.cfg.seed, ctx)
    model, meta = load_checkpoint(ctx.input(MODEL).path)
    scores, calib = ctx.inputs.get("scores"), ctx.inputs.get("calib")
    context = PruneContext.from_stage(example_inputs(ctx.data), scores_dir=scores.path if scores else None,
                                      calib_dir=calib.path if calib else None, device=ctx.device,
                                      seed=seed_from(ctx.cfg.seed, ctx.seed_key), progress=ctx.progress)
    info = prune_model(model, ctx.cfg.prune, context)
    log_layer_table(info)
    save_checkpoint(model, ctx.work, arch=meta["arch"], history=info.get("history", []),
                    extra={"prune": {k: v for k, v in info.items() if k not in ("history", "report")}})
    if info.get("report"):  # layer-wise pruners: per-layer reconstruction error against the dense model
        from robprune.prune.layerwise.language import write_report

        write_report(info, ctx.work)


def precheck(pc: Precheck) -> None:
    """prune.sparsity reachable on this model, a timm model's cut, N:M widths (robprune.validate_prune)."""
    from robprune.validate_prune import check_before_stages

    check_before_stages(pc.cfg, pc.dense, pc.example_inputs)


STAGE = Stage("prune", reads=("prune", "seed"), inputs=(MODEL, "scores?", "calib?"), data=("meta",), build=build,
              publishes=("reconstruction.md", "reconstruction.png"),  # layer-wise pruners' per-layer errors
              when=lambda cfg: cfg.prune.get("during_training") is None,  # else prune_train prunes while training
              precheck=precheck)
