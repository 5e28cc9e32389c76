"""Stage cache: build once, reuse, one builder under concurrency, crashes leave nothing half-finished,
damaged entries are detected and rebuilt, runs never share storage with the cache."""
import json
import logging
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from robprune.io import atomic_write_json, atomic_write_text
from robprune.store import DONE, STAGE_JSON, StageCache, check_entry, publish_files


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


def test_disabled_cache_builds_in_scratch_and_reuses_it_on_rerun(tmp_path):
    cache = StageCache(tmp_path / "cache", enabled=False, scratch=tmp_path / "run")
    a = cache.get("train", "k1", _build_counting(tmp_path / "n"))
    b = cache.get("train", "k1", _build_counting(tmp_path / "n"))
    c = cache.get("train", "k2", _build_counting(tmp_path / "n"))
    assert not a.reused and b.reused and not c.reused and (tmp_path / "n").read_text() == "xx"
    assert a.path == tmp_path / "run" / "train" / "k1" and c.path == tmp_path / "run" / "train" / "k2"
    assert not (tmp_path / "cache").exists()


def test_disabled_cache_resumes_a_killed_build(tmp_path):
    """cache=false used to delete its scratch folder on start; now a rerun into the run dir resumes."""
    cache = StageCache(tmp_path / "cache", enabled=False, scratch=tmp_path / "run")

    def killed(work):
        (work / "epoch1.ckpt").write_text("state")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.get("train", "k", killed)
    seen = []

    def resume(work):
        seen.append((work / "epoch1.ckpt").read_text())
        (work / "out.txt").write_text("ok")

    assert not cache.get("train", "k", resume).reused and seen == ["state"]


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


def test_publish_files_gives_an_independent_copy(tmp_path):
    """Published files used to be hard links: truncating the cache's copy damaged finished runs."""
    cache = StageCache(tmp_path / "cache", enabled=True, scratch=tmp_path / "s")
    entry = cache.get("train", "k", lambda w: (w / "model.safetensors").write_bytes(os.urandom(4096))).path
    publish_files(entry, tmp_path / "run", ["model.safetensors"])
    src, dst = entry / "model.safetensors", tmp_path / "run" / "model.safetensors"
    assert src.stat().st_ino != dst.stat().st_ino and src.stat().st_nlink == 1 and dst.stat().st_nlink == 1
    original = src.read_bytes()
    with open(src, "r+b") as fh:
        fh.truncate(10)
    assert dst.read_bytes() == original
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["model.safetensors"]  # no temp files left


def _cache_with_entry(tmp_path, builds):
    cache = StageCache(tmp_path / "cache", enabled=True, scratch=tmp_path / "s")

    def build(work):
        builds.append(work)
        (work / "model.safetensors").write_bytes(bytes(range(256)) * 8)
        (work / "sub").mkdir(exist_ok=True)
        (work / "sub" / "model.json").write_text('{"arch": "cnn"}')
    return cache, build


def _truncate(path):
    with open(path, "r+b") as fh:
        fh.truncate(100)


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[17] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_byte, lambda p: p.unlink(),
                                    lambda p: (p.parent / "extra.bin").write_text("x")],
                         ids=["truncated", "flipped byte", "missing", "extra file"])
def test_damaged_entry_is_moved_aside_logged_once_and_rebuilt(tmp_path, caplog, damage):
    builds = []
    cache, build = _cache_with_entry(tmp_path, builds)
    first = cache.get("train", "k", build)
    damage(first.path / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="robprune"):
        second = cache.get("train", "k", build)
    assert len(builds) == 2 and not second.reused and check_entry(second.path) is None
    aside = list((tmp_path / "cache" / "train").glob("k.corrupt-*"))
    assert len(aside) == 1 and (aside[0] / "sub" / "model.json").exists()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "train/k" in warnings[0].getMessage() and "rebuilding" in warnings[0].getMessage()
    assert cache.get("train", "k", build).reused and len(builds) == 2  # the rebuilt entry verifies


def test_old_style_entry_without_manifest_is_rebuilt(tmp_path, caplog):
    old = tmp_path / "cache" / "train" / "k"
    old.mkdir(parents=True)
    (old / "out.txt").write_text("artifact")
    (old / DONE).write_text("2024-01-01T00:00:00")  # what .done held before manifests
    builds = []
    cache, build = _cache_with_entry(tmp_path, builds)
    with caplog.at_level(logging.WARNING, logger="robprune"):
        result = cache.get("train", "k", build)
    assert not result.reused and len(builds) == 1
    assert "no manifest" in caplog.text and len(list(old.parent.glob("k.corrupt-*"))) == 1


def test_manifest_stage_json_and_record(tmp_path):
    builds = []
    cache, build = _cache_with_entry(tmp_path, builds)
    meta = {"inputs": {"train": "abc"}, "device": "cpu", "config": {"epochs": 1}}
    built = cache.get("prune", "k", build, meta=meta)
    manifest = json.loads((built.path / DONE).read_text())
    assert set(manifest["files"]) == {"model.safetensors", "sub/model.json", STAGE_JSON}
    assert manifest["files"]["model.safetensors"]["size"] == 2048
    stage = json.loads((built.path / STAGE_JSON).read_text())
    assert stage["device"] == "cpu" and stage["name"] == "prune" and "built_at" in stage and "seconds" in stage
    reused = cache.get("prune", "k", build, meta=meta)
    assert reused.meta == stage and reused.record()["inputs"] == {"train": "abc"}
    assert set(reused.record()) >= {"key", "reused", "seconds", "path", "device", "inputs"}
    assert (reused.path / ".last_used").exists()


