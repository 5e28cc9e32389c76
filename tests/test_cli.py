"""The real `robprune` command: sweeps, resume after SIGKILL, eval, table, and the bad-input matrix."""
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, SHARED_DATA, SHRINK, read_metrics, robprune, stable
from tests.test_checkpoint import reseal


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished default-pipeline run (shrunk) to evaluate, tabulate and protect."""
    root = tmp_path_factory.mktemp("cli")
    res = robprune(["run", *SHRINK, f"cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'run'}"], cwd=root)
    assert res.returncode == 0, res.stderr[-2000:]
    return root, root / "run"


def _snapshot(run_dir: Path) -> dict:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


def test_multirun_sweep_reuses_dense_model_and_table(tmp_path):
    res = robprune(["run", "-m", *SHRINK, "prune.channel_ratio=0.3,0.5", f"cache_dir={tmp_path / 'cache'}",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 2
    metrics = [json.loads(p.read_text()) for p in runs]
    assert [m["stages"]["train"]["reused"] for m in metrics] == [False, True]
    assert (runs[0].parent / "run.log").exists()
    tab = robprune(["table", str(tmp_path / "sweep"), "--rows", "prune.channel_ratio", "--cols", "clean_acc", "robust_acc/pgd20"], cwd=tmp_path)
    assert tab.returncode == 0, tab.stderr
    assert "0.3" in tab.stdout and "0.5" in tab.stdout
    assert (tmp_path / "sweep" / "table.md").exists() and (tmp_path / "sweep" / "table.csv").exists()


def test_sigkill_during_training_then_resume_matches_uninterrupted(tmp_path):
    args = ["run", *SHRINK, "train.epochs=6"]
    ref = robprune([*args, f"cache_dir={tmp_path / 'ref'}", f"hydra.run.dir={tmp_path / 'ref_run'}"], cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]
    cache = tmp_path / "cache"
    env = {**os.environ, "ROBPRUNE_QUIET": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "robprune.cli", *args, f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    ckpts = []
    while time.time() < deadline and not ckpts:
        ckpts = list(cache.glob("train/*.partial/epochs/last.json"))
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpts, "no epoch checkpoint appeared before the kill"
    epoch_at_kill = json.loads(ckpts[0].read_text())["epoch"]
    assert epoch_at_kill >= 1 and epoch_at_kill < 6
    assert not (tmp_path / "run" / "metrics.json").exists()
    res = robprune([*args, f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    log = (tmp_path / "run" / "run.log").read_text()
    assert "resuming from the checkpoint after epoch" in log
    assert stable(read_metrics(tmp_path / "run")) == stable(read_metrics(tmp_path / "ref_run"))


def test_eval_command_reevaluates_saved_model(finished_run, tmp_path):
    root, run_dir = finished_run
    res = robprune(["eval", str(run_dir), "eval=pgd", "eval.attacks.pgd20.steps=3", "eval.n_examples.pgd20=120",
                    "eval.latency.repeats=2", "eval.latency.batch_size=8", f"eval_out={tmp_path / 'ev'}"], cwd=root)
    assert res.returncode == 0, res.stderr[-2000:]
    again, orig = read_metrics(tmp_path / "ev"), read_metrics(run_dir)
    assert again["clean_acc"] == orig["clean_acc"]            # bit-identical reload → same predictions
    assert again["robust_acc/pgd20"] == orig["robust_acc/pgd20"]
    assert again["params"] == orig["params"]


# The whole wrong-input matrix runs in-process in tests/test_validation.py; these few go through the real
# command next to a real finished run.
BAD_INPUTS = [
    (["prune=foo"], "prune=foo"),
    (["-m", "prune.channel_ratio=0.3,1.2"], "prune.channel_ratio"),
    (["dataset=mnist", "data.root=/nonexistent/mnist"], "/nonexistent/mnist"),
]


@pytest.mark.parametrize("overrides,named", BAD_INPUTS, ids=[" ".join(b[0]) for b in BAD_INPUTS])
def test_bad_input_one_line_exit_2_nothing_damaged(finished_run, overrides, named):
    root, run_dir = finished_run
    before = _snapshot(run_dir)
    res = robprune(["run", *overrides, f"cache_dir={root / 'cache'}"], cwd=root)
    assert res.returncode == 2, (res.returncode, res.stderr[-1500:])
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert named in lines[0] and "Error" in lines[0]
    assert _snapshot(run_dir) == before


def test_corrupt_dataset_file(tmp_path):
    root = tmp_path / "mnist"
    root.mkdir()
    good = gzip.compress(b"\x00\x00\x08\x03" + (100).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(100 * 784))
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(good[: len(good) // 2])  # truncated
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (100).to_bytes(4, "big") + bytes(100)))
    res = robprune(["run", "dataset=mnist", f"data.root={root}", "dataset.train_split=test[:80]",
                    "dataset.test_split=test[80:]", f"cache_dir={tmp_path / 'c'}"], cwd=tmp_path)
    assert res.returncode == 2 and "t10k-images-idx3-ubyte" in res.stderr.strip().splitlines()[-1], res.stderr[-1500:]


# Data faults through the real command (the drawn cases run in-process in tests/test_data_faults.py).
TINY_RUN = ["dataset=imagefolder", "train.epochs=1", "prune=none", "finetune=none", "eval=clean", "logger=none",
            "model.width=8", "model.hidden=32", "quiet=true"]


def _two_class_tree(root: Path) -> Path:
    """root/{train,test}/{cat,dog}/<n>.png: 8 training and 4 test images per class, 8x8 RGB noise around a
    per-class grey level."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for c, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(70 + 110 * c, 30, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


