"""Measurement: parameter and MAC counts on layers with known answers (non-zero params of masked models),
latency contract, file size."""
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from robprune.checkpoint import save_checkpoint
from robprune.declarations import load_option
from robprune.errors import ConfigError
from robprune.measure import checkpoint_size_bytes, count_macs, count_nonzero_params, measure_latency
from robprune.models import build_model
from robprune.prune import prune_model
from robprune.prune.stats import count_params


def cnn8():
    cfg = OmegaConf.create({"_target_": "robprune.models.cnn8"})
    return build_model(cfg, in_channels=1, image_size=28, num_classes=10, mean=[0.5], std=[0.25])


def test_count_params_excludes_buffers():
    assert count_params(nn.Linear(3, 2)) == 8
    assert count_params(nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2))) == 18 + 4  # not running stats


def test_nonzero_params_of_a_masked_model_count_the_kept_weights_only():
    torch.manual_seed(0)  # unseeded, one CI run drew an initial value of exactly 0 (549,993 nonzero vs 549,994)
    model = cnn8()
    assert count_nonzero_params(model) == count_params(model)  # dense: nothing removed
    prune_model(model, load_option("prune", "global_magnitude"), example_inputs=torch.rand(1, 1, 28, 28))
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros >= 0.89 * sum(w.numel() for w in weights)  # prune.sparsity 0.9
    assert count_nonzero_params(model) == count_params(model) - zeros < count_params(model)


def test_nonzero_params_keep_zero_biases_and_bn():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight[0] = 0.0  # 9 removed weights
        model[2].bias.zero_()  # a zero bias is a value, not a removed weight (BN's bias is zero at init too)
    assert count_params(model) == 18 + 4 + 6 and count_nonzero_params(model) == 9 + 4 + 6


def test_count_macs_known_conv_batch_one():
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)  # 2 out × 4×4 positions × 9 taps
    assert count_macs(conv, torch.zeros(5, 1, 4, 4)) == 288


def test_pruning_reduces_macs_and_params():
    model = cnn8()
    x = torch.rand(1, 1, 28, 28)
    macs, params = count_macs(model, x), count_params(model)
    prune_model(model, load_option("prune", "l1_filter"), example_inputs=x)
    assert count_macs(model, x) < 0.5 * macs and count_params(model) < 0.5 * params


class Recorder(nn.Module):
    """Counts calls and records whether each ran in eval mode under inference mode."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3)
        self.seen = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_inference_mode_enabled()))
        return self.bn(x)


@pytest.mark.parametrize("training", [True, False])
def test_latency_contract(training):
    model = Recorder().train(training)
    stats = model.bn.running_mean.clone()
    out = measure_latency(model, torch.randn(7, 3), repeats=4, warmup=2)
    assert set(out) == {"latency_ms", "latency_batch_size", "latency_repeats", "latency_threads", "latency_device"}
    assert out["latency_ms"] > 0 and out["latency_batch_size"] == 7 and out["latency_repeats"] == 4
    assert out["latency_threads"] == torch.get_num_threads() and out["latency_device"] == "cpu"
    assert model.seen == [(False, True)] * 6
    assert model.training == training and torch.equal(model.bn.running_mean, stats)


def test_latency_rejects_zero_repeats():
    with pytest.raises(ConfigError, match="latency.repeats must be > 0"):
        measure_latency(nn.Linear(2, 2), torch.zeros(1, 2), repeats=0)


def test_checkpoint_size_bytes(tmp_path):
    arch = {"model": {"_target_": "robprune.models.cnn8"}, "in_channels": 1, "image_size": 28, "num_classes": 10,
            "mean": [0.5], "std": [0.25]}
    directory = save_checkpoint(cnn8(), tmp_path / "c", arch=arch)
    size = (directory / "model.safetensors").stat().st_size
    assert checkpoint_size_bytes(directory) == checkpoint_size_bytes(str(directory / "model.safetensors")) == size
    assert size > 4 * count_params(cnn8())  # float32 weights plus header


def _measured(device):
    from robprune.data import build_data
    from robprune.compose import compose
    from robprune.measure import measure

    cfg = compose(["model.width=8", "eval.latency.repeats=3", "eval.latency.warmup=1", "eval.latency.batch_size=16"])
    data = build_data(cfg.dataset, cache_dir=cfg.data.cache_dir)
    arch = {"model": OmegaConf.to_container(cfg.model), **data.arch_record()}
    model = build_model(cfg.model, **data.arch_record())
    return measure(model, {"arch": arch, "pruning_history": [], "quant": None}, data, cfg, device), model


def test_cpu_runs_report_cpu_latency_only():
    out, _ = _measured(torch.device("cpu"))
    assert out["latency_device"] == "cpu" and out["latency_ms"] > 0 and "latency_cpu_ms" not in out


@pytest.mark.gpu
def test_cuda_runs_time_latency_on_the_gpu_with_events_and_keep_the_cpu_time():
    out, model = _measured(torch.device("cuda"))
    assert out["latency_device"].startswith("cuda") and out["latency_ms"] > 0 and out["latency_threads"] is None
    assert out["latency_cpu_ms"] > 0 and out["latency_cpu_threads"] == torch.get_num_threads()
    assert next(model.parameters()).device.type == "cpu"  # the GPU timing used a copy
