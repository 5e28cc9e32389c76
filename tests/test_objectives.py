"""TRADES, MART and adv_ratio: the losses against hand transcriptions of the papers' formulas, the
objectives end to end on a fixed tiny batch, and their configs."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robprune.attacks import pgd
from robprune.compose import compose
from robprune.config import instantiate
from robprune.errors import ConfigError
from robprune.models import Normalize
from robprune.train.objectives import PGDAT, Standard, kl_adversary, mart, mart_loss, pgd_at, trades, trades_loss

EPS = 0.1


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(Normalize([0.5], [0.25]), nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).train()


def batch(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def logits_pair():
    g = torch.Generator().manual_seed(2)
    return torch.randn(4, 5, generator=g) * 2, torch.randn(4, 5, generator=g) * 2, torch.tensor([0, 3, 1, 4])


def softmax_row(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_trades_loss_matches_the_paper():
    """Zhang et al. 2019, Eq. 5: CE(f(x), y) + β·mean_i KL(f(x_i) ‖ f(x'_i)), written out per example."""
    nat, adv, y = logits_pair()
    expected = 0.0
    for zn, za, t in zip(nat.tolist(), adv.tolist(), y.tolist()):
        p, q = softmax_row(zn), softmax_row(za)
        expected += -math.log(p[t]) + 6.0 * sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))
    assert trades_loss(nat, adv, y, 6.0).item() == pytest.approx(expected / 4, rel=1e-5)


def test_mart_loss_matches_the_paper():
    """Wang et al. 2020, Eq. 9: BCE(p(x'), y) + β·mean_i KL(p(x_i) ‖ p(x'_i))·(1 − p_y(x_i)),
    BCE = −log p'_y − log(1 − max_{k≠y} p'_k). The code's 1e-12 / 1.0001 guards shift it by < 1e-3."""
    nat, adv, y = logits_pair()
    expected = 0.0
    for zn, za, t in zip(nat.tolist(), adv.tolist(), y.tolist()):
        p, q = softmax_row(zn), softmax_row(za)
        bce = -math.log(q[t]) - math.log(1 - max(v for k, v in enumerate(q) if k != t))
        kl = sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))
        expected += bce + 6.0 * kl * (1 - p[t])
    assert mart_loss(nat, adv, y, 6.0).item() == pytest.approx(expected / 4, rel=1e-3)


def test_trades_with_beta_zero_is_standard_training():
    model, (x, y) = tiny_model(), batch()
    loss = trades(beta=0.0, eps=EPS, steps=3)(model, x, y)
    model_b = tiny_model()
    assert loss.item() == Standard()(model_b, x, y).item()
    assert model.training  # the inner maximisation ran in eval mode and restored train mode


def test_trades_objective_is_the_loss_on_its_kl_adversary():
    model, (x, y) = tiny_model(), batch()
    torch.manual_seed(5)
    loss = trades(beta=6.0, eps=EPS, steps=3)(model, x, y)
    model = tiny_model()
    torch.manual_seed(5)
    model.eval()
    x_adv = kl_adversary(model, x, eps=EPS, steps=3, step_size=EPS / 4)
    model.train()
    assert loss.item() == pytest.approx(trades_loss(model(x), model(x_adv), y, 6.0).item(), rel=1e-6)
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    model.eval()
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        kl = lambda xp: F.kl_div(F.log_softmax(model(xp), 1), p, reduction="sum").item()  # noqa: E731
        assert kl(x_adv) > kl(x + 0.001)  # the inner loop ascends the KL


def test_kl_adversary_leaves_gradients_alone():
    model, (x, _) = tiny_model(), batch()
    model.eval()
    kl_adversary(model, x, eps=EPS, steps=2, step_size=0.05)
    assert all(p.grad is None for p in model.parameters())


def shift(model, x, y):
    """A deterministic stand-in attack: every pixel +0.05 (clamped)."""
    return (x + 0.05).clamp(0, 1)


def test_mart_objective_is_the_loss_on_its_attack():
    model, (x, y) = tiny_model(), batch()
    loss = mart(attack=shift, beta=6.0)(model, x, y)
    model = tiny_model()
    assert loss.item() == pytest.approx(mart_loss(model(x), model(shift(model, x, y)), y, 6.0).item(), rel=1e-6)


@pytest.mark.parametrize("ratio,k", [(1.0, 6), (0.5, 3), (0.2, 1), (0.01, 1)])
def test_adv_ratio_attacks_the_first_fraction_of_the_batch(ratio, k):
    seen = []

    def spy(model, x, y):
        seen.append(len(y))
        return shift(model, x, y)

    model, (x, y) = tiny_model(), batch()
    loss = pgd_at(attack=spy, adv_ratio=ratio)(model, x, y)
    assert seen == [k]
    x_mix = torch.cat([shift(None, x[:k], None), x[k:]])
    assert loss.item() == pytest.approx(F.cross_entropy(tiny_model()(x_mix), y).item(), rel=1e-6)
    seen.clear()
    mart(attack=spy, adv_ratio=ratio)(tiny_model(), x, y)
    assert seen == [k]


@pytest.mark.parametrize("ratio", [0.0, 1.5, -0.2])
def test_adv_ratio_out_of_range(ratio):
    for build in (lambda: pgd_at(attack=shift, adv_ratio=ratio), lambda: trades(beta=6, eps=EPS, adv_ratio=ratio),
                  lambda: mart(attack=shift, adv_ratio=ratio)):
        with pytest.raises(ConfigError, match=r"objective.adv_ratio must be in \(0, 1\]"):
            build()
    with pytest.raises(ConfigError, match="objective.beta must be >= 0"):
        trades(beta=-1, eps=EPS)


@pytest.mark.parametrize("group,option", [("finetune", "trades"), ("finetune", "mart"), ("train", "trades")])
def test_configs_build_objectives_that_train(group, option):
    cfg = compose([f"{group}={option}", "dataset=digits"])
    objective = instantiate(cfg[group].objective, f"{group}.objective")
    assert objective.beta == 6.0 and objective.adv_ratio == 1.0
    model, (x, y) = tiny_model(), batch()
    loss = objective(model, x, y % 5)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    if option == "mart":
        assert isinstance(objective, PGDAT) and objective.attack.func is pgd and objective.attack.keywords["eps"] == 0.1
