"""One entry point for evaluating a model on its data, whatever the modality: the eval stage and
``robprune eval`` both call :func:`evaluate_model`, which picks the evaluator of the data bundle's
modality (images: attacks + corruptions; text: text attacks).

An image evaluation can be shared out over data-parallel ranks: :func:`evaluate_rank` is one rank's
task (its blocks of :mod:`robprune.evaluate.blocks`, gathered on rank 0), which the eval stage hands
to robprune.train.trainer's ranks. Text evaluation runs in one process."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

# (task, payload) -> rank 0's result: runs task(rank, world, payload, trainer, device) on every rank
OnRanks = Callable[[Callable, dict], Any]


def evaluate_model(model, data, eval_cfg, *, seed: int, test_split: str, device, progress: bool = False,
                   work: Path | None = None, out: Path | None = None, on_ranks: OnRanks | None = None) -> dict:
    """Metrics of ``model`` (on ``device``, eval mode) on ``data``'s test split under ``eval_cfg``.

    work: a folder kept across a kill (attack progress for resume); None = nothing kept. out: where
    per-run files go (corruptions.png, adversarial.jsonl); defaults to ``work``. on_ranks: share an
    image evaluation's blocks over data-parallel ranks through it (None: every block here); the numbers
    are the same either way."""
    out = out if out is not None else work
    return EVALUATORS[data.modality](model, data, eval_cfg, seed=int(seed), test_split=str(test_split),
                                     device=device, progress=progress, work=work, out=out, on_ranks=on_ranks)


def _images(model, data, eval_cfg, *, seed, test_split, device, progress, work, out, on_ranks) -> dict:
    payload = {"model": model, "x": data.test_x, "y": data.test_y, "num_classes": int(data.num_classes),
               "eval_cfg": eval_cfg, "seed": seed, "test_split": test_split, "progress": progress, "work": work}
    if on_ranks is None:
        metrics = evaluate_rank(0, 1, payload, None, torch.device(device))
    else:
        model.to("cpu")  # sent to the ranks, each moves its copy to its device
        metrics = on_ranks(evaluate_rank, payload)
        model.to(device)
    if eval_cfg.get("corruptions") is not None and out is not None:
        from robprune.evaluate.corruption import PLOT_FILE
        from robprune.report.corruptions import corruption_heatmap

        corruption_heatmap(metrics, Path(out) / PLOT_FILE)
    if eval_cfg.get("sets"):  # shifted test sets: clean accuracy, in this process
        from robprune.evaluate.shift import evaluate_sets

        metrics.update(evaluate_sets(model, eval_cfg, num_classes=int(data.num_classes), device=device,
                                     batch_size=int(eval_cfg.get("batch_size", 256))))
    return metrics


def evaluate_rank(rank: int, world: int, payload: dict, trainer, device: torch.device) -> dict | None:
    """One rank of an image evaluation (robprune.train.trainer's task signature; trainer is unused:
    evaluation stays fp32 and eager): the blocks k with k % world == rank of the adversarial and the
    corruption evaluation; rank 0 gathers every rank's blocks and returns the metrics, the others None.
    Only rank 0 keeps progress in ``payload["work"]``; world 1 needs no process group."""
    from robprune.evaluate.adversarial import robustness_blocks, robustness_metrics
    from robprune.evaluate.blocks import block_size, gather

    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's gather below uses the current device: this rank's own
    model, eval_cfg, seed = payload["model"].to(device), payload["eval_cfg"], int(payload["seed"])
    x, y, work = payload["x"], payload["y"], payload["work"] if rank == 0 else None
    progress = bool(payload["progress"]) and rank == 0
    adversarial = robustness_blocks(model, x, y, eval_cfg, device=device, seed=seed, rank=rank, world=world,
                                    progress=progress, work=work)
    node, corruptions = eval_cfg.get("corruptions"), None
    if node is not None:
        from robprune.evaluate.corruption import corruption_blocks

        corruptions = corruption_blocks(model, x, y, node, device=device, seed=seed, test_split=payload["test_split"],
                                        batch_size=int(eval_cfg.get("batch_size", 256)), block_size=block_size(eval_cfg),
                                        num_classes=payload["num_classes"], rank=rank, world=world, progress=progress,
                                        work=work)
    parts = gather((adversarial, corruptions), rank, world)
    if parts is None:
        return None
    metrics = robustness_metrics(eval_cfg, [block for blocks, _ in parts for block in blocks])
    if node is not None:
        from robprune.evaluate.corruption import corruption_metrics_of

        metrics.update(corruption_metrics_of(node, [part for _, part in parts]))
    return metrics


def _text(model, data, eval_cfg, *, seed, test_split, device, progress, work, out, on_ranks) -> dict:
    """Text attacks, in this process whatever ``on_ranks`` says (they are not sharded)."""
    from robprune.evaluate.text import evaluate_text_robustness

    max_length = int(eval_cfg.get("max_length") or data.max_length)
    return evaluate_text_robustness(model, data.test_text, data.test_y, data.tokenizer, eval_cfg,
                                    max_length=max_length, device=device, seed=seed, progress=progress,
                                    work=work if work is not None else out)


EVALUATORS = {"image": _images, "text": _text}  # data modality -> evaluator
