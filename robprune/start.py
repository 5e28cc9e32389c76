"""Where a model's starting weights come from: ``model.init`` and ``model.head`` (docs/how-to/start-from-a-model.md).

Every model node takes the two options of :class:`StartOptions` besides its builder's own (the
``common`` options of :data:`robprune.registry.MODELS`). The builder makes the architecture; then
:func:`load_start` fills it from one of

- ``null``: nothing (the builder's own initialisation);
- a robprune run directory, checkpoint folder or its ``model.safetensors`` (``model.json`` beside it):
  a dense float model only (its digest is verified, as :func:`robprune.checkpoint.load_checkpoint` does);
- a weights file: ``.safetensors``, or a PyTorch state dict read with ``torch.load(weights_only=True)``
  and nothing else (a file that needs unpickling is refused, never loaded another way); the usual
  wrappers (:data:`WRAPPERS`) and the ``module.`` prefix of DataParallel are unwrapped;
- ``pretrained``: the weights the architecture's package publishes (timm, torchvision, the RobustBench
  zoo), found in that package's cache or downloaded with its code; the model registration's
  ``pretrained`` hook says where (:class:`Published`), with the normalisation those weights were
  trained with, which then replaces the dataset's in the model's Normalize layer.

The load is strict: every tensor of the model must come from the file with its shape, except the
Normalize buffers (set by the config when absent) and BatchNorm's ``num_batches_tracked`` counters. The
classifier is the model's last ``nn.Linear``: ``model.head=keep`` loads it (a class-count mismatch is an
error naming the fix), ``model.head=new`` leaves the builder's fresh one (to be trained with
``train.epochs>0``). A stage that loads a start keys it by the file's content (:func:`content_record`),
never by its path.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from robprune.errors import ConfigError
from robprune.models.common import PRETRAINED, START_KEYS, Published, StartOptions

# checkpoint dicts that hold the state dict under a key, in the order they are tried (issue 23)
WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "ema", "state_dict_ema", "model_ema")
PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile
OPTIONAL_SUFFIXES = ("num_batches_tracked",)  # BN counters: absent from many published checkpoints


@dataclass(frozen=True)
class Source:
    """A resolved ``model.init``. kind: robprune | file | pretrained; path: the weights file."""

    kind: str
    path: Path
    given: str
    published: Published | None = None


def split_start(model_cfg: dict) -> tuple[dict, dict]:
    """(the builder's options, the start options) of a plain model dict."""
    return ({k: v for k, v in model_cfg.items() if k not in START_KEYS},
            {k: model_cfg.get(k, f.default) for k, f in ((f.name, f) for f in fields(StartOptions))})


def _registration(model_cfg):
    from robprune.registry import MODELS, target_entry

    return target_entry(MODELS, model_cfg.get("_target_"))


def resolve(model_cfg) -> Source | None:
    """The source ``model.init`` names, checked (ConfigError naming the key and the fix); None for null."""
    init = model_cfg.get("init")
    if init is None:
        return None
    init = str(init)
    if init == PRETRAINED:
        entry = _registration(model_cfg)
        hook: Callable | None = entry.meta.get("pretrained") if entry is not None else None
        if hook is None:
            from robprune.registry import MODELS

            with_weights = ", ".join(f"model={n}" for n in MODELS.names() if MODELS.entry(n).meta.get("pretrained"))
            name = entry.name if entry is not None else model_cfg.get("_target_")
            raise ConfigError(f"model.init=pretrained: model={name} publishes no weights; use {with_weights}, or pass a "
                              f"weights file: model.init=path/to/weights.safetensors")
        builder, _ = split_start(dict(model_cfg))
        published = hook(builder)
        return Source(PRETRAINED, Path(published.path), init, published)
    path = Path(init).expanduser()
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise ConfigError(f"model.init={init}: the folder holds no model.safetensors; pass a robprune run or checkpoint "
                              f"folder, or a weights file (.safetensors, .pt, .pth)")
        path = weights
    elif not path.is_file():
        raise ConfigError(f"model.init={init}: no such file or folder; pass a robprune run or checkpoint folder, a weights "
                          f"file (.safetensors, .pt, .pth) or model.init=pretrained")
    from robprune.checkpoint import is_checkpoint

    return Source("robprune" if is_checkpoint(path) else "file", path, init)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (remembered per path, size and mtime within the process)."""
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _DIGESTS[memo] = h.hexdigest()
    return _DIGESTS[memo]


def content_record(model_cfg) -> dict | None:
    """What a stage that loads ``model.init`` keys instead of its path: the file's sha256 and the kind of
    source (None for init=null). Resolving may download published weights (online) or raise ConfigError."""
    source = resolve(model_cfg)
    if source is None:
        return None
    return {"kind": source.kind, "sha256": file_digest(source.path)}


def read_state(source: Source) -> dict[str, torch.Tensor]:
    """The state dict a source holds (wrappers and DataParallel prefixes removed), on the CPU."""
    where = f"model.init={source.given}" + (f" ({source.path})" if source.kind == PRETRAINED else "")
    if source.kind == "robprune":
        return _robprune_state(source, where)
    if source.path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(source.path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ConfigError(f"{where}: not a readable safetensors file ({_first_line(err)}); pass a file written by "
                              f"safetensors.torch.save_file") from None
    else:
        state = _torch_state(source.path, where)
    extra = source.published or Published(source.path)
    return _unwrap(state, where, extra.wrappers, extra.strip)


def _robprune_state(source: Source, where: str) -> dict[str, torch.Tensor]:
    from robprune.checkpoint import read_weights

    tensors, meta = read_weights(source.path)
    if meta.get("pruning_history") or meta.get("quant"):
        what = "pruned" if meta.get("pruning_history") else "quantised"
        raise ConfigError(f"{where}: holds a {what} model; pass a dense one (the run's train stage, or a weights "
                          f"file), or evaluate it as it is with robprune eval {source.given}")
    return tensors


def _torch_state(path: Path, where: str) -> Any:
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):  # a pickled class: what weights_only exists to refuse
            name = re.search(r"GLOBAL ([\w.]+)", str(err))
            raise ConfigError(f"{where}: torch.load(weights_only=True) refuses it (it pickles Python objects"
                              f"{', ' + name.group(1) if name else ''}, e.g. a whole "
                              f"model or an optimizer) and robprune never unpickles; pass model.state_dict() saved with "
                              f"torch.save, or a .safetensors file") from None
        raise ConfigError(f"{where}: not a PyTorch checkpoint (its bytes are no pickle of tensors); pass a .safetensors "
                          f"file or a state dict saved with torch.save") from None
    except Exception as err:  # noqa: BLE001 - a file that is no checkpoint fails inside the unpickler in many ways
        raise ConfigError(f"{where}: not a PyTorch checkpoint ({type(err).__name__}: {_first_line(err)}); pass a "
                          f".safetensors file or a state dict saved with torch.save") from None


def _unwrap(obj: Any, where: str, wrappers: tuple[str, ...] = (), strip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Descend through wrapper keys until a flat {name: tensor} dict; strip DataParallel/compile prefixes
    (and a published file's own ``wrappers`` and ``strip`` prefixes)."""
    for _ in range(4):
        if not isinstance(obj, dict) or not obj:
            break
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in (*wrappers, *WRAPPERS) if isinstance(obj.get(k), dict)), None)
        if inner is None:
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors and all(isinstance(k, str) and "." in k for k in tensors):
                obj = tensors  # a state dict saved with extra entries (an epoch counter) beside the tensors
                break
            raise ConfigError(f"{where}: holds a dict without a state dict (keys: {', '.join(map(str, list(obj)[:6]))}); "
                              f"robprune looks under {', '.join(WRAPPERS)}; pass model.state_dict() itself")
        obj = inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{where}: not a state dict ({type(obj).__name__}); pass model.state_dict() saved with "
                          f"torch.save, or a .safetensors file")
    for prefix in (*PREFIXES, *strip):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def classifier_of(model: nn.Module) -> str | None:
    """Module name of the classifier: the last ``nn.Linear`` in registration order."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return last


def _normalize_buffers(model: nn.Module) -> set[str]:
    from robprune.models.common import Normalize

    return {f"{name}.{b}".lstrip(".") for name, module in model.named_modules() if isinstance(module, Normalize)
            for b, _ in module.named_buffers(recurse=False)}


def _target(model: nn.Module, state: dict) -> tuple[str, nn.Module]:
    """Load into the whole model, or into its wrapped network (``.net``: timm, torchvision) when the file's
    names are that network's."""
    candidates = [("", model)] + [(n, getattr(model, n)) for n in ("net",) if isinstance(getattr(model, n, None), nn.Module)]
    return max(candidates, key=lambda c: len(set(c[1].state_dict()) & set(state)))


