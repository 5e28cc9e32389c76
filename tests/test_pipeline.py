"""The pipeline in-process on the embedded digits default with the real configs, shrunk."""
import json

import torch

from robprune.checkpoint import load_checkpoint
from robprune.compose import compose
from robprune.pipeline import run
from tests.helpers import SHRINK, stable


def _run(tmp_path, *overrides, name="run", shrink=SHRINK):
    cfg = compose([*shrink, f"cache_dir={tmp_path / 'cache'}", *overrides])
    return run(cfg, tmp_path / name, choices={"prune": cfg.prune.method}), tmp_path / name


def test_default_pipeline_end_to_end(tmp_path):
    m, run_dir = _run(tmp_path)
    for key in ("clean_acc", "robust_acc/pgd20", "robust_acc/worst", "n_eval/pgd20", "params", "macs",
                "params_dense", "macs_dense", "sparsity", "latency_ms", "size_bytes", "checks", "stages"):
        assert key in m, key
    assert m["params"] < m["params_dense"] and m["macs"] < m["macs_dense"]
    assert 0.3 < m["sparsity"] < 0.9                      # 50% of channels ≈ 60-75% of weights
    assert m["robust_acc/pgd20"] <= m["clean_acc/pgd20"] + 1e-9
    assert m["clean_acc"] > 0.5                         # 3 epochs on digits learn something
    assert {s for s in m["stages"]} == {"train", "prune", "finetune", "eval"}
    assert not any(s["reused"] for s in m["stages"].values())
    for f in ("config.yaml", "metrics.json", "model.safetensors", "model.json"):
        assert (run_dir / f).exists(), f
    model, meta = load_checkpoint(run_dir)
    convs = [mod for mod in model.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 8]  # stem kept at 8; 16-channel convs halved
    assert meta["pruning_history"]


def test_same_seed_same_metrics_and_other_seed_differs(tmp_path):
    a, _ = _run(tmp_path, "cache=false", name="a")
    b, _ = _run(tmp_path, "cache=false", name="b")
    c, _ = _run(tmp_path, "cache=false", "seed=1", name="c")
    assert stable(a) == stable(b)
    assert stable(a) != stable(c)


def test_sweep_trains_dense_model_once_and_cache_matches_fresh(tmp_path):
    first, _ = _run(tmp_path, "prune.channel_ratio=0.3", name="r03")
    second, _ = _run(tmp_path, "prune.channel_ratio=0.7", name="r07")
    assert second["stages"]["train"]["reused"] and not second["stages"]["prune"]["reused"]
    assert second["stages"]["train"]["key"] == first["stages"]["train"]["key"]
    assert second["params"] < first["params"]
    fresh, _ = _run(tmp_path, "prune.channel_ratio=0.7", "cache=false", name="fresh")
    assert stable(fresh) == {**stable(second)}           # a reused stage gives the same numbers as a rebuilt one
    again, _ = _run(tmp_path, "prune.channel_ratio=0.7", name="again")
    assert all(s["reused"] for s in again["stages"].values())


def test_prune_none_and_finetune_none(tmp_path):
    m, run_dir = _run(tmp_path, "prune=none", "finetune=none", shrink=[o for o in SHRINK if not o.startswith("finetune")])
    assert m["sparsity"] == 0.0 and m["params"] == m["params_dense"]
    assert "finetune" not in m["stages"]
    assert json.loads((run_dir / "model.json").read_text())["pruning_history"] == []


def test_pinned_train_seed_shares_the_dense_model_across_seeds(tmp_path):
    a, _ = _run(tmp_path, "train_seed=0", "seed=0", name="s0")
    b, _ = _run(tmp_path, "train_seed=0", "seed=1", name="s1")
    assert b["stages"]["train"]["reused"] and not b["stages"]["finetune"]["reused"]
    assert b["train_seed"] == 0 and b["seed"] == 1


def test_device_auto_resolves_once_to_cuda_or_cpu(tmp_path):
    from robprune.pipeline import resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device("cpu").type == "cpu"
    m, _ = _run(tmp_path, "device=auto", "prune=none", "finetune=none", "eval=clean",
                shrink=[o for o in SHRINK if not o.startswith(("finetune", "eval"))])
    assert m["device"] == expected and m["latency_device"] == "cpu"   # latency is always measured on CPU
