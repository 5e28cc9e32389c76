"""Corruption robustness (Hendrycks & Dietterich 2019): accuracy on corrupted test images per
corruption and severity, their means and R_C = mean corruption accuracy / clean accuracy (AdaSAP's
robustness ratio, docs/methods/adasap.md#step-4).

Unlike the adversarial evaluation every point is evaluated (not only the clean-correct ones), and
the numbers never enter ``robust_acc/worst``: a corruption is a distribution shift, not a threat model.

Subset: ``eval.corruptions.n_examples`` test points, the first of the same seeded permutation the
attacks use (null: the whole test split); with ``source: folders``, a seeded subset of each severity
folder's images. Blocks (:mod:`robprune.evaluate.blocks`): the subset's points are cut into blocks of
``eval.block_size``, shared out over the data-parallel ranks; each rank counts the correct predictions
of its blocks and the counts are summed, so the numbers do not depend on the number of ranks.
Generated corruptions are drawn in chunks of :data:`CHUNK` points of a block, each seeded from (the
block's seed, corruption, severity, chunk index): block 0's seed is the evaluation seed, so a subset
within one block draws what it drew before blocks existed, and the numbers do not depend on
``eval.batch_size`` or the device. Finished corruptions are kept in the stage's work folder
(``corruptions/<name>.json``, per block), so a killed evaluation resumes where it stopped.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import torch

from robprune.attacks.common import preserved_modes
from robprune.corruptions import batch_seed, corrupt
from robprune.corruptions.files import check_folders, file_stats, folder_digests, folder_subset, open_files, read_folder
from robprune.data.tensors import as_pixels, seeded_indices
from robprune.evaluate.blocks import BLOCK_SIZE, Block, blocks, owned
from robprune.io import DamagedFile, atomic_write_sealed_json, read_sealed_json, set_aside
from robprune.ui import track

CHUNK = 256  # subset points corrupted per seeded draw (fixed: results must not depend on eval.batch_size)
PLOT_FILE = "corruptions.png"


class CorruptionPart(NamedTuple):
    """One rank's share of a corruption evaluation. clean: block index -> (stop - start,) bool, the clean
    flags of the subset's points; counts: (name, severity, block index) -> (correct, total) predictions
    on that block's corrupted images."""

    clean: dict[int, torch.Tensor]
    counts: dict[tuple[str, int, int], tuple[int, int]]


def evaluate_corruptions(model, x: torch.Tensor, y: torch.Tensor, node, *, device, seed: int, batch_size: int,
                         test_split: str, num_classes: int, block_size: int = BLOCK_SIZE, progress: bool = False,
                         work: Path | None = None) -> dict[str, Any]:
    """Corruption accuracies of ``model`` (already on ``device``) on the test set x: (N, C, H, W) uint8 or
    [0, 1] pixels, y: (N,) labels, every block in this process. node: ``eval.corruptions`` (source, root,
    names, severities, n_examples, frost_textures); block_size: ``eval.block_size``. Returns flat
    fractions in [0, 1]: ``corruption_acc/<name>/<severity>``, ``corruption_acc/<name>`` (mean over
    severities), ``corruption_acc/mean`` (over names × severities), ``corruption_error/mean`` (1 − that),
    ``clean_acc/corruptions`` (clean accuracy on the same points), ``corruption_rc`` (mean / clean, None
    when clean is 0) and ``n_eval/corruptions``. The model runs in eval mode; its modes are restored."""
    part = corruption_blocks(model, x, y, node, device=device, seed=seed, batch_size=batch_size, block_size=block_size,
                             test_split=test_split, num_classes=num_classes, progress=progress, work=work)
    return corruption_metrics_of(node, [part])


