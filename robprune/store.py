"""Stage cache and run directories.

A stage's output lives in ``<cache_dir>/<stage>/<key>/`` where key = hash(stage config slice, input key),
so a sweep over sparsity trains the dense model once. A stage is built in ``<key>.partial/`` (which also
holds its epoch checkpoints, so a killed run resumes), marked done and renamed into place; a finished
directory is never written again. Two jobs that need the same artifact take an exclusive file lock: one
builds, the other waits and reuses.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger("robprune")

DONE = ".done"


@dataclass(frozen=True)
class StageResult:
    name: str
    key: str
    path: Path        # directory holding the stage's outputs
    reused: bool      # True when the output came from the cache
    seconds: float    # time spent building (0 when reused)

    def record(self) -> dict:
        return {"key": self.key, "reused": self.reused, "seconds": round(self.seconds, 3), "path": str(self.path)}


@contextmanager
def file_lock(path: Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (released by the OS if the holder is killed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class StageCache:
    """Builds stage outputs once per key. With ``enabled=False`` every stage is rebuilt inside ``scratch``."""

    def __init__(self, root: Path, *, enabled: bool, scratch: Path):
        self.root, self.enabled, self.scratch = Path(root), enabled, Path(scratch)

    def get(self, name: str, key: str, build: Callable[[Path], None]) -> StageResult:
        """Return the stage's output directory, calling ``build(work_dir)`` to create it when needed.

        build must write every output into work_dir; it may be re-entered after a crash with the same
        work_dir still holding its epoch checkpoints.
        """
        if not self.enabled:
            work = self.scratch / name
            shutil.rmtree(work, ignore_errors=True)
            return self._build(name, key, work, work, build)
        final = self.root / name / key
        if (final / DONE).exists():
            return StageResult(name, key, final, True, 0.0)
        waited = lambda: log.info("%s %s: another job is building it; waiting for its lock", name, key)  # noqa: E731
        with file_lock(self.root / name / f"{key}.lock", on_wait=waited):
            if (final / DONE).exists():
                return StageResult(name, key, final, True, 0.0)
            return self._build(name, key, self.root / name / f"{key}.partial", final, build)

    @staticmethod
    def _build(name: str, key: str, work: Path, final: Path, build: Callable[[Path], None]) -> StageResult:
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        build(work)
        (work / DONE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
        if work != final:
            if final.exists():  # a stale directory without DONE (cannot happen unless edited by hand)
                shutil.rmtree(final)
            os.replace(work, final)
        return StageResult(name, key, final, False, time.perf_counter() - started)


def publish_files(src_dir: Path, dst_dir: Path, names: list[str]) -> None:
    """Copy finished files into a run directory (hard link when possible, else copy; temp name + rename)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        src, dst = src_dir / name, dst_dir / name
        tmp = dst_dir / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
