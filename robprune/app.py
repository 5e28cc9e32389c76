"""The Hydra application behind ``robprune run``: one job = one :func:`robprune.pipeline.run`."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from robprune.config import config_dir
from robprune.declarations import store_declarations
from robprune.errors import ConfigError, RobpruneError
from robprune.summary import print_summary

log = logging.getLogger("robprune")
store_declarations()  # before Hydra composes, here and in a launcher's worker processes (they import this module)


def job(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and "@" not in k and v is not None}
    logging.getLogger("robprune").setLevel(logging.INFO)
    if cfg.quiet:  # the console shows errors only; run.log keeps every line
        for handler in logging.getLogger().handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)
    from robprune.compose import fit_experiment
    from robprune.pipeline import run

    threads_for_launcher(cfg, hc)
    try:
        notes = fit_experiment(cfg, list(hc.overrides.task))  # an experiment's keys for an option swapped out
        for note in notes:
            log.warning(note)
        metrics = run(cfg, run_dir, choices=choices, warnings=notes)
    except RobpruneError as err:
        log_to_file_only(err)
        print(str(err), file=sys.stderr)  # the one line the user sees
        sys.exit(2)
    if cfg.quiet:
        print(run_dir)
    else:
        print_summary(metrics, title=f"robprune run → {run_dir}")
    return metrics.get("robust_acc/worst", metrics.get("clean_acc"))


def threads_for_launcher(cfg: DictConfig, hc) -> None:
    """Set cfg.threads so that the jobs a launcher runs side by side share the cores (robprune.launch);
    the run's config.yaml records what the job used."""
    from omegaconf import OmegaConf, open_dict

    from robprune.launch import available_cores, job_threads

    launcher = OmegaConf.to_container(hc.launcher, resolve=False) if hc.get("launcher") is not None else {}
    threads, note = job_threads(cfg.get("threads"), launcher, available_cores())
    if note:
        log.warning(note)
    if threads != cfg.get("threads"):
        with open_dict(cfg):
            cfg.threads = threads


def log_to_file_only(err: Exception) -> None:
    """Record a user error in run.log without a second copy of it on the console."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (err,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def hydra_main() -> None:
    refuse_finished_dirs(sys.argv[1:])
    hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(job)()


def refuse_finished_dirs(args: list[str]) -> None:
    """ConfigError before Hydra writes anything (``.hydra/``, ``run.log``) when the run directory (or,
    with -m, the sweep directory) already holds a finished run: a later run never touches its bytes."""
    from hydra import compose, initialize_config_dir

    from robprune.compose import expand_overrides, overrides_of

    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = expand_overrides(overrides_of(args))[0]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        hc = compose("config", overrides=overrides, return_hydra_config=True).hydra
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = Path(str(hc.sweep.dir if multirun else hc.run.dir))
    finished = sorted(folder.glob("*/metrics.json" if multirun else "metrics.json")) if folder.is_dir() else []
    if finished:
        raise ConfigError(f"{folder} already holds a finished run ({finished[0]}), which a later run never "
                          f"overwrites; choose another directory, e.g. {key}={folder}-2, or leave {key} out "
                          "for a new timestamped one")
