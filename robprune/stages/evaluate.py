"""Clean and robust accuracy of the final model on the test split, with the sanity checks
(``eval.latency`` is measured per run, outside the cache, so it is not part of the key)."""
from __future__ import annotations

from robprune.checkpoint import load_checkpoint
from robprune.graph import MODEL, Stage, StageContext
from robprune.io import atomic_write_json
from robprune.stages.common import seed_stage

EVAL_FILE = "eval.json"


def build(ctx: StageContext) -> None:
    from robprune.evaluate import evaluate_robustness

    seed_stage(ctx.cfg.seed, ctx)
    model, _ = load_checkpoint(ctx.input(MODEL).path)
    model.to(ctx.device).eval()
    metrics = evaluate_robustness(model, ctx.data.test_x, ctx.data.test_y, ctx.cfg.eval, device=ctx.device,
                                  seed=ctx.cfg.seed, progress=ctx.progress, work=ctx.work)
    atomic_write_json(ctx.work / EVAL_FILE, metrics)


STAGE = Stage("eval", reads=("eval", "seed"), ignores=("eval.latency",), inputs=(MODEL,), data=("test",),
              build=build, produces_model=False)
