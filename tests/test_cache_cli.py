"""``robprune cache list | verify | clean`` on a real cache folder, in-process through robprune.cli.main."""
import os
import subprocess
import sys
import time

import pytest

from robprune.cache_cli import parse_age
from robprune.cli import main
from robprune.errors import ConfigError
from robprune.store import StageCache, file_lock


def _fill(root):
    """A cache with train/t1 (from cpu), prune/p1 (input t1), a dataset file; returns the cache."""
    cache = StageCache(root, enabled=True, scratch=root.parent / "scratch")
    cache.get("train", "t1", lambda w: (w / "model.safetensors").write_bytes(b"m" * 5000),
              meta={"device": "cpu", "inputs": {}})
    cache.get("prune", "p1", lambda w: (w / "model.safetensors").write_bytes(b"p" * 3000),
              meta={"device": "cpu", "inputs": {"train": "t1"}})
    (root / "datasets").mkdir()
    (root / "datasets" / "mnist-train-abcd.safetensors").write_bytes(b"d" * 100)
    return cache


def _age(path, seconds):
    """Pretend ``path`` (an entry) was last used ``seconds`` ago."""
    stamp = time.time() - seconds
    for name in (".last_used", ".done"):
        if (path / name).exists():
            os.utime(path / name, (stamp, stamp))


def test_list_shows_stages_keys_partials_and_datasets(tmp_path, capsys):
    root = tmp_path / "cache"
    _fill(root)
    (root / "train" / "t2.partial").mkdir()
    assert main(["cache", "list", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr().out
    for word in ("train", "prune", "t1", "p1", "t2", "partial", "datasets", "cpu", "train:t1"):
        assert word in out
    assert main(["cache", "list", "--cache-dir", str(root), "--stage", "prune"]) == 0
    out = capsys.readouterr().out
    assert "p1" in out and "t1 " not in out.replace("train:t1", "")


def test_list_of_a_missing_cache(tmp_path, capsys):
    assert main(["cache", "list", "--cache-dir", str(tmp_path / "nope")]) == 0
    assert f"no cache at {tmp_path / 'nope'}" in capsys.readouterr().out


def test_verify_exit_codes_and_moves_corrupt_aside(tmp_path, capsys):
    root = tmp_path / "cache"
    _fill(root)
    assert main(["cache", "verify", "--cache-dir", str(root)]) == 0
    assert "2 entries checked, 0 corrupt" in capsys.readouterr().out
    with open(root / "train" / "t1" / "model.safetensors", "r+b") as fh:
        fh.truncate(10)
    assert main(["cache", "verify", "--cache-dir", str(root)]) == 1
    out = capsys.readouterr().out
    assert out.count("corrupt: ") == 1 and "train/t1" in out and "moved to" in out
    assert not (root / "train" / "t1").exists() and len(list((root / "train").glob("t1.corrupt-*"))) == 1
    assert (root / "datasets" / "mnist-train-abcd.safetensors").exists()
    assert main(["cache", "verify", "--cache-dir", str(root)]) == 0  # set aside: nothing corrupt left in place


@pytest.mark.parametrize("text, seconds", [("30d", 30 * 86400), ("12h", 43200), ("5m", 300), ("90s", 90), ("1.5d", 129600)])
def test_parse_age(text, seconds):
    assert parse_age(text) == seconds


def test_bad_older_than_is_one_line_naming_the_flag(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--older-than.*30x.*e.g. --older-than 30d"):
        parse_age("30x")
    assert main(["cache", "clean", "--cache-dir", str(tmp_path), "--older-than", "30x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ConfigError: --older-than") and "\n" not in err


def test_clean_removes_partial_only_when_its_lock_is_free(tmp_path, capsys):
    root = tmp_path / "cache"
    _fill(root)
    partial = root / "train" / "t2.partial"
    (partial / "epochs").mkdir(parents=True)
    corrupt = root / "train" / "t0.corrupt-20240101-000000"
    corrupt.mkdir()
    with file_lock(root / "train" / "t2.lock"):  # a live job (this process) holds it
        assert main(["cache", "clean", "--cache-dir", str(root)]) == 0
        assert partial.exists() and not corrupt.exists()
        assert "kept" in capsys.readouterr().out
        assert main(["cache", "clean", "--cache-dir", str(root), "--dry-run"]) == 0
        assert "would keep" in capsys.readouterr().out
    assert main(["cache", "clean", "--cache-dir", str(root), "--dry-run"]) == 0
    assert "would remove" in capsys.readouterr().out and partial.exists()
    assert main(["cache", "clean", "--cache-dir", str(root)]) == 0
    assert not partial.exists() and (root / "train" / "t1").exists() and (root / "datasets").exists()


def test_clean_older_than_removes_entries_unused_that_long(tmp_path, capsys):
    root = tmp_path / "cache"
    cache = _fill(root)
    _age(root / "train" / "t1", 40 * 86400)
    _age(root / "prune" / "p1", 40 * 86400)
    cache.get("prune", "p1", lambda w: None)  # reused now: its last use is fresh again
    assert main(["cache", "clean", "--cache-dir", str(root), "--older-than", "30d", "--dry-run"]) == 0
    assert "train/t1" in capsys.readouterr().out and (root / "train" / "t1").exists()
    assert main(["cache", "clean", "--cache-dir", str(root), "--older-than", "30d"]) == 0
    assert not (root / "train" / "t1").exists() and (root / "prune" / "p1").exists()
    assert (root / "datasets" / "mnist-train-abcd.safetensors").exists()


def test_clean_older_than_skips_an_entry_whose_lock_is_held(tmp_path, capsys):
    root = tmp_path / "cache"
    _fill(root)
    _age(root / "train" / "t1", 40 * 86400)
    with file_lock(root / "train" / "t1.lock"):
        assert main(["cache", "clean", "--cache-dir", str(root), "--older-than", "30d"]) == 0
    assert (root / "train" / "t1").exists()


def test_cache_command_as_a_subprocess_uses_robprune_cache_env(tmp_path):
    root = tmp_path / "cache"
    _fill(root)
    env = {**os.environ, "ROBPRUNE_CACHE": str(root)}
    res = subprocess.run([sys.executable, "-m", "robprune.cli", "cache", "list"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "t1" in res.stdout and "p1" in res.stdout, res.stderr