def load_start(model: nn.Module, model_cfg, *, num_classes: int | None = None, source: Source | None = None) -> dict | None:
    """IN PLACE: fill ``model`` from ``model.init`` (see the module docstring); returns the record written
    to model.json (``start``): kind, sha256, head, and the published weights' info. None for init=null."""
    source = source or resolve(model_cfg)
    if source is None:
        return None
    head = str(model_cfg.get("head", "keep"))  # one of HEADS: the schema checked it
    _check_channels(model, source)
    state = read_state(source)
    where = f"model.init={source.given}"
    prefix, target = _target(model, state)
    expected = target.state_dict()
    classifier = classifier_of(target)
    head_keys = {k for k in expected if classifier is not None and k.rsplit(".", 1)[0] == classifier}
    if head == "new":
        state = {k: v for k, v in state.items() if k not in head_keys}
    else:
        for key in sorted(head_keys & set(state)):
            if state[key].shape[:1] != expected[key].shape[:1]:  # another class count (a width change is reported below)
                raise ConfigError(f"{where}: its classifier {key} has shape {tuple(state[key].shape)} but this model's is "
                                  f"{tuple(expected[key].shape)} ({num_classes if num_classes else expected[key].shape[0]} "
                                  f"classes); set model.head=new for a fresh classifier (trained by train.epochs>0), or "
                                  f"use the dataset the weights were trained on")
    optional = _normalize_buffers(target) | {k for k in expected if k.endswith(OPTIONAL_SUFFIXES)}
    if head == "new":
        optional |= head_keys
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        name = model_cfg.get("name") or (_registration(model_cfg).name if _registration(model_cfg) else "?")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing, first {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, first {unexpected[0]}")
        if reshaped:
            k = reshaped[0]
            parts.append(f"{len(reshaped)} of another shape, first {k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}")
        raise ConfigError(f"{where}: its weights do not fit model {name} ({'; '.join(parts)}); pick the model config they "
                          f"were saved from (model=..., model.name=..., model.width=...)")
    target.load_state_dict(state, strict=False)
    published = source.published
    if published is not None and published.mean is not None:
        _set_normalization(model, published.mean, published.std)
    record = {"kind": source.kind, "sha256": file_digest(source.path), "head": head, "tensors": len(state),
              "into": prefix or "model"}
    if published is not None and published.info:
        record["published"] = published.info
    return record


def _check_channels(model: nn.Module, source: Source) -> None:
    """Published weights with a normalisation take images of that many channels: another count (MNIST's 1
    into ImageNet weights) is one line before the file is read."""
    from robprune.models.common import Normalize

    published = source.published
    layer = next((m for m in model.modules() if isinstance(m, Normalize)), None)
    if published is None or published.mean is None or layer is None or layer.mean.numel() == len(published.mean):
        return
    raise ConfigError(f"model.init={source.given}: the published weights ({source.path.name}) take {len(published.mean)}-"
                      f"channel images but the dataset gives {layer.mean.numel()}; use a {len(published.mean)}-channel "
                      f"dataset, or model.init=null to train this architecture from scratch")


def _set_normalization(model: nn.Module, mean, std) -> None:
    """The published weights' normalisation in the model's (first) Normalize layer."""
    from robprune.models.common import Normalize

    layer = next((m for m in model.modules() if isinstance(m, Normalize)), None)
    if layer is not None and layer.mean.numel() == len(mean):
        layer.mean.copy_(torch.tensor(mean, dtype=layer.mean.dtype).view_as(layer.mean))
        layer.std.copy_(torch.tensor(std, dtype=layer.std.dtype).view_as(layer.std))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def describe(record: dict | None) -> str:
    return json.dumps(record, sort_keys=True) if record else "null"
