"""Training curves of a run for TensorBoard and MLflow (``logger=mlflow``), written while it trains
(:class:`LiveCurves`) and completed when it finishes.

Every training stage keeps its per-epoch log in its checkpoint's ``model.json`` (``train_log``,
``finetune_log``, ``prune_train_log``: epoch, loss, lr, seconds), so curves come from the stage
results — a stage reused from the cache contributes its curve too — and are written to
``<run dir>/tensorboard/<stage>/`` once the run has finished (built in a temporary folder and renamed,
as every result file). ``tensorboard --logdir outputs/sweeps/<time>`` then shows every run of a sweep.
While a stage trains, :class:`LiveCurves` adds each epoch's scalars to the same folders as the epoch
ends, so a long job can be watched; the finished run's complete set replaces them.

MLflow gets one run per job (:class:`MlflowRun`), opened when the job starts: epoch rows go to it as
they come, and the end of the job adds the params, the final metrics and the rows it has not logged yet
(stages reused from the cache), so each curve is logged once. MLflow failing costs a warning, never
the job.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
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
    """``(stage, row)`` -> the row's scalars in ``<folder>/<stage>/`` at once (flushed) when ``folder`` is
    given, and into the job's :class:`MlflowRun` when ``mlflow`` is, for stages that have a curve
    (:func:`log_key`). :meth:`close` before :func:`write_curves` replaces the folder. As a context around
    the job it also ends the MLflow run as FAILED (KILLED on Ctrl-C) when the job raises."""

    def __init__(self, folder: Path | None, mlflow: MlflowRun | None = None):
        self.folder, self.writers, self.mlflow = Path(folder) if folder else None, {}, mlflow

    def __call__(self, stage: str, row: dict) -> None:
        if log_key(stage) is None:
            return
        if self.mlflow is not None:
            self.mlflow.live(stage, row)
        if self.folder is None:
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

    def __enter__(self) -> LiveCurves:
        return self

    def __exit__(self, kind, err, tb) -> None:
        self.close()
        if self.mlflow is not None and kind is not None:
            self.mlflow.end("KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")


def live_curves(node: DictConfig | None, run_dir: Path) -> LiveCurves | None:
    """A :class:`LiveCurves` into ``<run dir>/tensorboard`` when the logger asks for TensorBoard, and into
    an MLflow run opened now when it asks for MLflow; None when it asks for neither."""
    if node is None or not (node.get("tensorboard") or node.get("mlflow") is not None):
        return None
    mlflow = MlflowRun(node.mlflow, run_dir) if node.get("mlflow") is not None else None
    if mlflow is not None:
        mlflow.start()
    return LiveCurves(Path(run_dir) / "tensorboard" if node.get("tensorboard") else None, mlflow)


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


def report_to_mlflow(node: DictConfig | None, curves: dict, run_dir: Path, cfg: DictConfig, metrics: dict,
                     run: MlflowRun | None = None) -> None:
    """Log the finished run to MLflow when the logger node asks: into ``run`` (the job's, opened by
    :func:`live_curves`) or a new one. Called after metrics.json is written; a tracking server that fails
    costs a warning, never the run's results."""
    if node is None or node.get("mlflow") is None:
        return
    run = run if run is not None else MlflowRun(node.mlflow, run_dir)
    try:
        run.finish(curves, cfg, metrics)
    except Exception as err:  # noqa: BLE001  (any MLflow or network failure: the results are on disk)
        log.warning("MLflow logging to %s failed (%s); the run's results are in %s",
                    node.mlflow.tracking_uri, _reason(err), run_dir)
        run.end("FAILED")  # an MLflow run left half-logged is not shown as still running


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


