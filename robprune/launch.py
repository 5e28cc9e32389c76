"""Jobs side by side: how many CPU threads one job of a sweep may use under Hydra's launchers.

Hydra's joblib launcher runs ``n_jobs`` jobs at once on this machine, each in its own process; the
submitit launcher runs each job as a Slurm task (or a local process) with ``cpus_per_task`` CPUs.
torch would give every job all the machine's cores, so N jobs would fight over them (N × cores
threads). :func:`job_threads` picks the threads of one job so that jobs × threads ≤ cores, and says
so when it changes what the config asked for.
"""
from __future__ import annotations

import os

JOBLIB = "JoblibLauncher"
SUBMITIT = ("SlurmLauncher", "LocalLauncher")


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask: what Slurm or taskset granted), else cpu_count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parallel_jobs(launcher: dict, cores: int) -> int | None:
    """Jobs the launcher runs at once on this machine: joblib's n_jobs (−1 = all cores, −2 = all but one,
    as joblib counts); None for a launcher whose jobs do not share this machine's cores with each other
    (the basic one runs them one after another; submitit gives each its own allocation)."""
    target = str(launcher.get("_target_", ""))
    if not target.endswith(JOBLIB):
        return None
    n_jobs = int(launcher.get("n_jobs") or -1)
    return max(1, n_jobs if n_jobs > 0 else cores + 1 + n_jobs)


def job_threads(threads: int | None, launcher: dict, cores: int) -> tuple[int | None, str | None]:
    """(torch threads for one job, a note for the log or None).

    joblib: unset threads become cores // jobs; threads with jobs × threads > cores are clamped to
    cores // jobs (at least 1), with a note. submitit: unset threads become the job's cpus_per_task when
    the launcher sets it. Otherwise threads as given (None: torch's default).
    """
    target = str(launcher.get("_target_", ""))
    jobs = parallel_jobs(launcher, cores)
    if jobs is not None:
        fair = max(1, cores // jobs)
        if threads is None:
            return fair, None
        if jobs * int(threads) > cores:
            return fair, (f"threads={threads} × hydra.launcher.n_jobs={jobs} jobs exceeds the {cores} cores; "
                          f"using threads={fair} per job (set threads ≤ {fair}, or fewer jobs)")
        return int(threads), None
    if threads is None and target.endswith(SUBMITIT) and launcher.get("cpus_per_task"):
        return int(launcher["cpus_per_task"]), None
    return threads, None