def corruption_blocks(model, x: torch.Tensor, y: torch.Tensor, node, *, device, seed: int, batch_size: int,
                      block_size: int, test_split: str, num_classes: int, rank: int = 0, world: int = 1,
                      progress: bool = False, work: Path | None = None) -> CorruptionPart:
    """The blocks of rank ``rank`` of ``world`` (k % world == rank), arguments as :func:`evaluate_corruptions`;
    give ``work`` to one rank only (it writes there)."""
    device = torch.device(device)
    names, severities = [str(n) for n in node.names], [int(s) for s in node.severities]
    source = str(node.get("source", "generate"))
    idx = seeded_indices(x.shape[0], node.get("n_examples"), seed)
    reader = _reader(node, source, x, y, idx, seed, test_split, num_classes)
    with preserved_modes(model, eval_mode=True):
        clean = {b.index: _correct(model, as_pixels(x[idx[b.start:b.stop]]), y[idx[b.start:b.stop]], batch_size, device)
                 for b in owned(blocks(idx.numel(), block_size, seed), rank, world)}
        tag = _tag(idx, clean, source, block_size)
        counts: dict[tuple[str, int, int], tuple[int, int]] = {}
        for name in track(names, "eval corruptions", enabled=progress):
            saved = _load(work, name, tag) or {}
            for severity in severities:
                for b in owned(blocks(reader.count(name, severity), block_size, seed), rank, world):
                    done = saved.get(f"{severity}/{b.index}")
                    counts[name, severity, b.index] = tuple(done) if done else _count(
                        model, reader.images(name, severity, b), batch_size, device)
            _save(work, name, tag, {f"{s}/{k}": list(c) for (n, s, k), c in counts.items() if n == name})
    return CorruptionPart(clean, counts)


def corruption_metrics_of(node, parts: list[CorruptionPart]) -> dict[str, Any]:
    """The metrics of :func:`evaluate_corruptions` from every rank's part: the counts summed per (name,
    severity), the clean flags joined in block order."""
    clean_blocks = {k: flags for part in parts for k, flags in part.clean.items()}
    clean = torch.cat([clean_blocks[k] for k in sorted(clean_blocks)]) if clean_blocks else torch.zeros(0, dtype=torch.bool)
    totals: dict[tuple[str, int], list[int]] = {(str(n), int(s)): [0, 0] for n in node.names for s in node.severities}
    for part in parts:
        for (name, severity, _), (correct, total) in part.counts.items():
            totals[name, severity][0] += correct
            totals[name, severity][1] += total
    acc = {key: correct / total if total else math.nan for key, (correct, total) in totals.items()}
    return corruption_metrics(acc, float(clean.float().mean()) if clean.numel() else math.nan, int(clean.numel()))


def corruption_metrics(acc: dict[tuple[str, int], float], clean_acc: float, n: int) -> dict[str, Any]:
    """The flat metric keys from per-(name, severity) accuracies (see :func:`evaluate_corruptions`)."""
    metrics: dict[str, Any] = {f"corruption_acc/{name}/{s}": a for (name, s), a in acc.items()}
    for name in dict.fromkeys(name for name, _ in acc):
        values = [a for (other, _), a in acc.items() if other == name]
        metrics[f"corruption_acc/{name}"] = sum(values) / len(values)
    mean = sum(acc.values()) / len(acc) if acc else math.nan
    metrics.update({"corruption_acc/mean": mean, "corruption_error/mean": 1 - mean, "clean_acc/corruptions": clean_acc,
                    "corruption_rc": mean / clean_acc if clean_acc else None, "n_eval/corruptions": n})
    return metrics


