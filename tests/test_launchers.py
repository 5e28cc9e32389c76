"""Hydra's launcher plugins run robprune sweeps: joblib (jobs side by side on this machine) and submitit
(Slurm; tested with submitit's local executor), both sharing one stage cache."""
from __future__ import annotations

import json

import pytest
import yaml

from robprune.launch import available_cores, job_threads, parallel_jobs
from tests.helpers import SHRINK, read_metrics, robprune, stable

JOBLIB = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}
SLURM = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": 8}
BASIC = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}
TINY = [*SHRINK, "train.epochs=1", "model.width=4", "model.hidden=16"]


@pytest.mark.parametrize("threads, launcher, cores, expected, note", [
    (None, JOBLIB, 2, 1, None),                      # unset: cores // jobs
    (None, JOBLIB, 16, 8, None),
    (2, JOBLIB, 2, 1, "exceeds the 2 cores"),        # 2 jobs × 2 threads on 2 cores: clamped, said so
    (1, JOBLIB, 2, 1, None),
    (None, {**JOBLIB, "n_jobs": -1}, 4, 1, None),    # joblib's -1: one job per core
    (None, {**JOBLIB, "n_jobs": 8}, 2, 1, None),     # more jobs than cores: still one thread each
    (None, SLURM, 64, 8, None),                      # a Slurm job uses the CPUs it asked for
    (3, SLURM, 64, 3, None),
    (None, BASIC, 2, None, None),                    # one job at a time: torch's default
    (2, BASIC, 2, 2, None),
])
def test_job_threads(threads, launcher, cores, expected, note):
    got, message = job_threads(threads, launcher, cores)
    assert got == expected
    assert (message is None) if note is None else (note in message)


def test_parallel_jobs_counts_as_joblib_does():
    assert parallel_jobs({**JOBLIB, "n_jobs": -2}, 8) == 7 and parallel_jobs(BASIC, 8) is None
    assert available_cores() >= 1


def _runs(sweep):
    return [read_metrics(p.parent) for p in sorted(sweep.glob("*/metrics.json"))]


def test_joblib_launcher_two_jobs_share_the_cache_and_match_a_sequential_run(tmp_path):
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    res = robprune(["run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY,
                    "prune.channel_ratio=0.3,0.5", f"cache_dir={cache}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "validated against ConfigStore" not in res.stderr
    runs = _runs(sweep)
    assert len(runs) == 2
    assert sorted(m["stages"]["train"]["reused"] for m in runs) == [False, True]  # the dense model built once
    threads = max(1, available_cores() // 2)
    for folder in sorted(sweep.glob("[0-9]*")):
        assert yaml.safe_load((folder / "config.yaml").read_text())["threads"] == threads
    # the same job run alone, in its own cache, with the threads the parallel job had: the same metrics
    ref = robprune(["run", *TINY, "prune.channel_ratio=0.5", f"threads={threads}", f"cache_dir={tmp_path / 'ref_cache'}",
                    f"hydra.run.dir={tmp_path / 'ref'}"], cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]
    parallel = [m for m in runs if m["channel_ratio"] == 0.5][0]
    assert stable(parallel) == stable(read_metrics(tmp_path / "ref"))


def test_submitit_local_launcher_two_jobs_share_the_cache(tmp_path):
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    res = robprune(["run", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *TINY,
                    "prune.channel_ratio=0.3,0.5", f"cache_dir={cache}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    runs = _runs(sweep)
    assert len(runs) == 2 and sorted(m["stages"]["train"]["reused"] for m in runs) == [False, True]
    assert sorted(m["channel_ratio"] for m in runs) == [0.3, 0.5]
    logs = list((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2  # each job ran as its own submitit process
    assert not list(cache.glob("*/*.lock"))  # every lock released


def test_unknown_launcher_is_one_line_before_work(tmp_path):
    res = robprune(["run", "-m", "hydra/launcher=torque", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert res.returncode == 2
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "hydra/launcher=torque" in line and "joblib" in line and "slurm" in line
    assert not (tmp_path / "sweep").exists()


def test_slurm_launcher_config_composes_with_the_plugins_schema():
    from hydra import compose, initialize_config_dir

    from robprune.config import config_dir
    from robprune.declarations import store_declarations

    store_declarations()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        hc = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                     return_hydra_config=True).hydra
    launcher = hc.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.cpus_per_task == 8 and launcher.gpus_per_node == 1 and launcher.array_parallelism == 64
    assert json.loads(json.dumps(dict(launcher.additional_parameters))) == {}
