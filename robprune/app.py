"""The Hydra application behind ``robprune run``: one job = one :func:`robprune.pipeline.run`."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from robprune.config import config_dir
from robprune.errors import RobpruneError
from robprune.summary import print_summary

log = logging.getLogger("robprune")


def job(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and "@" not in k and v is not None}
    logging.getLogger("robprune").setLevel(logging.INFO)
    from robprune.pipeline import run

    try:
        metrics = run(cfg, run_dir, choices=choices)
    except RobpruneError as err:
        log.error("%s", err)
        print(str(err), file=sys.stderr)
        sys.exit(2)
    if not cfg.quiet:
        print_summary(metrics, title=f"robprune run → {run_dir}")
    return metrics.get("robust_acc/worst", metrics.get("clean_acc"))


def hydra_main() -> None:
    hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(job)()
