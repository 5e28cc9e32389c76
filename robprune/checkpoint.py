"""Checkpoints without pickle: ``model.safetensors`` (tensors) + ``model.json`` (how to rebuild).

model.json = {format_version, arch, pruning_history, weights_sha256, quant, **extra}. ``arch`` rebuilds
the dense model through the allow-listed :func:`robprune.models.build_model`; replaying
``pruning_history`` with Torch-Pruning shrinks it to the saved shapes; ``quant`` (the
:class:`robprune.quant.QuantSpec` of a fake-quantised model, null otherwise; read from the model
itself when saving) re-applies the quantisation wrappers; then the weights and the observers' range
buffers load with ``strict=True``. Nothing in either file can make robprune import or run code.

Crash safety: each file is written atomically (temp file + rename), weights first, JSON last, so
model.json only exists once its weights do. Both carry the same ``weights_sha256`` (a digest of the
tensors), so a pair from two different saves (a crash between the renames while overwriting, or
files copied from different runs) and bit-rot in the weights are detected on load; model.json
(format_version 2) also carries ``sha256``, the digest of the rest of its content, so a flipped
byte or an edit in it is refused before anything is built from it. The weights file holds no
digest of model.json, so it stays byte-identical when a stage is rebuilt (model.json records
timings). format_version 1 files (before the seal) load with the other checks.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from robprune.config import to_container
from robprune.errors import CheckpointError, ConfigError
from robprune.io import SEAL, as_json, atomic_save_tensors, atomic_write_json, json_digest, tensors_digest
from robprune.quant.modules import QuantSpec, quant_spec_of, quantize_model

WEIGHTS_FILE, META_FILE = "model.safetensors", "model.json"
FORMAT_VERSION = 2  # 2: model.json is sealed (its "sha256"); 1 is still read
READABLE_VERSIONS = (1, 2)
ARCH_KEYS = ("model", "in_channels", "image_size", "num_classes", "mean", "std")  # an image model's arch
TEXT_ARCH_KEYS = ("model", "num_classes", "pad_id", "vocab_size")  # a text model's (its tokenizer's pad id and size)


def arch_keys(arch: dict) -> tuple[str, ...]:
    """The keys an arch record must hold: a text model's when it names a pad id, else an image model's."""
    return TEXT_ARCH_KEYS if "pad_id" in arch else ARCH_KEYS
# Written by save_checkpoint itself; the same keys in ``extra`` are ignored.
RESERVED_KEYS = ("format_version", "arch", "pruning_history", "weights_sha256")
# Also written by save_checkpoint, optional on load (absent in checkpoints of float models saved before it existed).
QUANT_KEY = "quant"


def save_checkpoint(model: nn.Module, directory: Path | str, *, arch: dict, history: list | None = None,
                    extra: dict | None = None) -> Path:
    """Write ``directory/model.safetensors`` (state_dict incl. buffers) and ``directory/model.json``.

    arch: {"model": model config incl. _target_, "num_classes", and the rest of the data's ``arch_record``
    (images: in_channels, image_size, mean, std; text: pad_id, vocab_size)}, extended by the model's own
    ``arch_update()`` when it has one (a text model's transformers config) (DictConfig values are
    converted). history: the pruning history of
    :func:`robprune.prune.prune_model` ([] or None for a dense model). extra: JSON-serialisable keys
    stored at the top level of model.json. Returns ``directory``.
    """
    directory = Path(directory)
    arch = to_container(arch)
    missing = [k for k in arch_keys(arch) if k not in arch]
    if missing:
        raise CheckpointError(f"{directory}: arch is missing {', '.join(missing)}; pass the dict the model was built from")
    if hasattr(model, "arch_update"):
        arch = {**arch, **model.arch_update()}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    digest = tensors_digest(state)
    meta = {k: v for k, v in (extra or {}).items() if k not in (*RESERVED_KEYS, QUANT_KEY)}
    spec = quant_spec_of(model)
    meta.update(format_version=FORMAT_VERSION, arch=arch, pruning_history=list(history or []),
                weights_sha256=digest, **{QUANT_KEY: spec.to_dict() if spec else None})
    atomic_save_tensors(directory / WEIGHTS_FILE, state, metadata={"weights_sha256": digest})
    meta = as_json(meta)  # what load_checkpoint reads back, so its digest matches
    atomic_write_json(directory / META_FILE, {**meta, SEAL: json_digest(meta)})
    return directory


def load_checkpoint(path: Path | str, *, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model saved by :func:`save_checkpoint`; returns (model in eval mode on
    ``map_location``, the parsed model.json).

    path: the checkpoint directory, or the ``.safetensors`` file (its ``.json`` sits next to it).
    Raises CheckpointError (one line: the file and the fix) for missing, truncated, corrupt or
    mismatched files and for an ``arch`` whose ``_target_`` is not allow-listed.
    """
    weights_path, meta_path = _resolve(Path(path))
    meta = _read_meta(meta_path)
    tensors, header = _read_weights(weights_path)
    model = _rebuild(meta, meta_path)
    _requantize(model, meta.get(QUANT_KEY), meta_path)
    _check_matches(model, tensors, weights_path)
    _check_weights_digest(tensors, header, meta, meta_path, weights_path)
    model.load_state_dict(tensors, strict=True)
    return model.to(map_location).eval(), meta


