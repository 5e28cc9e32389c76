"""The fast recipes (docs/methods/recipes.md#fast-recipes): airbench's network and initialisation, its training
tricks in the one loop (triangular lr, scaled BN-bias lr, Lookahead, alternating flips), FGSM from a random start,
and the catastrophic-overfitting monitor and check."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from robprune.data.loader import BatchLoader
from robprune.errors import ConfigError
from robprune.evaluate.checks import overfitting_check
from robprune.models import airbench
from robprune.train import build_training, fit, schedule_factor
from robprune.train.fast import Lookahead, LookaheadOptions
from tests.helpers import read_metrics, robprune
from tests.tiny_roots import imagefolder

CIFAR = {"in_channels": 3, "image_size": 32, "num_classes": 10, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}


def _smooth_images(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Images with correlated neighbouring pixels (upsampled noise), so the patch covariance is far from identity."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=32, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("eps", [5e-4, 0.1])
def test_whitening_init_whitens_the_training_patches(eps):
    model, x = airbench(**CIFAR, whiten_eps=eps), _smooth_images()
    model.init_from_data(x)
    w = model.whiten.weight.double()                                       # (24, 3, 2, 2)
    xn = model.normalize(x).double()
    patches = xn.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    sigma = patches.T @ patches / len(patches)
    lam = torch.linalg.eigvalsh(sigma).flip(0)                             # largest first, as the filters
    cov = w[:12].flatten(1) @ sigma @ w[:12].flatten(1).T                  # covariance of the first 12 channels
    assert torch.allclose(cov, torch.diag(lam / (lam + eps)), atol=1e-6)   # whitened: V'ᵀΣV' = Λ/(Λ + ε)
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])
    out = F.conv2d(xn.float(), model.whiten.weight).permute(0, 2, 3, 1).reshape(-1, 24)[:, :12].double()
    assert (out.T @ out / len(out)).diagonal()[0] > 0.95                  # unit variance along the top eigenvector
    assert not model.whiten.weight.requires_grad


def test_identity_init_frozen_bn_weights_and_the_whitening_bias_schedule():
    model = airbench(**CIFAR)
    w = model.block2.conv1.weight                                          # 64 -> 256
    eye = torch.zeros_like(w[:64])
    torch.nn.init.dirac_(eye)
    assert torch.equal(w[:64], eye) and not torch.equal(w[64:], torch.zeros_like(w[64:]))
    assert all(not m.weight.requires_grad and m.bias.requires_grad
               for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    model.on_epoch_start(2)
    assert model.whiten.bias.requires_grad
    model.on_epoch_start(3)
    assert not model.whiten.bias.requires_grad
    assert sum(p.numel() for p in model.parameters()) == 1_972_792       # airbench94's network


@pytest.mark.parametrize("size, ok", [(32, True), (28, True), (25, True), (24, False), (33, False), (64, False)])
def test_airbench_takes_only_sizes_its_pools_fit(size, ok):
    shape = {**CIFAR, "image_size": size}
    if ok:
        assert airbench(**shape)(torch.rand(2, 3, size, size)).shape == (2, 10)
    else:
        with pytest.raises(ConfigError, match=f"{size}x{size}"):
            airbench(**shape)


def test_triangle_schedule_rises_to_the_peak_then_falls():
    node = OmegaConf.create({"name": "triangle", "start": 0.2, "peak": 0.25, "end": 0.05})
    assert schedule_factor(node, 0.0, 8) == pytest.approx(0.2)
    assert schedule_factor(node, 2.0, 8) == pytest.approx(1.0)           # t = 0.25
    assert schedule_factor(node, 1.0, 8) == pytest.approx(0.6)
    assert schedule_factor(node, 8.0, 8) == pytest.approx(0.05)
    assert schedule_factor(node, 5.0, 8) == pytest.approx(0.525)          # halfway down


def test_norm_bias_lr_scale_gives_bn_biases_their_own_group():
    model = airbench(**CIFAR)
    cfg = OmegaConf.create({"epochs": 1, "objective": {"_target_": "robprune.train.objectives.standard"},
                            "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5, "momentum": 0.85,
                                          "nesterov": True, "weight_decay": 0.002},
                            "schedule": {"name": "triangle"}, "norm_bias_lr_scale": 64})
    _, optimizer = build_training(cfg, model, "train")
    others, biases = optimizer.param_groups
    bn_biases = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in biases["params"]} == bn_biases and not bn_biases & {id(p) for p in others["params"]}
    assert biases["lr"] == pytest.approx(32.0) and biases["weight_decay"] == pytest.approx(0.002 / 64)
    assert others["lr"] == 0.5 and others["weight_decay"] == 0.002


def test_alternating_flip_shows_every_image_both_ways_every_two_epochs():
    n = 40
    x = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    x[:, 0, :, 0] = torch.arange(n, dtype=torch.uint8)[:, None] + 1       # left column holds the image's id
    loader = BatchLoader(x, torch.arange(n), 16, shuffle=True, generator=torch.Generator().manual_seed(0),
                         alternate_flip=True)
    flipped = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        seen = {}
        for xb, yb in loader:
            for img, label in zip(xb, yb):
                seen[int(label)] = bool(img[0, 0, 0] == 0)               # left column empty: flipped
        flipped.append(seen)
    assert sum(flipped[0].values()) == n // 2                              # half each epoch
    assert all(flipped[0][i] != flipped[1][i] for i in range(n))           # the other half the next epoch
    assert flipped[2] == flipped[0]


def test_fgsm_with_random_start_steps_one_and_a_quarter_eps():
    from robprune.attacks import pgd

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y, eps = torch.rand(8, 3, 2, 2), torch.arange(8) % 3, 0.1
    a = pgd(model, x, y, eps=eps, steps=1, step_scale=1.25, generator=torch.Generator().manual_seed(1))
    b = pgd(model, x, y, eps=eps, steps=1, step_size=0.125, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and (a - x).abs().max() <= eps + 1e-6
    with pytest.raises(ConfigError, match="step_scale"):
        pgd(model, x, y, eps=eps, steps=1, step_size=0.1, step_scale=1.25)


def _linear_fit(epochs: int, checkpoint_dir=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x, y = torch.randint(0, 256, (32, 1, 2, 2), dtype=torch.uint8), torch.arange(32) % 2
    generator = torch.Generator().manual_seed(1)
    loader = BatchLoader(x, y, 8, shuffle=True, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ahead = Lookahead(LookaheadOptions(every=2, start_epochs=1), model, len(loader), 4)
    fit(model, loader, lambda m, xb, yb: F.cross_entropy(m(xb), yb), optimizer, epochs=epochs, lr_factor=lambda e: 1.0,
        generator=generator, checkpoint_dir=checkpoint_dir, hooks=[ahead], progress=False)
    return model, ahead


def test_lookahead_averages_and_a_resumed_run_continues_bit_exactly(tmp_path):
    straight, ahead = _linear_fit(4)
    assert ahead.average is not None
    assert all(torch.equal(a, p) for a, p in zip(ahead.average, straight.state_dict().values()))  # θ = θ̄ after an epoch
    _linear_fit(2, tmp_path)                                               # "killed" after epoch 2 ...
    resumed, _ = _linear_fit(4, tmp_path)                                  # ... and resumed from its checkpoint
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))


def _rows(pgd, fgsm):
    return [{"epoch": i + 1, "monitor_pgd_acc": p, "monitor_fgsm_acc": f} for i, (p, f) in enumerate(zip(pgd, fgsm))]


def test_overfitting_check_fires_on_a_collapse_and_only_then():
    values, failed = overfitting_check("train", _rows([0.2, 0.35, 0.41, 0.03], [0.3, 0.42, 0.48, 0.86]))
    assert values["catastrophic_overfitting_epoch/train"] == 4 and values["monitor_pgd_acc_best/train"] == 0.41
    assert len(failed) == 1 and "epoch 4" in failed[0] and "41.0%" in failed[0] and "86.0%" in failed[0]
    # robust overfitting (both fall) and noise at low accuracy (a drop under 10 points) do not fire
    assert overfitting_check("train", _rows([0.3, 0.45, 0.2], [0.4, 0.5, 0.3]))[1] == []
    assert overfitting_check("train", _rows([0.08, 0.02], [0.1, 0.2]))[1] == []
    # never robust to PGD while FGSM accuracy grows: fires at the last epoch (what fast_at at airbench's lr did here)
    values, failed = overfitting_check("train", _rows([0.055, 0.0, 0.008, 0.0, 0.0], [0.125, 0.145, 0.148, 0.25, 0.258]))
    assert values["catastrophic_overfitting_epoch/train"] == 5 and "25.8%" in failed[0] and "0.0%" in failed[0]
    assert overfitting_check("train", _rows([0.3, 0.42], [0.4, 0.55]))[1] == []  # FGSM 13 points above PGD: honest
    assert overfitting_check("train", [{"epoch": 1, "loss": 1.0}]) == ({}, [])  # no monitor: no check


def test_a_collapse_in_a_stage_log_fails_the_run_checks(tmp_path):
    from robprune.pipeline import add_overfitting_checks
    from robprune.store import StageResult

    (tmp_path / "finetune").mkdir()
    (tmp_path / "finetune" / "model.json").write_text(json.dumps(
        {"finetune_log": _rows([0.3, 0.4, 0.01], [0.4, 0.5, 0.9])}))
    metrics = {"checks": {"failed": [], "passed": True}}
    add_overfitting_checks(metrics, {"finetune": StageResult("finetune", "k", tmp_path / "finetune", False, 0.0)})
    assert not metrics["checks"]["passed"] and metrics["checks"]["failed"][0].startswith("catastrophic_overfitting/finetune")


def test_fast_at_end_to_end_through_the_cli(tmp_path):
    root = tmp_path / "data"
    imagefolder(root, classes=4, per_class={"train": 16, "test": 8})
    args = ["run", "+experiment=fast_cifar10_cpu", f"data.root={root}", "model.width=4", "train.epochs=2",
            "train.monitor.n_examples=16", "train.monitor.pgd_steps=2", "train.lookahead.start_epochs=0",
            "data.batch_size=16", "prune=l1_filter", "prune.sparsity=0.5", "finetune.epochs=1", "eval=clean",
            "eval.latency.repeats=1", "eval.latency.warmup=0", "eval.latency.batch_size=4",
            f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = robprune(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = read_metrics(tmp_path / "run")
    assert m["choices"]["model"] == "airbench" and m["choices"]["train"] == "fast_at"
    assert m["params"] < m["params_dense"] and "monitor_pgd_acc_best/train" in m["checks"]
    assert "catastrophic_overfitting_epoch/finetune" in m["checks"]
    log = json.loads((Path(m["stages"]["train"]["path"]) / "model.json").read_text())["train_log"]
    assert len(log) == 2 and all(0 <= r["monitor_pgd_acc"] <= r["monitor_fgsm_acc"] + 1 for r in log)


@pytest.mark.parametrize("args, key", [
    (["model=airbench"], "image size"),                                                   # the 8x8 digits default
    (["dataset=synthetic", "model=airbench", "train=fast_at", "train.objective.attack.step_size=0.01"], "step_scale"),
    (["dataset=synthetic", "train=fast_at", "train.monitor.n_examples=-1"], "train.monitor.n_examples"),
    (["dataset=synthetic", "train=fast_standard", "train.lookahead.decay_base=2"], "train.lookahead.decay_base"),
    (["dataset=synthetic", "train=fast_standard", "train.schedule.peak=0"], "train.schedule.peak"),
    (["dataset=imagenet", "train=fast_standard"], "train.alternate_flip"),                  # streamed from disk
    (["dataset=sst2", "model=bert", "train=text_finetune", "prune=none", "finetune=none", "+train.monitor.n_examples=8"],
     "train.monitor"),
])
def test_bad_fast_options_are_one_line_exit_2_before_work(args, key, tmp_path, capsys):
    from robprune.cli import main

    code = main(["run", "eval=clean", *args, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and key in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("model.safetensors"))


def test_gradient_scores_reach_frozen_weights_and_leave_them_frozen():
    """MRS and Taylor differentiate through every Conv2d/Linear, airbench's frozen whitening conv included
    (a sweep with prune=mrs died on it: 'One of the differentiated Tensors does not require grad')."""
    from robprune.prune.channel.sensitivity import layer_gradients, prunable_layers

    model = airbench(**CIFAR, width=4).eval()
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8) % 10
    grads = layer_gradients(model, prunable_layers(model), x, y, 4)
    assert grads["whiten"].abs().sum() > 0 and not model.whiten.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