class _Reader(NamedTuple):
    """count(name, severity): points of that corruption (the subset's size; a severity folder's subset
    for source folders); images(name, severity, block): iterator of (uint8 or [0, 1] images, labels)
    chunks of a block's points."""

    count: Callable[[str, int], int]
    images: Callable[[str, int, Block], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def _reader(node, source: str, x, y, idx, seed, test_split, num_classes) -> _Reader:
    if source == "folders":
        n_examples = node.get("n_examples")
        sizes = functools.lru_cache(maxsize=None)(lambda name, severity: len(folder_subset(
            node.root, name, severity, n_examples, seed)))

        def folders(name, severity, block):
            fx, fy = read_folder(node.root, name, severity, x.shape[1], x.shape[-1], n_examples, seed,
                                 slice(block.start, block.stop))
            return ((fx[i:i + CHUNK], fy[i:i + CHUNK]) for i in range(0, len(fy), CHUNK))  # decoded chunk by chunk
        return _Reader(sizes, folders)

    def chunks(block):
        return [idx[i:min(i + CHUNK, block.stop)] for i in range(block.start, block.stop, CHUNK)]
    if source == "files":
        reader = open_files(node.root, list(node.names), list(node.severities), y, tuple(x.shape[1:]), test_split)
        return _Reader(lambda name, severity: idx.numel(),
                       lambda name, severity, block: [(reader.images(name, severity, c.numpy()), y[c]) for c in chunks(block)])
    textures = _textures(node, x)

    def generate(name, severity, block):
        for j, c in enumerate(chunks(block)):
            seed_j = batch_seed(block.seed, name, severity, j)
            yield corrupt(as_pixels(x[c]), name, severity, seed=seed_j, textures=textures), y[c]
    return _Reader(lambda name, severity: idx.numel(), generate)


def _textures(node, x):
    folder = node.get("frost_textures")
    if folder is None or "frost" not in list(node.names):
        return None
    from robprune.corruptions.weather import user_textures

    return user_textures(str(folder), max(x.shape[-2:]))


@torch.no_grad()
def _count(model, images, batch_size: int, device) -> tuple[int, int]:
    """(correct, total) predictions over an iterator of (images, labels) chunks."""
    correct = total = 0
    for xb, yb in images:
        flags = _correct(model, as_pixels(xb), yb, batch_size, device)
        correct, total = correct + int(flags.sum()), total + flags.numel()
    return correct, total


@torch.no_grad()
def _correct(model, x: torch.Tensor, y: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """(len(x),) bool on the CPU: the model's prediction on x (pixels, on any device) equals y."""
    out = [model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size].cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def _tag(idx: torch.Tensor, clean: dict[int, torch.Tensor], source: str, block_size: int) -> str:
    """What a saved count belongs to: the subset, the clean flags of this rank's blocks, the source, the blocks."""
    flags = b"".join(clean[k].numpy().tobytes() for k in sorted(clean))
    return hashlib.sha256(idx.numpy().tobytes() + flags + f"{source}:{block_size}".encode()).hexdigest()


def _load(work: Path | None, name: str, tag: str) -> dict | None:
    """{"<severity>/<block>": [correct, total]} saved for this tag, else None; a damaged file (unreadable or
    not matching its sha256) is set aside as ``*.corrupt-<time>``, logged, and the corruption counted again."""
    path = None if work is None else Path(work) / "corruptions" / f"{name}.json"
    if path is None or not path.is_file():
        return None
    try:
        record = read_sealed_json(path)
    except DamagedFile as err:
        logging.getLogger("robprune").warning("saved corruption counts %s are damaged (%s); moved to %s, counting "
                                              "them again", path, err.reason, set_aside(path).name)
        return None
    return record.get("counts") if record.get("tag") == tag else None


def _save(work: Path | None, name: str, tag: str, counts: dict) -> None:
    if work is not None:
        atomic_write_sealed_json(Path(work) / "corruptions" / f"{name}.json", {"tag": tag, "counts": counts})


def check_inputs(cfg, data) -> None:
    """Before any stage: the files or folders ``eval.corruptions`` reads fit the run's test split (shape,
    dtype, label count, labels; class folders). cfg: the run config; data: its DataBundle."""
    node = cfg.eval.get("corruptions")
    if node is None or str(node.get("source", "generate")) == "generate":
        return
    if str(node.source) == "files":
        open_files(node.root, list(node.names), [int(s) for s in node.severities], data.test_y,
                   tuple(data.test_x.shape[1:]), str(cfg.dataset.test_split))
    else:
        check_folders(node.root, list(node.names), [int(s) for s in node.severities], int(data.num_classes))


def input_stats(node) -> list:
    """[path, size, mtime_ns] of every file ``node`` reads from disk (the eval stage's key includes them,
    the rule of the dataset decode cache): the .npy files, the folder images, the frost textures."""
    if node is None:
        return []
    source = str(node.get("source", "generate"))
    paths: list[Path] = []
    if source == "files" and node.get("root") is not None:
        root = Path(str(node.root)).expanduser()
        paths += [root / f"{name}.npy" for name in node.names] + [root / "labels.npy"]
    folders = []  # ImageNet-C holds 3.75 M files: their cached manifests' digests, not one stat each
    if source == "folders" and node.get("root") is not None:
        folders = folder_digests(node.root, list(node.names), list(node.severities))
    if node.get("frost_textures") is not None and Path(str(node.frost_textures)).expanduser().is_dir():
        paths += sorted(Path(str(node.frost_textures)).expanduser().iterdir())
    return file_stats(paths) + folders
