"""The one training loop: objectives, schedules, epoch checkpoints and bit-exact resume."""
import functools

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from robprune.errors import ConfigError
from robprune.models import small_cnn
from robprune.train import build_training, fit, per_step, schedule_factor
from robprune.train.objectives import PGDAT, Standard


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long() + 2 * (x[:, 0, 0, 0] > 0.5).long()
    return x, y


class Loader:
    """Minimal shuffling loader drawing from the generator, like robprune.data.BatchLoader."""

    def __init__(self, x, y, bs, generator):
        self.x, self.y, self.bs, self.g = x, y, bs, generator

    def __len__(self):
        return (len(self.y) + self.bs - 1) // self.bs

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=self.g)
        for i in range(0, len(order), self.bs):
            idx = order[i:i + self.bs]
            yield self.x[idx], self.y[idx]


def _model(seed=0):
    torch.manual_seed(seed)
    return small_cnn(in_channels=1, image_size=8, num_classes=4, mean=[0.5], std=[0.5], width=4, hidden=8)


def _fgsm(model, x, y, *, eps):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return (x + eps * g.sign()).clamp(0, 1).detach()


def _train(epochs, ckpt, seed=0, stop_after=None):
    x, y = _data()
    model = _model(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed + 2)
    obj = PGDAT(attack=functools.partial(_fgsm, eps=0.1), eps_ramp_epochs=2)
    hist = fit(model, Loader(x, y, 32, gen), obj, opt, epochs=stop_after or epochs, generator=gen,
               lr_factor=lambda e: 0.5 ** e, checkpoint_dir=ckpt, progress=False)
    return model, hist


def test_fit_reduces_loss_and_logs_each_epoch(tmp_path):
    x, y = _data()
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    hist = fit(model, Loader(x, y, 32, gen), Standard(), opt, epochs=6, generator=gen, lr_factor=lambda e: 1.0, progress=False)
    assert [h["epoch"] for h in hist] == list(range(1, 7))
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert not model.training


def test_resume_after_interruption_is_bit_identical(tmp_path):
    full, hist_full = _train(4, tmp_path / "a")
    _train(4, tmp_path / "b", stop_after=2)          # "killed" after epoch 2: the checkpoint says epoch 2
    resumed, hist_resumed = _train(4, tmp_path / "b")  # same command again resumes at epoch 3
    assert [h["epoch"] for h in hist_resumed] == [1, 2, 3, 4]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert [h["loss"] for h in hist_full] == [h["loss"] for h in hist_resumed]


def test_torn_checkpoint_starts_over(tmp_path):
    _train(2, tmp_path, stop_after=1)
    (tmp_path / "last.json").write_text('{"epoch": 7')
    _, hist = _train(2, tmp_path)
    assert [h["epoch"] for h in hist] == [1, 2]


def test_eps_ramp_scales_eps_linearly():
    obj = PGDAT(attack=functools.partial(_fgsm, eps=0.3), eps_ramp_epochs=3)
    seen = []
    for epoch in range(4):
        obj.on_epoch_start(epoch)
        seen.append(obj.current_attack().keywords["eps"])
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.3])


def test_schedules():
    cos = OmegaConf.create({"name": "cosine"})
    step = OmegaConf.create({"name": "step", "milestones": [2, 4], "gamma": 0.1})
    assert schedule_factor(cos, 0, 10) == 1.0 and schedule_factor(cos, 5, 10) == pytest.approx(0.5)
    assert [schedule_factor(step, e, 6) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    linear = OmegaConf.create({"name": "linear", "warmup": 0.1})  # BERT's warm-up then decay, per step
    assert per_step(linear) and not per_step(cos)
    assert [schedule_factor(linear, t, 2) for t in (0.0, 0.1, 0.2, 1.1, 2.0)] == pytest.approx([0, 0.5, 1, 0.5, 0])


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_build_training_sgd_and_errors(momentum):
    cfg = OmegaConf.create({"epochs": 1, "objective": {"_target_": "robprune.train.objectives.standard"},
                            "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "momentum": momentum},
                            "schedule": {"name": "constant"}})
    obj, opt = build_training(cfg, _model(), "train")
    assert isinstance(obj, Standard) and opt.param_groups[0]["momentum"] == momentum
    bad = OmegaConf.merge(cfg, {"schedule": {"name": "exponential"}})
    with pytest.raises(ConfigError, match="train.schedule.name"):
        build_training(bad, _model(), "train")
    evil = OmegaConf.merge(cfg, {"objective": {"_target_": "os.system"}})
    with pytest.raises(ConfigError, match="not allowed"):
        build_training(evil, _model(), "train")