class MlflowRun:
    """One MLflow run per robprune job. :meth:`start` opens it, :meth:`live` logs an epoch row as the epoch
    ends, :meth:`finish` adds the flattened config as params, the numeric metrics, the curves' rows not
    logged yet, and ends it. Curves are ``<stage>.<scalar>`` with the epoch as step; metric names use ``.``
    where metrics.json uses ``/`` (``robust_acc.pgd20``): MLflow's file store makes a ``/`` a folder, which
    clashes with a metric of the prefix's name (``clean_acc`` and ``clean_acc/pgd20``). Live logging that
    fails warns once and stops; :meth:`finish` tries again (and its caller warns if that fails too)."""

    def __init__(self, node: DictConfig, run_dir: Path):
        self.node, self.run_dir = node, Path(run_dir)
        self.client, self.run_id, self.live_failed, self.ended = None, None, False, False
        self.logged: set[tuple[str, int]] = set()  # (stage, epoch) rows in the run already

    def start(self) -> None:
        self._live(self._open)

    def live(self, stage: str, row: dict) -> None:
        self._live(lambda: self._log_rows(stage, [row]))

    def finish(self, curves: dict[str, list[dict]], cfg: DictConfig, metrics: dict) -> None:
        from mlflow.entities import Metric, Param

        self._open()
        now = _now_ms()
        items = sorted(_flatten(OmegaConf.to_container(cfg, resolve=True)).items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call, values ≤ 6000 chars
            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in items[i:i + 100]])
        numbers = [Metric(_metric_name(k), float(v), now, 0) for k, v in _flatten(metrics).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
        self._log(numbers)
        for stage, rows in curves.items():
            self._log_rows(stage, rows)
        self.end("FINISHED")

    def end(self, status: str) -> None:
        """Mark the run ended (FINISHED, FAILED, KILLED) once; a failure here is only logged."""
        if self.run_id is None or self.ended:
            return
        self.ended = True
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as err:  # noqa: BLE001  (after a warning already: the server is likely gone)
            log.info("MLflow: could not mark run %s %s (%s)", self.run_id, status, _reason(err))

    def _live(self, action) -> None:
        """``action()`` unless live logging failed before; its first failure is one warning, then no more."""
        if self.live_failed:
            return
        try:
            action()
        except Exception as err:  # noqa: BLE001  (any MLflow or network failure: training goes on)
            self.live_failed = True
            log.warning("MLflow logging to %s failed (%s); training goes on without live curves there, and the "
                        "run's end tries once more", self.node.tracking_uri, _reason(err))

    def _open(self) -> None:
        if self.run_id is not None:
            return
        client, name = _client(self.node), str(self.node.experiment)
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else _create_experiment(client, name)
        run = client.create_run(experiment_id, run_name=self.run_dir.name,
                                tags={"robprune.run_dir": str(self.run_dir.resolve())})
        self.client, self.run_id = client, run.info.run_id

    def _log_rows(self, stage: str, rows: list[dict]) -> None:
        from mlflow.entities import Metric

        self._open()
        now, new = _now_ms(), [row for row in rows if (stage, int(row["epoch"])) not in self.logged]
        self._log([Metric(f"{stage}.{s}", float(row[s]), now, int(row["epoch"]))
                   for row in new for s in SCALARS if row.get(s) is not None])
        self.logged.update((stage, int(row["epoch"])) for row in new)

    def _log(self, metrics: list) -> None:
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per call
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])


def _client(node: DictConfig):
    """An MlflowClient for ``node.tracking_uri`` (no process-wide tracking URI or active run: a multirun's
    jobs share the process). A local folder becomes a file store URI."""
    uri = str(node.tracking_uri)
    if "://" not in uri or uri.startswith("file:"):
        # MLflow 3 refuses its file store unless asked (it prefers a database server); a local folder is
        # what a single user wants by default, and `mlflow ui --backend-store-uri <folder>` reads it
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = Path(uri.removeprefix("file:")).resolve().as_uri()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _create_experiment(client, name: str) -> str:
    """The new experiment's id; the existing one's when a parallel job created it first."""
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _now_ms() -> int:
    return int(time.time() * 1000)


def _reason(err: Exception) -> str:
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"


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
