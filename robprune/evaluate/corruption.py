"""Corruption robustness (Hendrycks & Dietterich 2019): accuracy on corrupted test images per
corruption and severity, their means and R_C = mean corruption accuracy / clean accuracy (AdaSAP's
robustness ratio, docs/methods/adasap.md#step-4).

Unlike the adversarial evaluation every point is evaluated (not only the clean-correct ones), and
the numbers never enter ``robust_acc/worst``: a corruption is a distribution shift, not a threat model.

Subset: ``eval.corruptions.n_examples`` test points, the first of the same seeded permutation the
attacks use (null: the whole test split). Generated corruptions are drawn in fixed chunks of
:data:`CHUNK` subset points, each seeded from (seed, corruption, severity, chunk index), so the numbers
do not depend on ``eval.batch_size`` or the device. Finished corruptions are kept in the stage's work
folder (``corruptions/<name>.json``), so a killed evaluation resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from robprune.attacks.common import preserved_modes
from robprune.corruptions import batch_seed, corrupt
from robprune.corruptions.files import check_folders, file_stats, folder_digests, open_files, read_folder
from robprune.data.tensors import as_pixels, seeded_indices
from robprune.io import atomic_write_json
from robprune.ui import track

CHUNK = 256  # subset points corrupted per seeded draw (fixed: results must not depend on eval.batch_size)
PLOT_FILE = "corruptions.png"


def evaluate_corruptions(model, x: torch.Tensor, y: torch.Tensor, node, *, device, seed: int, batch_size: int,
                         test_split: str, num_classes: int, progress: bool = False,
                         work: Path | None = None) -> dict[str, Any]:
    """Corruption accuracies of ``model`` (already on ``device``) on the test set x: (N, C, H, W) uint8 or
    [0, 1] pixels, y: (N,) labels. node: ``eval.corruptions`` (source, root, names, severities, n_examples,
    frost_textures). Returns flat fractions in [0, 1]: ``corruption_acc/<name>/<severity>``,
    ``corruption_acc/<name>`` (mean over severities), ``corruption_acc/mean`` (over names × severities),
    ``corruption_error/mean`` (1 − that), ``clean_acc/corruptions`` (clean accuracy on the same points),
    ``corruption_rc`` (mean / clean, None when clean is 0) and ``n_eval/corruptions``. The model runs in
    eval mode; its modes are restored."""
    device = torch.device(device)
    names, severities = [str(n) for n in node.names], [int(s) for s in node.severities]
    source = str(node.get("source", "generate"))
    idx = seeded_indices(x.shape[0], node.get("n_examples"), seed)
    images = _images_of(node, source, x, y, idx, seed, test_split, num_classes)
    with preserved_modes(model, eval_mode=True):
        clean = _correct(model, as_pixels(x[idx]), y[idx], batch_size, device)
        tag = hashlib.sha256(idx.numpy().tobytes() + clean.numpy().tobytes() + source.encode()).hexdigest()
        acc: dict[tuple[str, int], float] = {}
        for name in track(names, "eval corruptions", enabled=progress):
            saved = _load(work, name, tag)
            for severity in severities:
                if saved is not None and str(severity) in saved:
                    acc[name, severity] = saved[str(severity)]
                    continue
                acc[name, severity] = _accuracy(model, images, name, severity, batch_size, device)
            _save(work, name, tag, {str(s): acc[name, s] for s in severities})
    return corruption_metrics(acc, float(clean.float().mean()) if clean.numel() else math.nan, int(idx.numel()))


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


def _images_of(node, source: str, x, y, idx, seed, test_split, num_classes):
    """A function (name, severity) -> iterator of (uint8 or [0, 1] images, labels) chunks."""
    if source == "folders":
        def folders(name, severity):
            fx, fy = read_folder(node.root, name, severity, x.shape[1], x.shape[-1], node.get("n_examples"), seed)
            return ((fx[i:i + CHUNK], fy[i:i + CHUNK]) for i in range(0, len(fy), CHUNK))  # decoded chunk by chunk
        return folders
    chunks = [idx[i:i + CHUNK] for i in range(0, idx.numel(), CHUNK)]
    if source == "files":
        reader = open_files(node.root, list(node.names), list(node.severities), y, tuple(x.shape[1:]), test_split)
        return lambda name, severity: [(reader.images(name, severity, c.numpy()), y[c]) for c in chunks]
    textures = _textures(node, x)

    def generate(name, severity):
        for k, c in enumerate(chunks):
            yield corrupt(as_pixels(x[c]), name, severity, seed=batch_seed(seed, name, severity, k), textures=textures), y[c]
    return generate


def _textures(node, x):
    folder = node.get("frost_textures")
    if folder is None or "frost" not in list(node.names):
        return None
    from robprune.corruptions.weather import user_textures

    return user_textures(str(folder), max(x.shape[-2:]))


@torch.no_grad()
def _accuracy(model, images, name: str, severity: int, batch_size: int, device) -> float:
    correct = total = 0
    for xb, yb in images(name, severity):
        flags = _correct(model, as_pixels(xb), yb, batch_size, device)
        correct, total = correct + int(flags.sum()), total + flags.numel()
    return correct / total if total else math.nan


@torch.no_grad()
def _correct(model, x: torch.Tensor, y: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """(len(x),) bool on the CPU: the model's prediction on x (pixels, on any device) equals y."""
    out = [model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size].cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def _load(work: Path | None, name: str, tag: str) -> dict | None:
    path = None if work is None else Path(work) / "corruptions" / f"{name}.json"
    if path is None or not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record["acc"] if record.get("tag") == tag else None


def _save(work: Path | None, name: str, tag: str, acc: dict) -> None:
    if work is not None:
        atomic_write_json(Path(work) / "corruptions" / f"{name}.json", {"tag": tag, "acc": acc})


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
