"""Atomic file writes: write to a temp file in the same directory, fsync, then rename over the target,
so a reader (or a crash) never sees a half-written file and a finished file is only ever replaced whole.

Sealed files carry the sha256 of their own content, so damage a parser would accept (a flipped digit
in a JSON number, a flipped byte inside tensor data, which safetensors cannot notice) is caught on
reading: :func:`atomic_write_sealed_json` / :func:`read_sealed_json` and
:func:`atomic_save_sealed_tensors` / :func:`load_sealed_tensors` raise :class:`DamagedFile`, and the
caller sets the file aside (:func:`set_aside`) and rebuilds what it held."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

SEAL = "sha256"  # the key of a sealed JSON object / safetensors header that holds its content digest


class DamagedFile(ValueError):
    """A file robprune wrote is unreadable, truncated, or no longer matches its sha256; str() names
    the file and what is wrong (``path``: the file)."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


@functools.lru_cache(maxsize=16)
def source_fingerprint(root: str) -> str:
    """16 hex digits over every ``*.py`` file below ``root`` (relative path + bytes): the identity of
    the code there, for cache keys (the stage cache uses the whole package, the decode cache data/)."""
    top = Path(root)
    h = hashlib.sha256()
    for path in sorted(top.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(str(path.relative_to(top)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_save_tensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """safetensors file of contiguous CPU tensors (no pickle)."""
    from safetensors.torch import save_file

    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def _json_default(obj: Any) -> Any:
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_digest(obj: Any) -> str:
    """sha256 (hex) of ``obj``'s canonical JSON (sorted keys, no spaces): the same for the object a
    file was written from and the object read back from it (floats round-trip exactly)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def as_json(obj: Any) -> Any:
    """``obj`` as a reader of its JSON gets it back (tuples become lists, tensors lists, paths strings)."""
    return json.loads(json.dumps(obj, default=_json_default))


def atomic_write_sealed_json(path: Path, obj: dict) -> Path:
    """``obj`` (a dict without a ``sha256`` key) plus ``sha256``: the digest of the rest, atomically."""
    plain = as_json(obj)
    return atomic_write_json(path, {**plain, SEAL: json_digest(plain)})


def read_sealed_json(path: Path) -> dict:
    """The object :func:`atomic_write_sealed_json` wrote, without its seal. DamagedFile when the file
    cannot be read, is not a JSON object, has no seal or no longer matches it."""
    path = Path(path)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise DamagedFile(path, f"unreadable ({err.strerror or err})") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise DamagedFile(path, f"not valid JSON ({type(err).__name__})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(SEAL), str):
        raise DamagedFile(path, f"not a sealed JSON object (no {SEAL})")
    seal = obj.pop(SEAL)
    if json_digest(obj) != seal:
        raise DamagedFile(path, f"content does not match its {SEAL}")
    return obj


def tensors_digest(tensors: dict) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in name order; hex string."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _sealed_digest(tensors: dict, metadata: dict[str, str]) -> str:
    return hashlib.sha256((tensors_digest(tensors) + json_digest(metadata)).encode()).hexdigest()


def atomic_save_sealed_tensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """:func:`atomic_save_tensors` with ``sha256`` in the header: the digest of the tensors and the other
    metadata (string values), so a flipped byte anywhere in the file is caught by :func:`load_sealed_tensors`."""
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    return atomic_save_tensors(path, tensors, metadata={**meta, SEAL: _sealed_digest(tensors, meta)})


def load_sealed_tensors(path: Path) -> tuple[dict, dict[str, str]]:
    """(tensors on the CPU, metadata without the seal) of a file :func:`atomic_save_sealed_tensors` wrote.
    DamagedFile when it is missing, truncated, unparsable, unsealed or no longer matches its seal."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise DamagedFile(path, f"unreadable or truncated safetensors file ({type(err).__name__})") from None
    seal = meta.pop(SEAL, None)
    if seal is None or _sealed_digest(tensors, meta) != seal:
        raise DamagedFile(path, f"content does not match its {SEAL}" if seal else f"no {SEAL} in its header")
    return tensors, meta


def set_aside(path: Path) -> Path:
    """Rename a damaged file or folder to ``<name>.corrupt-<YYYYmmdd-HHMMSS>`` beside it (suffix -1, -2 on a
    clash), keeping it for inspection while its name is free for a rebuild; returns the new path."""
    path = Path(path)
    base = f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    target, n = path.with_name(base), 0
    while target.exists():
        n += 1
        target = path.with_name(f"{base}-{n}")
    os.replace(path, target)
    return target
