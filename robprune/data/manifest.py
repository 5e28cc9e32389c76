"""The listing of a streamed dataset's folder: every file's (relative path, size, mtime) and whether it looks
like a whole image, scanned once and cached (docs/concepts/data-and-models.md#streamed-datasets).

A scan walks the folder with ``os.scandir`` and opens each image file to read its first and last bytes: a
JPEG must start with the SOI marker and end with EOI (a file cut short by a failed copy does not), a PNG with
its signature and the whole IEND chunk (its CRC included), any other image must be non-empty. The result is
cached in ``<cache_dir>/manifests/<sha of the folder's absolute path>.json.gz`` with the mtime of every
directory under the folder. A later run stats only those directories: when none changed (a file added, removed or renamed
changes its directory's mtime) the cached listing is used, so keying a 1.28 M-image tree costs a few thousand
``stat`` calls, not 1.28 M. A file rewritten in place under the same name does not change its directory's
mtime: say so with ``dataset.version`` (part of every key) or delete the manifest.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = 2  # bump when the cached layout or the image check changes; older files are rescanned
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
_TAIL = 64  # bytes read from a file's end to find the JPEG EOI marker or PNG IEND chunk (encoders may pad after it)
_IEND = b"IEND\xaeB`\x82"  # the PNG end chunk's type and its CRC (always these bytes: the chunk is empty)


@dataclass
class Manifest:
    """Files under ``root``: rel -> (size, mtime_ns, problem or ''), in sorted order; dirs: rel -> mtime_ns."""

    root: Path
    files: dict[str, tuple[int, int, str]]
    dirs: dict[str, int] = field(default_factory=dict)

    def under(self, prefix: str) -> list[str]:
        """Relative paths of the files inside folder ``prefix`` ('' = all), sorted."""
        if not prefix:
            return list(self.files)
        head = prefix.rstrip("/") + "/"
        return [rel for rel in self.files if rel.startswith(head)]

    def subdirs(self, prefix: str = "") -> list[str]:
        """Names of the directories directly inside ``prefix`` (hidden ones left out), sorted."""
        head = prefix.rstrip("/") + "/" if prefix else ""
        names = {rel[len(head):].split("/", 1)[0] for rel in self.dirs if rel.startswith(head) and rel != prefix}
        return sorted(n for n in names if n and not n.startswith("."))

    def has_dir(self, rel: str) -> bool:
        return rel.rstrip("/") in self.dirs

    def digest(self, rels) -> str:
        """sha256 over (relative path, size, mtime_ns) of the files ``rels``, in that order."""
        h = hashlib.sha256()
        for rel in rels:
            size, mtime, _ = self.files[rel]
            h.update(f"{rel}\x00{size}\x00{mtime}\n".encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    def problems(self, rels) -> list[tuple[str, str]]:
        """[(relative path, what is wrong)] of the files ``rels`` that are not whole images."""
        return [(rel, self.files[rel][2]) for rel in rels if self.files[rel][2]]


def check_image(path: str, size: int) -> str:
    """'' when the file looks like a whole image, else what is wrong (for the one-line error)."""
    if size == 0:
        return "empty file"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, size - _TAIL))
            return check_ends(head, f.read(), size, os.path.splitext(path)[1])
    except OSError as err:
        return f"unreadable ({err.strerror or err})"


def check_ends(head: bytes, tail: bytes, size: int, suffix: str) -> str:
    """:func:`check_image` on a file's first 8 and last ``_TAIL`` bytes (the whole file when shorter): a JPEG must
    start with SOI and end with EOI, a PNG with its signature and its whole IEND chunk, any other image be non-empty."""
    if size == 0:
        return "empty file"
    suffix = suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        if head[:2] == b"\x89P":  # a PNG with a .JPEG name (ImageNet has one): judge it as a PNG
            return "" if _IEND in tail[-_TAIL:] else "truncated PNG (no IEND chunk)"
        if head[:2] != b"\xff\xd8":
            return "not a JPEG (no SOI marker)"
        return "" if b"\xff\xd9" in tail[-_TAIL:] else "truncated JPEG (no EOI marker)"
    if suffix == ".png":
        return "" if head[:8] == b"\x89PNG\r\n\x1a\n" and _IEND in tail[-_TAIL:] else "not a whole PNG"
    return ""


def scan(root: Path) -> Manifest:
    """Walk ``root`` (symlinks followed for files, not directories) and check every image file."""
    files: dict[str, tuple[int, int, str]] = {}
    dirs: dict[str, int] = {"": os.stat(root).st_mtime_ns}
    stack = [("", str(root))]
    while stack:
        rel_dir, path = stack.pop()
        with os.scandir(path) as entries:
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if entry.is_dir(follow_symlinks=False):
                    dirs[rel] = entry.stat(follow_symlinks=False).st_mtime_ns
                    stack.append((rel, entry.path))
                elif entry.is_file():
                    st = entry.stat()
                    problem = check_image(entry.path, st.st_size) if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES else ""
                    files[rel] = (st.st_size, st.st_mtime_ns, problem)
    return Manifest(root, dict(sorted(files.items())), dict(sorted(dirs.items())))


_DEFAULT_CACHE: list[str | None] = [None]


def set_default_cache(cache_dir: str | Path | None) -> None:
    """Where :func:`default_cache` points (``data.cache_dir``; set when a run builds its data), for readers
    of folders that no dataset node names (ImageNet-C's corruption folders)."""
    _DEFAULT_CACHE[0] = None if cache_dir is None else str(cache_dir)


def default_cache() -> str | None:
    return _DEFAULT_CACHE[0]


def _cache_file(cache_dir: Path, root: Path) -> Path:
    return cache_dir / "manifests" / f"{hashlib.sha256(str(root).encode()).hexdigest()[:24]}.json.gz"


def _fresh(root: Path, dirs: dict[str, int]) -> bool:
    """Every cached directory still exists with its mtime (new/removed/renamed files change it)."""
    try:
        return all(os.stat(root / rel if rel else root).st_mtime_ns == mtime for rel, mtime in dirs.items())
    except OSError:
        return False


def load(root: Path, cache_dir: str | Path | None) -> Manifest:
    """The manifest of ``root``: from the cache when its directories are unchanged, else scanned (and cached)."""
    root = Path(root).resolve()
    path = None if cache_dir is None else _cache_file(Path(cache_dir).expanduser(), root)
    if path is not None and path.is_file():
        try:
            with gzip.open(path, "rt") as f:
                record = json.load(f)
            if record.get("format") == FORMAT and record.get("root") == str(root) and _fresh(root, record["dirs"]):
                return Manifest(root, {k: tuple(v) for k, v in record["files"].items()}, record["dirs"])
        except (OSError, ValueError, KeyError, EOFError) as err:  # a damaged cache is rescanned, never fatal
            warnings.warn(f"ignoring unreadable manifest {path} ({err}); scanning {root} again", stacklevel=2)
    manifest = scan(root)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with gzip.open(tmp, "wt", compresslevel=1) as f:
            json.dump({"format": FORMAT, "root": str(root), "dirs": manifest.dirs, "files": manifest.files}, f)
        os.replace(tmp, path)
    return manifest
