"""One entry point for evaluating a model on its data, whatever the modality: the eval stage and
``robprune eval`` both call :func:`evaluate_model`, which picks the evaluator of the data bundle's
modality (images: attacks + corruptions; text: text attacks)."""
from __future__ import annotations

from pathlib import Path


def evaluate_model(model, data, eval_cfg, *, seed: int, test_split: str, device, progress: bool = False,
                   work: Path | None = None, out: Path | None = None) -> dict:
    """Metrics of ``model`` (on ``device``, eval mode) on ``data``'s test split under ``eval_cfg``.

    work: a folder kept across a kill (attack progress for resume); None = nothing kept. out: where
    per-run files go (corruptions.png, adversarial.jsonl); defaults to ``work``."""
    out = out if out is not None else work
    return EVALUATORS[data.modality](model, data, eval_cfg, seed=int(seed), test_split=str(test_split),
                                     device=device, progress=progress, work=work, out=out)


def _images(model, data, eval_cfg, *, seed, test_split, device, progress, work, out) -> dict:
    from robprune.evaluate.adversarial import evaluate_robustness

    metrics = evaluate_robustness(model, data.test_x, data.test_y, eval_cfg, device=device, seed=seed,
                                  progress=progress, work=work)
    node = eval_cfg.get("corruptions")
    if node is not None:
        from robprune.evaluate.corruption import PLOT_FILE, evaluate_corruptions
        from robprune.report.corruptions import corruption_heatmap

        metrics.update(evaluate_corruptions(model, data.test_x, data.test_y, node, device=device, seed=seed,
                                            batch_size=int(eval_cfg.get("batch_size", 256)), test_split=test_split,
                                            num_classes=int(data.num_classes), progress=progress, work=work))
        if out is not None:
            corruption_heatmap(metrics, Path(out) / PLOT_FILE)
    if eval_cfg.get("sets"):
        from robprune.evaluate.shift import evaluate_sets

        metrics.update(evaluate_sets(model, eval_cfg, num_classes=int(data.num_classes), device=device,
                                     batch_size=int(eval_cfg.get("batch_size", 256))))
    return metrics


def _text(model, data, eval_cfg, *, seed, test_split, device, progress, work, out) -> dict:
    from robprune.evaluate.text import evaluate_text_robustness

    max_length = int(eval_cfg.get("max_length") or data.max_length)
    return evaluate_text_robustness(model, data.test_text, data.test_y, data.tokenizer, eval_cfg,
                                    max_length=max_length, device=device, seed=seed, progress=progress,
                                    work=work if work is not None else out)


EVALUATORS = {"image": _images, "text": _text}  # data modality -> evaluator