def test_training_class_without_images_is_refused_before_training(tmp_path):
    """Issue 27's measured case: train/dog empty while test/dog is not. It used to train on cats only and report
    50% clean accuracy with checks passed; now one line names the folder, exit 2, and nothing is trained."""
    tree = _two_class_tree(tmp_path / "tree")
    for image in (tree / "train" / "dog").iterdir():
        image.unlink()
    res = robprune(["run", *TINY_RUN, f"data.root={tree}", f"cache_dir={tmp_path / 'cache'}",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert lines[0].startswith(f"DataError: dataset 'imagefolder': {tree / 'train' / 'dog'} holds no images but the "
                               "test split has 4 example(s) of that class"), lines[0]
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "cache" / "train").exists()


def test_data_warnings_are_logged_and_recorded_in_metrics(tmp_path):
    """A grayscale image in an RGB tree (converted) and a training image copied into the test split: the run goes
    on, logs both, lists them in metrics.json ``warnings``, and fails checks.train_test_overlap."""
    import shutil

    import numpy as np
    from PIL import Image

    tree = _two_class_tree(tmp_path / "tree")
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(tree / "train" / "cat" / "grey.png")
    shutil.copyfile(tree / "train" / "cat" / "0.png", tree / "test" / "cat" / "copy.png")
    res = robprune(["run", *TINY_RUN, f"data.root={tree}", f"cache_dir={tmp_path / 'cache'}",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    m = read_metrics(tmp_path / "run")
    assert m["warnings"] == [
        f"dataset 'imagefolder': 1 of 17 images of split 'train' are not RGB (1 L; first: "
        f"{tree / 'train' / 'cat' / 'grey.png'}); converted to RGB",
        f"dataset 'imagefolder': 1 of 9 test examples are identical to a training example (first: "
        f"{tree / 'test' / 'cat' / 'copy.png'} = {tree / 'train' / 'cat' / '0.png'}); accuracy on them measures memory, "
        "not generalisation: remove them from one split"]
    checks = m["checks"]
    assert checks["passed"] is False and checks["train_test_overlap"] == pytest.approx(1 / 9)
    data_failures = [f.split(":")[0] for f in checks["failed"] if f.startswith(("train_test_overlap", "unseen_class"))]
    assert data_failures == ["train_test_overlap"] and checks["unseen_class_fraction"] == 0
    # (the 17-image model may also answer one class for all 9 test images: prediction_collapse, the model's fault, not the data's)
    assert {f.split(":")[0] for f in checks["failed"]} <= {"train_test_overlap", "prediction_collapse"}
    log = (tmp_path / "run" / "run.log").read_text()
    assert all(w in log and w in res.stdout + res.stderr for w in m["warnings"])  # run.log and the console


def test_eval_and_table_on_missing_dirs(tmp_path):
    for cmd in (["eval", str(tmp_path / "nope")], ["table", str(tmp_path / "nope")]):
        res = robprune(cmd, cwd=tmp_path)
        assert res.returncode == 2 and str(tmp_path / "nope") in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_eval_checkpoint_of_other_architecture(finished_run, tmp_path):
    root, run_dir = finished_run
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes())
    meta = json.loads((run_dir / "model.json").read_text())
    meta["arch"]["model"]["width"] = 4                    # weights were saved for width 8
    (bad / "model.json").write_text(json.dumps(meta))
    reseal(bad)  # a consistent pair: refused for its architecture, not its digest
    res = robprune(["eval", str(bad), "eval=clean"], cwd=root)
    assert res.returncode == 2 and "CheckpointError" in res.stderr and "model.json" in res.stderr, res.stderr[-1500:]


@pytest.mark.skipif(not (SHARED_DATA / "mnist").exists(), reason="shared MNIST files not present")
def test_real_mnist_split_runs(tmp_path):
    res = robprune(["run", "dataset=mnist", f"data.root={SHARED_DATA / 'mnist'}", "model=cnn8",
                    "dataset.train_split=test[:600]", "dataset.test_split=test[9800:]", *SHRINK[2:],
                    "train.epochs=1", "finetune.epochs=1", f"cache_dir={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'run'}"],
                   cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    m = read_metrics(tmp_path / "run")
    assert m["dataset"] == {"name": "mnist", "n_train": 600, "n_test": 200}


def test_hydra_flags_and_their_values_are_not_read_as_overrides(tmp_path):
    """``--cfg job`` (flag, space, value) prints the job's config like ``--cfg=job``: the value is not
    composed as an override ('cannot parse job'), and nothing runs."""
    from robprune.compose import overrides_of

    assert overrides_of(["prune=mrs", "--cfg", "job", "-p", "prune", "-m", "seed=0,1", "--cfg=all"]) == \
        ["prune=mrs", "seed=0,1"]
    spaced = robprune(["run", "prune=mrs", f"hydra.run.dir={tmp_path / 'run'}", "--cfg", "job"], cwd=tmp_path)
    joined = robprune(["run", "prune=mrs", f"hydra.run.dir={tmp_path / 'run'}", "--cfg=job"], cwd=tmp_path)
    assert spaced.returncode == joined.returncode == 0, spaced.stderr[-2000:]
    assert "_target_: robprune.prune.mrs" in spaced.stdout and spaced.stdout == joined.stdout
    assert not (tmp_path / "run" / "metrics.json").exists()
