"""Training curves of a run for TensorBoard (and MLflow with ``logger=mlflow``), written when it finishes,
and for TensorBoard also while it trains (:class:`LiveCurves`).

Every training stage keeps its per-epoch log in its checkpoint's ``model.json`` (``train_log``,
``finetune_log``, ``prune_train_log``: epoch, loss, lr, seconds), so curves come from the stage
results — a stage reused from the cache contributes its curve too — and are written to
``<run dir>/tensorboard/<stage>/`` once the run has finished (built in a temporary folder and renamed,
as every result file). ``tensorboard --logdir outputs/sweeps/<time>`` then shows every run of a sweep.
While a stage trains, :class:`LiveCurves` adds each epoch's scalars to the same folders as the epoch
ends, so a long job can be watched; the finished run's complete set replaces them.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from robprune.errors import ConfigError

log = logging.getLogger("robprune")

# stage name -> the key of its own per-epoch log in its model.json (a derived stage also carries its
# upstream's logs; only its own is its curve). Ingredient stages (ingredient_<name>) log as train does.
STAGE_LOGS = {"train": "train_log", "prune_train": "prune_train_log", "finetune": "finetune_log"}
SCALARS = ("loss", "lr", "seconds")


def log_key(stage: str) -> str | None:
    """The model.json key of a stage's own per-epoch log; None for a stage without a curve."""
    return STAGE_LOGS.get(stage, "train_log" if stage.startswith("ingredient_") else None)


class LiveCurves:
    """``(stage, row)`` -> the row's scalars in ``<folder>/<stage>/`` at once (flushed), for stages that
    have a curve (:func:`log_key`). :meth:`close` before :func:`write_curves` replaces the folder."""

    def __init__(self, folder: Path):
        self.folder, self.writers = Path(folder), {}

    def __call__(self, stage: str, row: dict) -> None:
        if log_key(stage) is None:
            return
        if stage not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            self.writers[stage] = SummaryWriter(log_dir=str(self.folder / stage))
        writer = self.writers[stage]
        for scalar in SCALARS:
            if row.get(scalar) is not None:
                writer.add_scalar(scalar, float(row[scalar]), int(row["epoch"]))
        writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


def live_curves(node: DictConfig | None, run_dir: Path) -> LiveCurves | None:
    """A :class:`LiveCurves` into ``<run dir>/tensorboard`` when the logger asks for TensorBoard."""
    return LiveCurves(Path(run_dir) / "tensorboard") if node is not None and node.get("tensorboard") else None


def stage_curves(results: dict) -> dict[str, list[dict]]:
    """{stage name: per-epoch rows} for every training stage of a run (from :class:`StageResult` paths)."""
    curves = {}
    for name, result in results.items():
        key = log_key(name)
        path = Path(result.path) / "model.json"
        if key is None or not path.is_file():
            continue
        rows = json.loads(path.read_text()).get(key) or []
        if rows:
            curves[name] = rows
    return curves


def check_logger(node: DictConfig | None) -> None:
    """ConfigError before any stage when the logger asks for a package that is missing."""
    if node is None or node.get("mlflow") is None:
        return
    for key in ("tracking_uri", "experiment"):
        if not isinstance(node.mlflow.get(key), str) or not node.mlflow.get(key):
            raise ConfigError(f"logger.mlflow.{key} must be a non-empty string, got {node.mlflow.get(key)!r}; "
                              f"e.g. logger.mlflow.{key}={'outputs/mlruns' if key == 'tracking_uri' else 'robprune'}")
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("logger=mlflow needs the mlflow package: pip install mlflow (or mlflow-skinny), "
                          "or drop logger=mlflow") from None


def write_curves(node: DictConfig | None, results: dict, run_dir: Path) -> dict[str, list[dict]]:
    """TensorBoard event files of the run's curves when the logger node asks; returns the curves."""
    curves = stage_curves(results) if node is not None else {}
    if node is not None and node.get("tensorboard") and curves:
        write_tensorboard(curves, Path(run_dir) / "tensorboard")
    return curves


def report_to_mlflow(node: DictConfig | None, curves: dict, run_dir: Path, cfg: DictConfig, metrics: dict) -> None:
    """Log the finished run to MLflow when the logger node asks. Called after metrics.json is written; a
    tracking server that fails costs a warning, never the run's results."""
    if node is None or node.get("mlflow") is None:
        return
    try:
        log_mlflow(node.mlflow, curves, run_dir, cfg, metrics)
    except Exception as err:  # noqa: BLE001  (any MLflow or network failure: the results are on disk)
        log.warning("MLflow logging to %s failed (%s: %s); the run's results are in %s",
                    node.mlflow.tracking_uri, type(err).__name__, str(err).splitlines()[0][:200], run_dir)


def write_tensorboard(curves: dict[str, list[dict]], folder: Path) -> Path:
    """TensorBoard event files, one folder per stage, scalars ``loss``, ``lr``, ``seconds`` per epoch."""
    from torch.utils.tensorboard import SummaryWriter

    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=".tensorboard-", dir=folder.parent))
    try:
        for stage, rows in curves.items():
            writer = SummaryWriter(log_dir=str(tmp / stage))
            try:
                for row in rows:
                    for scalar in SCALARS:
                        if scalar in row and row[scalar] is not None:
                            writer.add_scalar(scalar, float(row[scalar]), int(row["epoch"]))
            finally:
                writer.close()
        if folder.exists():  # a resumed run that had written its curves before failing at the very end
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def log_mlflow(node: DictConfig, curves: dict[str, list[dict]], run_dir: Path, cfg: DictConfig, metrics: dict) -> None:
    """One MLflow run per robprune run: the flattened config as params, numeric metrics, per-epoch curves
    as ``<stage>.<scalar>`` with the epoch as step, and the run directory's path as a tag. Metric names
    use ``.`` where metrics.json uses ``/`` (``robust_acc.pgd20``): MLflow's file store makes a ``/``
    a folder, which clashes with a metric of the prefix's name (``clean_acc`` and ``clean_acc/pgd20``)."""
    import os

    uri = str(node.tracking_uri)
    if "://" not in uri or uri.startswith("file:"):
        # MLflow 3 refuses its file store unless asked (it prefers a database server); a local folder is
        # what a single user wants by default, and `mlflow ui --backend-store-uri <folder>` reads it
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = Path(uri.removeprefix("file:")).resolve().as_uri()
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(str(node.experiment))
    params = _flatten(OmegaConf.to_container(cfg, resolve=True))
    numbers = {k: float(v) for k, v in _flatten(metrics).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
    with mlflow.start_run(run_name=Path(run_dir).name):
        mlflow.set_tag("robprune.run_dir", str(Path(run_dir).resolve()))
        items = sorted(params.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call, values ≤ 6000 chars
            mlflow.log_params({k: str(v)[:6000] for k, v in items[i:i + 100]})
        mlflow.log_metrics({_metric_name(k): v for k, v in numbers.items()})
        for stage, rows in curves.items():
            for row in rows:
                mlflow.log_metrics({f"{stage}.{s}": float(row[s]) for s in SCALARS if row.get(s) is not None},
                                   step=int(row["epoch"]))


def _metric_name(key: str) -> str:
    """metrics.json's ``/`` becomes ``.``; MLflow allows letters, digits, _ - . space :; others become _."""
    return "".join(c if c.isalnum() or c in "_-. :" else "." if c == "/" else "_" for c in key)


def _flatten(node, prefix: str = "") -> dict:
    out = {}
    if isinstance(node, dict):
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    out[prefix[:-1]] = json.dumps(node) if isinstance(node, list) else node
    return out
