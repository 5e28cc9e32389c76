"""Stage cache: build once, reuse, one builder under concurrency, crashes leave nothing half-finished."""
import multiprocessing as mp
import time
from pathlib import Path

import pytest

from robprune.io import atomic_write_json, atomic_write_text
from robprune.store import DONE, StageCache, publish_files


def _build_counting(counter: Path):
    def build(work: Path):
        with open(counter, "a") as fh:
            fh.write("x")
        time.sleep(0.5)
        (work / "out.txt").write_text("artifact")
    return build


def test_built_once_then_reused(tmp_path):
    cache = StageCache(tmp_path / "cache", enabled=True, scratch=tmp_path / "run")
    first = cache.get("train", "k1", _build_counting(tmp_path / "n"))
    second = cache.get("train", "k1", _build_counting(tmp_path / "n"))
    assert not first.reused and second.reused
    assert (second.path / "out.txt").read_text() == "artifact" and (second.path / DONE).exists()
    assert (tmp_path / "n").read_text() == "x"
    assert second.record()["reused"] is True


def test_disabled_cache_rebuilds_in_scratch(tmp_path):
    cache = StageCache(tmp_path / "cache", enabled=False, scratch=tmp_path / "run")
    a = cache.get("train", "k1", _build_counting(tmp_path / "n"))
    b = cache.get("train", "k1", _build_counting(tmp_path / "n"))
    assert not a.reused and not b.reused and (tmp_path / "n").read_text() == "xx"
    assert not (tmp_path / "cache").exists()


def _worker(root, counter, results):
    cache = StageCache(Path(root), enabled=True, scratch=Path(root) / "s")
    results.put(cache.get("train", "shared", _build_counting(Path(counter))).reused)


def test_two_concurrent_jobs_build_once(tmp_path):
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(tmp_path / "c", tmp_path / "n", results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sorted(results.get() for _ in procs) == [False, True]
    assert (tmp_path / "n").read_text() == "x"


def test_failed_build_leaves_no_finished_output_and_retries(tmp_path):
    cache = StageCache(tmp_path / "cache", enabled=True, scratch=tmp_path / "run")

    def broken(work):
        (work / "epochs").mkdir()
        (work / "epochs" / "last.json").write_text("{}")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.get("train", "k", broken)
    assert not (tmp_path / "cache" / "train" / "k").exists()
    seen = []

    def resume(work):
        seen.append((work / "epochs" / "last.json").exists())  # the partial work is still there to resume from
        (work / "out.txt").write_text("ok")

    assert not cache.get("train", "k", resume).reused and seen == [True]


def test_atomic_writes_replace_whole_files(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_text(target, '{"a": 2}')
    assert target.read_text() == '{"a": 2}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp files left behind


def test_publish_files_links_or_copies(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.json").write_text("{}")
    publish_files(tmp_path / "src", tmp_path / "dst", ["model.json"])
    assert (tmp_path / "dst" / "model.json").read_text() == "{}"
