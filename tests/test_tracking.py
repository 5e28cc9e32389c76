"""Training curves: TensorBoard event files in the run directory, MLflow runs with logger=mlflow."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from robprune.errors import ConfigError
from robprune.tracking import check_logger, write_tensorboard
from tests.helpers import SHRINK, robprune

TINY = [*SHRINK, "model.width=4", "model.hidden=16", "eval.n_examples.pgd20=60"]


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    first = robprune(["run", *TINY, f"cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'run'}"], cwd=root)
    assert first.returncode == 0, first.stderr[-2000:]
    # the same config again with MLflow: every stage reused from the cache, the curves still logged
    second = robprune(["run", *TINY, "logger=mlflow", f"logger.mlflow.tracking_uri={root / 'mlruns'}",
                       f"cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'again'}"], cwd=root)
    assert second.returncode == 0, second.stderr[-2000:]
    return root


def test_tensorboard_curves_are_the_stages_epoch_logs(runs):
    stages = json.loads((runs / "run" / "metrics.json").read_text())["stages"]
    for stage, key in (("train", "train_log"), ("finetune", "finetune_log")):
        scalars = _scalars(runs / "run" / "tensorboard" / stage)
        log = json.loads((Path(stages[stage]["path"]) / "model.json").read_text())[key]  # the stage's own log
        assert [s for s, _ in scalars["loss"]] == [row["epoch"] for row in log]
        assert [v for _, v in scalars["loss"]] == pytest.approx([row["loss"] for row in log], rel=1e-6)
        assert [v for _, v in scalars["lr"]] == pytest.approx([row["lr"] for row in log], rel=1e-6)
    assert len(_scalars(runs / "run" / "tensorboard" / "train")["loss"]) == 2  # SHRINK: train.epochs=2


def test_reused_stages_still_log_and_mlflow_gets_the_run(runs, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading MLflow 3's file store, as robprune writes it
    first = _scalars(runs / "run" / "tensorboard" / "train")["loss"]
    assert _scalars(runs / "again" / "tensorboard" / "train")["loss"] == first
    metrics = json.loads((runs / "again" / "metrics.json").read_text())
    assert all(s["reused"] for s in metrics["stages"].values())
    mlflow.set_tracking_uri((runs / "mlruns").resolve().as_uri())
    found = mlflow.search_runs(experiment_names=["robprune"])
    assert len(found) == 1
    row = found.iloc[0]
    assert row["metrics.clean_acc"] == pytest.approx(metrics["clean_acc"])
    assert row["metrics.robust_acc.pgd20"] == pytest.approx(metrics["robust_acc/pgd20"])  # '/' -> '.'
    assert row["metrics.clean_acc.pgd20"] == pytest.approx(metrics["clean_acc/pgd20"])
    assert row["params.prune.channel_ratio"] == str(OmegaConf.load(runs / "again" / "config.yaml").prune.channel_ratio)
    assert row["tags.robprune.run_dir"] == str((runs / "again").resolve())
    history = mlflow.tracking.MlflowClient().get_metric_history(row["run_id"], "train.loss")
    assert [h.step for h in history] == [s for s, _ in first]
    assert [h.value for h in history] == pytest.approx([v for _, v in first], rel=1e-6)


def test_logger_none_writes_no_curves_and_mlflow_missing_is_refused(tmp_path, monkeypatch):
    node = OmegaConf.create({"tensorboard": True, "mlflow": {"tracking_uri": "outputs/mlruns", "experiment": "x"}})
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(ConfigError, match="pip install mlflow"):
        check_logger(node)
    bad = OmegaConf.create({"tensorboard": True, "mlflow": {"tracking_uri": "", "experiment": "x"}})
    with pytest.raises(ConfigError, match="logger.mlflow.tracking_uri"):
        check_logger(bad)
    check_logger(OmegaConf.create({"tensorboard": False, "mlflow": None}))  # nothing to check


def test_a_failing_mlflow_costs_a_warning_not_the_results(tmp_path, caplog, monkeypatch):
    import logging

    from robprune.tracking import report_to_mlflow

    node = OmegaConf.create({"tensorboard": False, "mlflow": {"tracking_uri": "http://127.0.0.1:9", "experiment": "x"}})
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # nothing listens on port 9: fail at once
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with caplog.at_level(logging.WARNING, logger="robprune"):
        report_to_mlflow(node, {}, tmp_path, OmegaConf.create({"a": 1}), {"clean_acc": 0.5})
    assert "MLflow logging to http://127.0.0.1:9 failed" in caplog.text


def test_write_tensorboard_replaces_an_older_folder_whole(tmp_path):
    folder = tmp_path / "tensorboard"
    (folder / "stale").mkdir(parents=True)
    write_tensorboard({"train": [{"epoch": 1, "loss": 1.0, "lr": 0.1, "seconds": 2.0}]}, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["train"]
    assert _scalars(folder / "train")["seconds"] == [(1, 2.0)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tensorboard-")]


def test_curves_reach_tensorboard_while_the_stages_train(tmp_path, monkeypatch):
    """Each epoch's scalars are in <run dir>/tensorboard/<stage>/ as the epoch ends, before the run finishes
    (LiveCurves, called by the training loop's on_epoch_end); the finished run's set then replaces them."""
    from robprune.compose import compose
    from robprune.pipeline import run
    from robprune.tracking import LiveCurves

    run_dir, seen = tmp_path / "run", []
    write = LiveCurves.__call__

    def watched(self, stage, row):
        write(self, stage, row)
        seen.append((stage, row["epoch"], (run_dir / "metrics.json").exists(), _scalars(run_dir / "tensorboard" / stage)))

    monkeypatch.setattr(LiveCurves, "__call__", watched)
    metrics = run(compose([*TINY, "logger=tensorboard", f"cache_dir={tmp_path / 'cache'}"]), run_dir)
    assert [(stage, epoch, done) for stage, epoch, done, _ in seen] == [("train", 1, False), ("train", 2, False),
                                                                        ("finetune", 1, False)]
    for stage, epoch, _, scalars in seen:  # on disk at that moment: every epoch so far, nothing later
        assert [step for step, _ in scalars["loss"]] == list(range(1, epoch + 1))
    final = _scalars(run_dir / "tensorboard" / "train")["loss"]
    assert [v for _, v in final] == pytest.approx([v for _, v in seen[1][3]["loss"]], rel=1e-6)
    assert metrics["stages"]["train"]["reused"] is False


def _mlflow_client(store, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading MLflow 3's file store, as robprune writes it
    return MlflowClient(tracking_uri=store.resolve().as_uri())


def test_curves_reach_mlflow_while_the_stages_train(tmp_path, monkeypatch):
    """logger=mlflow opens the job's MLflow run when it starts and logs each epoch's row as the epoch ends
    (LiveCurves -> MlflowRun.live), so the run's page shows the curves before the stage has finished; the
    end of the run adds params and final metrics to the same run, and no curve point twice."""
    from robprune.compose import compose
    from robprune.pipeline import run
    from robprune.tracking import LiveCurves

    run_dir, store, seen = tmp_path / "run", tmp_path / "mlruns", []
    client = _mlflow_client(store, monkeypatch)
    write = LiveCurves.__call__

    def watched(self, stage, row):
        write(self, stage, row)
        run_id = self.mlflow.run_id
        history = client.get_metric_history(run_id, f"{stage}.loss")
        seen.append((stage, row["epoch"], client.get_run(run_id).info.status, [(h.step, h.value) for h in history]))

    monkeypatch.setattr(LiveCurves, "__call__", watched)
    metrics = run(compose([*TINY, "logger=mlflow", "logger.tensorboard=false", f"logger.mlflow.tracking_uri={store}",
                           f"cache_dir={tmp_path / 'cache'}"]), run_dir)
    assert [(stage, epoch, status) for stage, epoch, status, _ in seen] == [
        ("train", 1, "RUNNING"), ("train", 2, "RUNNING"), ("finetune", 1, "RUNNING")]
    for stage, epoch, _, history in seen:  # in the store at that moment: every epoch so far, nothing later
        assert [step for step, _ in history] == list(range(1, epoch + 1))
    (found,) = client.search_runs([client.get_experiment_by_name("robprune").experiment_id])  # one run per job
    assert found.info.status == "FINISHED" and not (run_dir / "tensorboard").exists()
    assert found.data.metrics["clean_acc"] == pytest.approx(metrics["clean_acc"])  # the end adds to the same run
    assert found.data.params["train.epochs"] == "2"
    for stage, key in (("train", "train_log"), ("finetune", "finetune_log")):  # each point once, as the stage logged it
        log = json.loads((Path(metrics["stages"][stage]["path"]) / "model.json").read_text())[key]
        history = client.get_metric_history(found.info.run_id, f"{stage}.loss")
        assert [(h.step, h.value) for h in history] == [(row["epoch"], pytest.approx(row["loss"])) for row in log]
    assert seen[1][3] == [(h.step, h.value) for h in client.get_metric_history(found.info.run_id, "train.loss")]


def test_an_unreachable_mlflow_warns_once_and_the_job_finishes(tmp_path, caplog, monkeypatch):
    """Live logging to a server that does not answer: one warning when the job starts (not one per epoch),
    one when the end tries again, and the job's results on disk."""
    import logging

    from robprune.compose import compose
    from robprune.pipeline import run

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # nothing listens on port 9: fail at once
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = compose([*TINY, "logger=mlflow", "logger.tensorboard=false", "logger.mlflow.tracking_uri=http://127.0.0.1:9",
                   f"cache_dir={tmp_path / 'cache'}"])
    with caplog.at_level(logging.WARNING, logger="robprune"):
        metrics = run(cfg, tmp_path / "run")
    failed = [r.getMessage() for r in caplog.records if "MLflow logging to http://127.0.0.1:9 failed" in r.getMessage()]
    assert len(failed) == 2, failed  # 3 epochs trained: one live warning, one at the end
    assert "without live curves" in failed[0] and "results are in" in failed[1]
    assert metrics["stages"]["train"]["reused"] is False and (tmp_path / "run" / "metrics.json").exists()


def test_a_job_that_raises_ends_its_mlflow_run_failed(tmp_path, monkeypatch):
    from robprune.tracking import LiveCurves, MlflowRun

    node = OmegaConf.create({"tracking_uri": str(tmp_path / "mlruns"), "experiment": "x"})
    client = _mlflow_client(tmp_path / "mlruns", monkeypatch)
    mlflow = MlflowRun(node, tmp_path / "run")
    mlflow.start()
    with pytest.raises(RuntimeError), LiveCurves(None, mlflow) as live:
        live("train", {"epoch": 1, "loss": 2.0, "lr": 0.1, "seconds": 1.0})
        live("score", {"epoch": 1, "loss": 9.0})  # a stage without a curve: nothing logged
        raise RuntimeError("the job broke")
    found = client.get_run(mlflow.run_id)
    assert found.info.status == "FAILED" and found.data.metrics == {"train.loss": 2.0, "train.lr": 0.1,
                                                                     "train.seconds": 1.0}
