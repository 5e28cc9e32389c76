"""Per-layer scores (MRPF's MRS) and the calibration adversarial set, once per (dense model,
prune.scores): shared by every sparsity and run seed of a sweep."""
from __future__ import annotations

from robprune.checkpoint import load_checkpoint
from robprune.graph import LIBRARIES, Stage, StageContext
from robprune.prune.channel.scores import PUBLISHED_FILES, compute_scores
from robprune.stages.common import example_inputs, seed_stage


def build(ctx: StageContext) -> None:
    scores_cfg = ctx.cfg.prune.scores
    seed_stage(int(scores_cfg.get("seed", 0)), ctx)
    model, _ = load_checkpoint(ctx.input("train").path)
    compute_scores(model, scores_cfg, ctx.data.train_x, ctx.data.train_y, device=ctx.device,
                   example_inputs=example_inputs(ctx.data), out_dir=ctx.work)


STAGE = Stage("scores", reads=("prune.scores",), inputs=("train",), data=("train",), build=build,
              when=lambda cfg: bool(cfg.prune.get("scores")), produces_model=False, publishes=PUBLISHED_FILES,
              libraries=(*LIBRARIES, "scipy", "matplotlib"))  # Spearman ρ of the damage check; the plots
