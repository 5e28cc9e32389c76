"""Finished results, written and read back: one helper per file the runner writes, with errors naming the file.

A run's ``metrics.json`` carries ``integrity``: the sha256 of its own content (every other key) and of
the ``config.yaml`` beside it, both written before it, so a flipped digit that still parses as JSON, an
edited or swapped file is refused in one line instead of read as a result. Files written before the
record existed are read unchecked."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from robprune.errors import DataError
from robprune.io import as_json, atomic_write_json, json_digest

METRICS_FILE, CONFIG_FILE = "metrics.json", "config.yaml"
INTEGRITY = "integrity"  # metrics.json's key: {"config.yaml": the file's sha256, "sha256": digest of everything else}
FIX = "re-run that run, or delete its directory"


def write_metrics(run_dir: str | Path, metrics: dict) -> Path:
    """``run_dir/metrics.json`` (atomically) with its integrity record; write config.yaml first."""
    run_dir = Path(run_dir)
    plain = as_json(metrics)  # what read_metrics gets back
    record = {}
    if (run_dir / CONFIG_FILE).is_file():
        record[CONFIG_FILE] = hashlib.sha256((run_dir / CONFIG_FILE).read_bytes()).hexdigest()
    record["sha256"] = _digest(plain, record)
    return atomic_write_json(run_dir / METRICS_FILE, {**plain, INTEGRITY: record})


def read_metrics(path: str | Path) -> dict:
    """The metrics dict of a run's ``metrics.json``, without its integrity record. Raises DataError naming
    the file (and the fix) when it cannot be read, is not UTF-8 JSON (random bytes, truncated), holds no
    JSON object, or does not match its record: its own content, or the run's config.yaml (damaged,
    edited, missing, or another run's)."""
    path = Path(path)
    try:
        metrics = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise DataError(f"{path}: cannot read metrics.json ({err.strerror or err}); check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else f"invalid JSON: {err.msg} at line {err.lineno}"
        raise DataError(f"{path}: not a valid metrics.json ({reason}); delete it or re-run that run") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: not a valid metrics.json (a JSON {type(metrics).__name__}, not an object); "
                        "delete it or re-run that run")
    if INTEGRITY in metrics:
        _check_integrity(path, metrics.pop(INTEGRITY), metrics)
    return metrics


def load_run_config(run_dir: str | Path):
    """The resolved config a run saved (``run_dir/config.yaml``, an OmegaConf DictConfig), after checking it
    against the digest its metrics.json recorded (when the run finished). DataError, one line, when it is
    damaged, another run's, or not YAML."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    run_dir = Path(run_dir)
    if (run_dir / METRICS_FILE).is_file():
        read_metrics(run_dir / METRICS_FILE)
    try:
        return OmegaConf.load(run_dir / CONFIG_FILE)
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{run_dir / CONFIG_FILE}: not a valid run config ({reason}); {FIX}") from None


def _digest(metrics: dict, record: dict) -> str:
    """The sha256 of the metrics and of the config digest recorded beside them (a flip inside that digest is
    metrics.json's damage, and is named so)."""
    return json_digest({**metrics, INTEGRITY: {k: v for k, v in record.items() if k != "sha256"}})


def _check_integrity(path: Path, record, metrics: dict) -> None:
    if not isinstance(record, dict) or record.get("sha256") != _digest(metrics, record):
        raise DataError(f"{path}: its content does not match its integrity sha256 (damaged or edited since the run "
                        f"wrote it); {FIX}")
    if CONFIG_FILE not in record:
        return
    config = path.with_name(CONFIG_FILE)
    try:
        digest = hashlib.sha256(config.read_bytes()).hexdigest()
    except OSError as err:
        raise DataError(f"{config}: cannot read the run's config ({err.strerror or err}), which its metrics.json "
                        f"recorded; {FIX}") from None
    if digest != record[CONFIG_FILE]:
        raise DataError(f"{config}: does not match the sha256 its run's metrics.json recorded (damaged, edited, or "
                        f"another run's config); {FIX}")