def test_truncated_cache_model_leaves_finished_runs_intact_and_is_rebuilt(tmp_path, caplog):
    """The measured failure: truncating one cached model.safetensors damaged every finished run that
    hard-linked it, and the next run failed with the wrong advice. Now runs hold copies, and the
    damaged entry is moved aside and rebuilt with the same numbers."""
    import hashlib

    from robprune.checkpoint import load_checkpoint
    from robprune.compose import compose
    from robprune.pipeline import run
    from tests.helpers import SHRINK, stable

    cfg = compose([*SHRINK, "train.epochs=1", f"cache_dir={tmp_path / 'cache'}"])
    first = run(cfg, tmp_path / "a")
    second = run(cfg, tmp_path / "b")
    assert all(s["reused"] for s in second["stages"].values())
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    published = {d: digest(tmp_path / d / "model.safetensors") for d in ("a", "b")}
    cached = Path(first["stages"]["finetune"]["path"]) / "model.safetensors"
    with open(cached, "r+b") as fh:
        fh.truncate(100)
    assert {d: digest(tmp_path / d / "model.safetensors") for d in ("a", "b")} == published
    load_checkpoint(tmp_path / "a")                                        # the finished runs still load
    with caplog.at_level(logging.WARNING, logger="robprune"):
        third = run(cfg, tmp_path / "c")
    warnings = [r.getMessage() for r in caplog.records if "failed verification" in r.getMessage()]
    assert len(warnings) == 1 and "finetune/" in warnings[0]
    assert not third["stages"]["finetune"]["reused"] and third["stages"]["train"]["reused"]
    assert list((tmp_path / "cache" / "finetune").glob("*.corrupt-*"))
    assert stable(third) == stable(first)
    assert digest(tmp_path / "c" / "model.safetensors") == published["a"]


# --- the cache lock: portable (O_EXCL file + heartbeat), dead holders taken over ---------------------------

def _hold_then_die(path, ready):
    from robprune.store import file_lock

    with file_lock(Path(path)):
        ready.set()
        time.sleep(60)  # SIGKILLed here: no release, the lock file stays


def test_lock_of_a_killed_job_on_this_host_is_taken_over(tmp_path, caplog):
    from robprune.store import file_lock

    lock = tmp_path / "train" / "k.lock"
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_then_die, args=(lock, ready))
    proc.start()
    assert ready.wait(30)
    os.kill(proc.pid, 9)
    proc.join(30)
    assert lock.exists() and json.loads(lock.read_text())["pid"] == proc.pid
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="robprune"), file_lock(lock):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert time.monotonic() - started < 5 and "is gone" in caplog.text
    assert not lock.exists()  # released


def test_lock_of_another_host_is_honoured_while_its_heartbeat_is_fresh(tmp_path, caplog):
    from robprune.store import LOCK_STALE_S, try_lock

    lock = tmp_path / "k.lock"
    lock.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "token": "t", "since": 0}))
    with try_lock(lock) as held:
        assert not held and lock.exists()  # pid 1 there is not ours to check: only the heartbeat tells
    old = time.time() - LOCK_STALE_S - 10
    os.utime(lock, (old, old))
    with caplog.at_level(logging.WARNING, logger="robprune"), try_lock(lock) as held:
        assert held and json.loads(lock.read_text())["host"] != "node-elsewhere"
    assert "no heartbeat from node-elsewhere" in caplog.text and not lock.exists()


def test_empty_lock_file_of_an_old_version_is_taken_over(tmp_path):
    from robprune.store import try_lock

    lock = tmp_path / "k.lock"
    lock.touch()
    with try_lock(lock) as held:
        assert not held  # a fresh empty file may be an owner record being written
    os.utime(lock, (time.time() - 60, time.time() - 60))
    with try_lock(lock) as held:
        assert held


def _hold(path, seconds, ready):
    from robprune.store import file_lock

    with file_lock(Path(path)):
        ready.set()
        time.sleep(seconds)


def test_heartbeat_keeps_a_long_build_alive_on_a_shared_filesystem(tmp_path, monkeypatch):
    """Another node sees only the lock file: the holder's heartbeat must keep its mtime fresh."""
    import robprune.store as store

    monkeypatch.setattr(store, "LOCK_STALE_S", 0.6)
    monkeypatch.setattr(store, "HEARTBEAT_S", 0.05)
    lock = tmp_path / "k.lock"
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold, args=(lock, 2.0, ready))
    proc.start()
    assert ready.wait(30)
    monkeypatch.setattr(store, "HOST", "node-elsewhere")  # this process now looks like another node
    time.sleep(1.0)  # longer than LOCK_STALE_S: only the heartbeat keeps it
    with store.try_lock(lock) as held:
        assert not held
    proc.join(30)
    with store.try_lock(lock) as held:
        assert held  # released normally


def test_takeover_guard_left_by_a_killed_job_is_cleared(tmp_path):
    """A job killed between creating the .takeover guard and removing it must not block takeovers forever."""
    from robprune.store import LOCK_STALE_S, TAKEOVER_STALE_S, try_lock

    lock = tmp_path / "k.lock"
    lock.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "token": "t", "since": 0}))
    old = time.time() - LOCK_STALE_S - 10
    os.utime(lock, (old, old))
    guard = tmp_path / "k.lock.takeover"
    guard.touch()
    with try_lock(lock) as held:
        assert not held and guard.exists()  # a fresh guard: another job is taking over right now
    os.utime(guard, (time.time() - TAKEOVER_STALE_S - 5,) * 2)
    with try_lock(lock) as held:
        assert not held and not guard.exists()  # the dead guard is cleared ...
    with try_lock(lock) as held:
        assert held  # ... and the next attempt takes the dead lock over
