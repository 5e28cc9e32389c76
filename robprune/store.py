"""Stage cache and run directories.

A stage's output lives in ``<cache_dir>/<stage>/<key>/`` where key = hash(stage config slice, input key),
so a sweep over sparsity trains the dense model once. A stage is built in ``<key>.partial/`` (which also
holds its epoch checkpoints, so a killed run resumes), given a manifest (``.done``: size and sha256 of
every file) and ``stage.json`` (how it was built), and renamed into place; a finished directory is never
written again except for its ``.last_used`` stamp. Every reuse checks the manifest: a damaged entry is
moved aside to ``<key>.corrupt-<time>`` and rebuilt. Two jobs that need the same artifact take an
exclusive lock (``<key>.lock``, see :func:`file_lock`: works on network filesystems, dead holders are
taken over): one builds, the other waits and reuses. Run directories get copies (reflinks where
the filesystem has them), never links, so nothing a run holds shares storage with the cache.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from robprune.io import atomic_write_json, set_aside

log = logging.getLogger("robprune")

DONE = ".done"              # manifest, JSON {"format": 1, "files": {relpath: {"size", "sha256"}}}
STAGE_JSON = "stage.json"   # the caller's meta plus built_at and seconds (itself in the manifest)
LAST_USED = ".last_used"    # touched on every reuse; its mtime is the entry's last use
UNLISTED = {DONE, LAST_USED}  # top-level files the manifest does not cover
MANIFEST_FORMAT = 1
FICLONE = 0x40049409        # Linux ioctl: share the source's extents copy-on-write (btrfs, XFS, bcachefs)


@dataclass(frozen=True)
class StageResult:
    name: str
    key: str
    path: Path        # directory holding the stage's outputs
    reused: bool      # True when the output came from the cache
    seconds: float    # time spent building in this call (0 when reused)
    meta: dict = field(default_factory=dict, compare=False, hash=False)  # stage.json: how it was built

    def record(self) -> dict:
        rec = {"key": self.key, "reused": self.reused, "seconds": round(self.seconds, 3), "path": str(self.path)}
        rec.update({k: self.meta[k] for k in ("device", "inputs") if k in self.meta})
        return rec


LOCK_STALE_S = float(os.environ.get("ROBPRUNE_LOCK_STALE_S", "120"))  # a lock without a heartbeat this long is dead
HEARTBEAT_S = max(0.05, LOCK_STALE_S / 8)  # how often a holder refreshes its lock's mtime
TAKEOVER_STALE_S = 30.0   # a takeover guard older than this was left by a job killed mid-takeover
HOST = socket.gethostname()


def _write_owner(path: Path) -> str | None:
    """Create ``path`` exclusively (O_CREAT|O_EXCL: atomic on local filesystems and NFSv3+) holding this
    process's owner record; its token, or None when the file exists."""
    token = uuid.uuid4().hex
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as fh:
        json.dump({"host": HOST, "pid": os.getpid(), "token": token, "since": time.time()}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return token


def _read_owner(path: Path) -> dict | None:
    """The owner record of a held lock; {} when it has none (being written, or a pre-1.0 empty lock file);
    None when the lock is free."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _pid_alive(pid) -> bool:
    """Whether process ``pid`` of this host is running (a zombie counts as dead: it holds nothing)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    except (TypeError, ValueError):
        return False
    try:
        return Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def lock_stale(path: Path, owner: dict) -> str | None:
    """Why the lock at ``path`` held by ``owner`` is dead, or None while it may be alive: its process on
    this host is gone, or its heartbeat (the file's mtime, refreshed by the holder) is older than
    LOCK_STALE_S (a job killed on another node of a shared filesystem), or it has no owner record after
    a few seconds."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    if owner.get("host") == HOST and "pid" in owner and not _pid_alive(owner["pid"]):
        return f"its job (pid {owner['pid']} on {HOST}) is gone"
    if age > LOCK_STALE_S:
        return f"no heartbeat from {owner.get('host', '?')} pid {owner.get('pid', '?')} for {age:.0f} s"
    if not owner and age > 5.0:
        return "it has no owner record"
    return None


def _take_over(path: Path, owner: dict, reason: str) -> bool:
    """Remove the dead lock at ``path`` if it still holds ``owner``. One job at a time does this, under an
    exclusive ``.takeover`` guard, so two waiters cannot both remove a lock and the second one the
    first one's fresh lock. True when removed (the caller then tries to acquire again)."""
    guard = path.with_name(path.name + ".takeover")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - guard.stat().st_mtime > TAKEOVER_STALE_S:
                guard.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return False
    os.close(fd)
    try:
        current = _read_owner(path)
        if current is None or current.get("token") != owner.get("token"):
            return False  # released or taken meanwhile
        path.unlink(missing_ok=True)
        log.warning("lock %s: taken over (%s)", path, reason)
        return True
    finally:
        guard.unlink(missing_ok=True)


class _Heartbeat(threading.Thread):
    """Refreshes a held lock's mtime every HEARTBEAT_S so waiters on other hosts know its job is alive."""

    def __init__(self, path: Path):
        super().__init__(name=f"lock-heartbeat {path.name}", daemon=True)
        self.path, self.stopped = path, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:  # taken over by another job after a long stall; its owner check will tell
                return


def _release(path: Path, token: str) -> None:
    """Remove the lock only if it is still ours (another job may have taken it over after a stall)."""
    owner = _read_owner(path)
    if owner is not None and owner.get("token") == token:
        path.unlink(missing_ok=True)
    elif owner is not None:
        log.warning("lock %s: another job took it over while this one held it (stalled > %.0f s?)", path, LOCK_STALE_S)


def _acquire(path: Path, *, wait: bool, on_wait: Callable[[], None] | None = None) -> str | None:
    """Token of the lock at ``path``, taking over a dead holder's; None when held and not ``wait``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    delay, waited = 0.02, False
    while True:
        token = _write_owner(path)
        if token is not None:
            return token
        owner = _read_owner(path)
        if owner is None:
            continue  # released between our create and our read
        reason = lock_stale(path, owner)
        if reason is not None and _take_over(path, owner, reason):
            continue
        if not wait:
            return None
        if on_wait and not waited:
            on_wait()
            waited = True
        time.sleep(delay)
        delay = min(1.0, delay * 1.5)


@contextmanager
def file_lock(path: Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Exclusive lock on ``path`` that works across processes, hosts and network filesystems (where
    ``flock`` is often not honoured): the lock is the file itself, created with O_EXCL and holding its
    owner (host, pid, token); the holder refreshes its mtime every HEARTBEAT_S. A waiter polls, and takes
    over a lock whose job is dead (:func:`lock_stale`: its pid gone on this host, or no heartbeat for
    ROBPRUNE_LOCK_STALE_S seconds, default 120). on_wait is called once if the lock is busy."""
    with _holding(path, _acquire(path, wait=True, on_wait=on_wait)):
        yield


@contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """Non-blocking ``file_lock``: yields True while held, False (holding nothing) when a live job has it."""
    token = _acquire(path, wait=False)
    if token is None:
        yield False
        return
    with _holding(path, token):
        yield True


@contextmanager
def _holding(path: Path, token: str) -> Iterator[None]:
    """Keep the acquired lock alive with a heartbeat while the block runs; release it after."""
    beat = _Heartbeat(path)
    beat.start()
    try:
        yield
    finally:
        beat.stopped.set()
        beat.join()
        _release(path, token)


def lock_path(entry: Path) -> Path:
    """``<stage>/<key>.lock`` for ``<stage>/<key>`` or ``<stage>/<key>.partial``."""
    return entry.with_name(entry.name.removesuffix(".partial") + ".lock")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _entry_files(entry: Path) -> dict[str, Path]:
    """Every file under ``entry`` by relative path, minus the top-level marker and stamp."""
    files = {p.relative_to(entry).as_posix(): p for p in entry.rglob("*") if p.is_file() or p.is_symlink()}
    return {rel: p for rel, p in files.items() if rel not in UNLISTED}


def write_manifest(entry: Path) -> dict:
    """Write ``entry/.done`` listing every file's size and sha256 (atomically); returns the manifest."""
    files = {rel: {"size": p.stat().st_size, "sha256": sha256_file(p)} for rel, p in sorted(_entry_files(entry).items())}
    manifest = {"format": MANIFEST_FORMAT, "files": files}
    atomic_write_json(entry / DONE, manifest)
    return manifest


def read_manifest(entry: Path) -> dict | None:
    """The manifest in ``entry/.done``; None when missing or old-style (a bare timestamp)."""
    try:
        manifest = json.loads((entry / DONE).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None


def check_entry(entry: Path) -> str | None:
    """None when every file of ``entry`` matches its manifest, else why not (one short phrase).
    Reads every listed file in full (sha256)."""
    if not (entry / DONE).exists():
        return "no .done marker: its build never finished"
    manifest = read_manifest(entry)
    if manifest is None:
        return "no manifest: built before entries were verified, so it cannot be checked"
    try:
        present = _entry_files(entry)
        for rel, want in manifest["files"].items():
            if rel not in present:
                return f"{rel} is missing"
            if present[rel].stat().st_size != want["size"]:
                return f"{rel} has {present[rel].stat().st_size} bytes, manifest says {want['size']}"
            if sha256_file(present[rel]) != want["sha256"]:
                return f"{rel} does not match its sha256"
    except OSError as err:  # moved aside or deleted while we read
        return f"unreadable ({err.strerror})"
    except (KeyError, TypeError, AttributeError):  # a damaged manifest that still parses as JSON ("sixe": 762)
        return "its manifest is malformed"
    extra = sorted(set(present) - set(manifest["files"]))
    return f"{extra[0]} is not in the manifest" if extra else None


def quarantine(entry: Path) -> Path:
    """Rename ``entry`` to ``<entry>.corrupt-<YYYYmmdd-HHMMSS>`` (suffix -1, -2 on a clash); returns it.
    The caller holds the entry's lock."""
    return set_aside(entry)


def last_used(entry: Path) -> float:
    """Epoch seconds of the entry's last reuse (its build time when never reused)."""
    for stamp in (entry / LAST_USED, entry / DONE, entry):
        try:
            return stamp.stat().st_mtime
        except OSError:
            continue
    return 0.0


def read_stage_json(entry: Path) -> dict:
    try:
        meta = json.loads((entry / STAGE_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


class StageCache:
    """Builds stage outputs once per key. With ``enabled=False`` the same layout lives under ``scratch``
    (the run directory's own ``stages/``), so nothing is shared, and a rerun into that run directory
    reuses its finished stages and resumes its partial ones."""

    def __init__(self, root: Path, *, enabled: bool, scratch: Path):
        self.root, self.enabled, self.scratch = Path(root), enabled, Path(scratch)

    def get(self, name: str, key: str, build: Callable[[Path], None], *, meta: dict | None = None) -> StageResult:
        """Return the stage's output directory, calling ``build(work_dir)`` to create it when needed.

        build must write every output into work_dir; it may be re-entered after a crash with the same
        work_dir still holding its epoch checkpoints. meta (JSON-serialisable: name, key, inputs, config,
        provenance, device) is written with built_at and seconds to ``stage.json``. A reused entry is
        verified against its manifest; a damaged one is moved aside to ``<key>.corrupt-<time>``, logged
        once, and rebuilt. Touches ``.last_used`` on reuse.
        """
        root = self.root if self.enabled else self.scratch
        final = root / name / key
        if (final / DONE).exists() and check_entry(final) is None:
            return self._reused(name, key, final)
        waited = lambda: log.info("%s %s: another job is building it; waiting for its lock", name, key)  # noqa: E731
        with file_lock(root / name / f"{key}.lock", on_wait=waited):
            if final.exists():  # checked again under the lock: another job may have rebuilt it meanwhile
                problem = check_entry(final)
                if problem is None:
                    return self._reused(name, key, final)
                moved = quarantine(final)
                log.warning("cache entry %s/%s failed verification (%s); moved to %s, rebuilding it", name, key, problem, moved)
            return self._build(name, key, final.with_name(f"{key}.partial"), final, build, meta or {})

    def state(self, name: str, key: str) -> str:
        """What :meth:`get` would do for (name, key), without doing it or touching anything: ``cached``
        (a verified entry), ``resume`` (a partial build whose work folder a build re-enters), ``damaged``
        (an entry that fails verification: rebuilt) or ``build``."""
        root = self.root if self.enabled else self.scratch
        final = root / name / key
        if final.exists():
            return "cached" if (final / DONE).exists() and check_entry(final) is None else "damaged"
        return "resume" if final.with_name(f"{key}.partial").exists() else "build"

    @staticmethod
    def _reused(name: str, key: str, final: Path) -> StageResult:
        try:
            (final / LAST_USED).touch()
        except OSError:  # a read-only cache still serves; only `cache clean --older-than` loses precision
            pass
        return StageResult(name, key, final, True, 0.0, read_stage_json(final))

    @staticmethod
    def _build(name: str, key: str, work: Path, final: Path, build: Callable[[Path], None], meta: dict) -> StageResult:
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        build(work)
        seconds = time.perf_counter() - started
        stage = {"name": name, "key": key, **meta, "built_at": datetime.now().astimezone().isoformat(timespec="seconds"),
                 "seconds": round(seconds, 3)}
        atomic_write_json(work / STAGE_JSON, stage)
        (work / DONE).unlink(missing_ok=True)  # a re-entered build must not list an old marker
        write_manifest(work)
        os.replace(work, final)  # final does not exist: the caller moved any old one aside under the lock
        return StageResult(name, key, final, False, seconds, stage)


def _clone_or_copy(src: Path, dst: Path) -> None:
    """Write ``dst`` as an independent copy of ``src``: a reflink where the filesystem can, else bytes; fsynced."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            if not sys.platform.startswith("linux"):
                raise OSError("FICLONE is Linux-only")
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
        except OSError:  # no reflinks here (ext4, tmpfs, across filesystems): copy the bytes
            fout.seek(0)
            fout.truncate()
            shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def publish_files(src_dir: Path, dst_dir: Path, names: list[str]) -> None:
    """Copy finished files into a run directory: a reflink or a byte copy under a temp name, fsync, rename.
    Never a hard link, so damage to a cache entry cannot reach a finished run (and vice versa)."""
    dst_dir = Path(dst_dir)
    for name in names:
        src, dst = Path(src_dir) / name, dst_dir / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        os.close(fd)
        try:
            _clone_or_copy(src, Path(tmp))
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