def is_checkpoint(path: Path | str) -> bool:
    """Whether ``path`` is a robprune checkpoint: a folder holding model.safetensors + model.json, or such
    a ``.safetensors`` file with its ``.json`` beside it (what load_checkpoint and read_weights take)."""
    path = Path(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    return weights.suffix == ".safetensors" and weights.is_file() and weights.with_suffix(".json").is_file()


def read_weights(path: Path | str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, model.json) of a robprune checkpoint without rebuilding its model: the same files and
    digest checks as :func:`load_checkpoint` (a model.init source, robprune.start)."""
    weights_path, meta_path = _resolve(Path(path))
    meta = _read_meta(meta_path)
    tensors, header = _read_weights(weights_path)
    _check_weights_digest(tensors, header, meta, meta_path, weights_path)
    return tensors, meta


def _resolve(path: Path) -> tuple[Path, Path]:
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    meta = weights.with_suffix(".json")
    for needed in (weights, meta):
        if not needed.is_file():
            raise CheckpointError(f"{needed}: not found; a checkpoint is a directory with {WEIGHTS_FILE} and {META_FILE} "
                                  f"written by robprune (an interrupted save leaves no {META_FILE}; save it again)")
    return weights, meta


def _read_meta(meta_path: Path) -> dict:
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{meta_path}: not valid JSON ({err}); restore it or save the checkpoint again") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: expected a JSON object; restore it or save the checkpoint again")
    arch = meta.get("arch", {})
    if not isinstance(arch, dict):
        raise CheckpointError(f"{meta_path}: arch is a JSON {type(arch).__name__}, not an object; it was not written by save_checkpoint")
    missing = [k for k in RESERVED_KEYS if k not in meta] + [f"arch.{k}" for k in arch_keys(arch) if k not in arch]
    if missing:
        raise CheckpointError(f"{meta_path}: missing {', '.join(missing)}; it was not written by save_checkpoint")
    if meta["format_version"] not in READABLE_VERSIONS:
        raise CheckpointError(f"{meta_path}: format_version {meta['format_version']} is not "
                              f"{' or '.join(map(str, READABLE_VERSIONS))}; load it with the robprune version that wrote it")
    seal = meta.pop(SEAL, None)
    if (seal is not None or meta["format_version"] != 1) and seal != json_digest(meta):  # before anything is built from it
        raise CheckpointError(f"{meta_path}: its content does not match its {SEAL} (damaged or edited since it was "
                              f"saved); restore it from the same save as {WEIGHTS_FILE} or save the checkpoint again")
    return meta


def _read_weights(weights_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors on CPU, the file's header metadata, which holds weights_sha256)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights_path), framework="pt") as fh:
            return {name: fh.get_tensor(name) for name in fh.keys()}, dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{weights_path}: unreadable or truncated safetensors file ({err}); "
                              f"save the checkpoint again") from None


def _check_weights_digest(tensors: dict, header: dict, meta: dict, meta_path: Path, weights_path: Path) -> None:
    """Both files name the same weights, and the tensors match them (read in full: ~0.1 s per 45 MB)."""
    if header.get("weights_sha256") != meta["weights_sha256"]:
        raise CheckpointError(f"{weights_path}: weights and {meta_path.name} come from different saves (an interrupted "
                              f"save or files copied from different runs); save the checkpoint again")
    if tensors_digest(tensors) != header["weights_sha256"]:
        raise CheckpointError(f"{weights_path}: weights are corrupt (checksum mismatch); save the checkpoint again")


def _rebuild(meta: dict, meta_path: Path) -> nn.Module:
    """Dense model from ``arch`` (allow-listed instantiate), shrunk by replaying the pruning history."""
    import torch_pruning as tp

    from robprune.models import build_model

    arch = meta["arch"]
    model_cfg = dict(arch["model"])
    # The checkpoint holds the weights: nothing is fetched. build_model drops model.init/head (published weights
    # are loaded by robprune.start, never by a builder); a boolean `pretrained` is timm's option before model.init
    # (issue 23), which older model.json files record.
    if isinstance(model_cfg.get("pretrained"), bool):
        model_cfg.pop("pretrained")
    try:
        model = build_model(OmegaConf.create(model_cfg), **{k: v for k, v in arch.items() if k != "model"})
    except ConfigError as err:
        raise CheckpointError(f"{meta_path}: cannot rebuild arch.model: {err.args[0]}") from None
    history = meta["pruning_history"]
    if history:
        if "image_size" not in arch:
            raise CheckpointError(f"{meta_path}: a pruning_history replay needs an image model's arch "
                                  "(in_channels, image_size); this checkpoint was not written by robprune")
        example = torch.zeros(1, arch["in_channels"], arch["image_size"], arch["image_size"])
        try:
            with torch.enable_grad():  # Torch-Pruning traces through autograd
                tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False) \
                    .load_pruning_history(history)
        except (AttributeError, IndexError, ValueError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{meta_path}: pruning_history does not fit arch ({type(err).__name__}: {err}); "
                                  f"was it saved by a different model config?") from None
    return model


def _requantize(model: nn.Module, quant: dict | None, meta_path: Path) -> None:
    """Re-apply the fake-quantisation wrappers recorded in model.json (after the pruning replay, as
    when the model was quantised), so the observer buffers have somewhere to load into."""
    if not quant:
        return
    try:
        quantize_model(model, QuantSpec.from_dict(quant))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{meta_path}: invalid quant record ({err}); save the checkpoint again") from None


def _check_matches(model: nn.Module, tensors: dict[str, torch.Tensor], weights_path: Path) -> None:
    """CheckpointError naming the first key whose presence or shape differs between file and model."""
    expected = model.state_dict()
    for key in [*expected, *(k for k in tensors if k not in expected)]:
        if key not in tensors:
            detail = f"{key} missing from the file, model.json expects {tuple(expected[key].shape)}"
        elif key not in expected:
            detail = f"{key} in the file is not in the model"
        elif tensors[key].shape != expected[key].shape:
            detail = f"{key}: file {tuple(tensors[key].shape)}, model.json {tuple(expected[key].shape)}"
        else:
            continue
        raise CheckpointError(f"{weights_path}: weights do not match the architecture in model.json ({detail}); "
                              f"was it saved by a different model/pruning config?")
