"""AutoAttack inside evaluation: one call over the whole subset, robust accuracy after each
sub-attack, and a resume after SIGKILL from the state file in the eval stage's work folder that
ends with the same numbers as an uninterrupted run. Real pyautoattack, a small_cnn trained for a
few seconds on the embedded digits (robprune.data.build_data), tiny subsets and iteration counts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn.functional as F

from robprune.attacks.autoattack import autoattack
from robprune.compose import compose
from robprune.data import build_data
from robprune.evaluate import evaluate_robustness
from robprune.io import atomic_save_tensors
from robprune.models import small_cnn

SUB_ATTACKS = ["apgd-ce", "apgd-t", "square"]
OVERRIDES = ["eval=autoattack", f"eval.attacks.autoattack.attacks=[{','.join(SUB_ATTACKS)}]",
             "eval.attacks.autoattack.n_iter=5", "eval.attacks.autoattack.n_queries=100",
             "eval.n_examples.autoattack=32", "eval.large_eps_n=16"]


@pytest.fixture(scope="module")
def trained():
    """(model, test_x, test_y): small_cnn after a few epochs of Adam on the digits train split."""
    data = build_data(compose(["dataset=digits"]).dataset)
    x, y = data.train_x.float() / 255 if data.train_x.dtype == torch.uint8 else data.train_x, data.train_y
    torch.manual_seed(0)
    model = small_cnn(in_channels=1, image_size=8, num_classes=10, mean=[0.5], std=[0.5])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for i in range(0, x.shape[0], 64):
            opt.zero_grad()
            F.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return model.eval(), data.test_x, data.test_y


def test_runs_once_over_its_subset_with_accuracy_after_each_attack(trained, monkeypatch):
    model, x, y = trained
    calls = []
    run = autoattack.whole_subset

    def counting(model, xs, ys, **kwargs):
        calls.append(xs.shape[0])
        return run(model, xs, ys, **kwargs)

    monkeypatch.setattr(autoattack, "whole_subset", counting)
    cfg = compose(OVERRIDES[:4] + ["eval.n_examples.autoattack=40", "eval.batch_size=16", "eval.large_eps_n=16"]).eval
    metrics = evaluate_robustness(model, x, y, cfg, device="cpu", seed=0)
    assert len(calls) == 1 and calls[0] == round(metrics["clean_acc/autoattack"] * 40)  # clean-correct points only
    accs = [metrics[f"robust_acc/autoattack/{a}"] for a in SUB_ATTACKS]
    assert accs == sorted(accs, reverse=True) and accs[-1] == metrics["robust_acc/autoattack"]
    assert metrics["clean_acc/autoattack"] >= accs[0]
    assert metrics["checks"]["passed"] is True, metrics["checks"]["failed"]


CHILD = textwrap.dedent("""
    import importlib, json, logging, sys, time
    import torch
    torch.set_num_threads(1)
    from safetensors.torch import load_file
    aa = importlib.import_module("robprune.attacks.autoattack")  # the module (robprune.attacks.autoattack is also a function)
    from robprune.compose import compose
    from robprune.evaluate import evaluate_robustness
    from robprune.models import small_cnn
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    logging.getLogger("robprune.attacks.autoattack").setLevel(logging.WARNING)
    tmp, work, slow = sys.argv[1], sys.argv[2], sys.argv[3] == "slow"
    if slow:  # leave time to be killed after each finished sub-attack, as a long next sub-attack would
        finish = aa._State.finish
        aa._State.finish = lambda self, *a: (finish(self, *a), time.sleep(3))
    model = small_cnn(in_channels=1, image_size=8, num_classes=10, mean=[0.5], std=[0.5])
    model.load_state_dict(load_file(tmp + "/model.safetensors"))
    data = load_file(tmp + "/data.safetensors")
    cfg = compose(json.loads(sys.argv[4])).eval
    metrics = evaluate_robustness(model.eval(), data["x"], data["y"], cfg, device="cpu", seed=0, work=work)
    open(tmp + "/metrics.json", "w").write(json.dumps(metrics, sort_keys=True))
""")


def _child(tmp_path, work, mode):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ROBPRUNE_QUIET": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(work), mode, json.dumps(OVERRIDES)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finished_sub_attacks(state) -> int:
    try:
        return len(json.loads(state.read_text())["done"])
    except (OSError, ValueError, KeyError):
        return 0


def test_sigkill_during_autoattack_resumes_with_the_same_numbers(trained, tmp_path):
    model, x, y = trained
    atomic_save_tensors(tmp_path / "model.safetensors", {k: v.contiguous() for k, v in model.state_dict().items()})
    atomic_save_tensors(tmp_path / "data.safetensors", {"x": x.contiguous(), "y": y.contiguous()})
    expected = evaluate_robustness(model, x, y, compose(OVERRIDES).eval, device="cpu", seed=0)  # uninterrupted

    work, state = tmp_path / "eval.partial", tmp_path / "eval.partial" / "autoattack" / "autoattack" / "block0.state.json"
    child, deadline = _child(tmp_path, work, "slow"), time.monotonic() + 60
    while _finished_sub_attacks(state) < 1 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.poll() is None, child.communicate()[1][-2000:]
    os.kill(child.pid, signal.SIGKILL)
    child.communicate()
    done = _finished_sub_attacks(state)
    assert done >= 1 and done < len(SUB_ATTACKS) and not (tmp_path / "metrics.json").exists()

    out, err = _child(tmp_path, work, "fast").communicate(timeout=120)
    assert f"eval autoattack: resuming AutoAttack from {state} ({done} of {len(SUB_ATTACKS)} attacks done)" in err, err[-2000:]
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(expected, sort_keys=True))


def test_targeted_attacks_on_three_classes_are_refused_before_training(tmp_path, capsys):
    from robprune.cli import main

    code = main(["run", "dataset=synthetic", "dataset.num_classes=3", "eval=autoattack", "train=standard",
                 f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "need >= 4 classes, the data has 3" in err, err
    assert "version=custom" in err and not any((tmp_path / "cache").rglob("model.safetensors"))
