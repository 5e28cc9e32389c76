"""TRADES, MART and adv_ratio: the losses against hand transcriptions of the papers' formulas, the
objectives end to end on a fixed tiny batch, and their configs."""
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robprune.attacks import pgd
from robprune.compose import compose
from robprune.config import instantiate
from robprune.errors import ConfigError
from robprune.models import Normalize
from robprune.train.objectives import MART, TRADES, Standard, mart, mart_loss, pgd_at, trades, trades_loss

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


def kl_pgd(**kwargs):
    """TRADES' inner attack as the configs bind it: PGD ascending the KL from x + 0.001·N(0, I)."""
    return partial(pgd, **{"eps": EPS, "steps": 3, "loss": "kl", "random_start": "normal", **kwargs})


def test_trades_with_beta_zero_is_standard_training():
    model, (x, y) = tiny_model(), batch()
    loss = trades(attack=kl_pgd(), beta=0.0)(model, x, y)
    model_b = tiny_model()
    assert loss.item() == Standard()(model_b, x, y).item()
    assert model.training  # the inner maximisation ran in eval mode and restored train mode


def reference_kl_adversary(model, x, *, eps, steps, step_size):
    """The pre-PGD-loop TRADES inner maximisation (git show 15c2461:robprune/train/objectives.py,
    kl_adversary, L∞), itself Zhang et al.'s trades_loss loop: x + 0.001·randn, then sign steps on the
    summed KL, projected and clamped."""
    with torch.no_grad():
        p_nat = F.softmax(model(x), dim=1)
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_nat, reduction="sum")
            (grad,) = torch.autograd.grad(kl, [x_adv])
        x_adv = torch.min(torch.max(x_adv.detach() + step_size * grad.sign(), x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()


def reference_trades(model, x, y, *, beta, eps, steps, step_size):
    """(x', loss) of the pre-PGD-loop TRADES objective at adv_ratio 1: attack in eval mode, then
    CE(f(x), y) + β · sum KL / N (Zhang et al. 2019, Eq. 5, their batchmean)."""
    model.eval()
    x_adv = reference_kl_adversary(model, x, eps=eps, steps=steps, step_size=step_size)
    model.train()
    nat, adv = model(x), model(x_adv)
    kl = F.kl_div(F.log_softmax(adv, dim=1), F.softmax(nat, dim=1), reduction="sum") / len(y)
    return x_adv, F.cross_entropy(nat, y) + beta * kl


def saturated_batch():
    """batch() with exact 0 and 1 pixels (as digits have), where clamping the start would matter."""
    x, y = batch()
    x[:, :, :2] = 0.0
    x[:, :, -1] = 1.0
    return x, y


@pytest.mark.parametrize("ramp", [0, 2], ids=["full-eps", "ramped-half-eps"])
def test_trades_through_pgd_equals_the_previous_inner_loop(ramp):
    """Same seed: the PGD loop with loss=kl, random_start=normal gives the old loop's x' and loss
    (ε, and the eps/4 step, halved at epoch 0 of a 2-epoch ramp)."""
    x, y = saturated_batch()
    scale = 0.5 if ramp else 1.0
    model = tiny_model()  # seeds torch itself: build the model first, then seed the start
    torch.manual_seed(5)
    x_ref, loss_ref = reference_trades(model, x, y, beta=6.0, eps=EPS * scale, steps=10, step_size=EPS / 4 * scale)
    objective = trades(attack=kl_pgd(steps=10), beta=6.0, eps_ramp_epochs=ramp)
    objective.on_epoch_start(0)
    model = tiny_model()
    torch.manual_seed(5)
    loss = objective(model, x, y)
    assert loss.item() == pytest.approx(loss_ref.item(), abs=1e-6)
    model = tiny_model().eval()
    torch.manual_seed(5)
    x_adv = objective.current_attack()(model, x, y)
    assert (x_adv - x_ref).abs().max().item() <= 1e-6
    assert (x_adv - x).abs().max() <= EPS * scale + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_trades_inner_attack_ascends_the_kl():
    model, (x, y) = tiny_model(), batch()
    model.eval()
    torch.manual_seed(5)
    x_adv = kl_pgd()(model, x, y)
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        kl = lambda xp: F.kl_div(F.log_softmax(model(xp), 1), p, reduction="sum").item()  # noqa: E731
        assert kl(x_adv) > kl((x + 0.001).clamp(0, 1))
    assert all(p.grad is None for p in model.parameters())


def test_trades_rejects_an_attack_that_does_not_ascend_the_kl():
    with pytest.raises(ConfigError, match="objective.attack.loss must be kl"):
        trades(attack=partial(pgd, eps=EPS, steps=3), beta=6.0)


def kl_rows(nat, adv):
    """Per-example KL(softmax(nat_i) ‖ softmax(adv_i)) and p(x_i), written out."""
    out = []
    for zn, za in zip(nat.tolist(), adv.tolist()):
        p, q = softmax_row(zn), softmax_row(za)
        out.append((sum(pk * math.log(pk / qk) for pk, qk in zip(p, q)), p, q))
    return out


@pytest.mark.parametrize("ratio,k", [(1.0, 6), (0.5, 3), (0.2, 1)])
def test_trades_beta_weighs_the_mean_kl_over_the_attacked(ratio, k):
    """CE over all N + β·(1/k)·Σ_{attacked} KL, by hand (k = N: Zhang et al.'s Eq. 5 batchmean)."""
    model, (x, y) = tiny_model(), batch()
    loss = trades(attack=shift, beta=6.0, adv_ratio=ratio)(model, x, y)
    model = tiny_model()
    x_mix = torch.cat([shift(None, x[:k], None), x[k:]])
    rows = kl_rows(model(x), model(x_mix))
    ce = sum(-math.log(p[t]) for (_, p, _), t in zip(rows, y.tolist())) / len(y)
    expected = ce + 6.0 * sum(kl for kl, _, _ in rows[:k]) / k
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("ratio,k", [(1.0, 6), (0.5, 3)])
def test_mart_beta_weighs_the_mean_kl_over_the_attacked(ratio, k):
    """(1/N)·Σ_all BCE(p(x'_i)) (x' = x for the un-attacked) + β·(1/k)·Σ_{attacked} KL·(1 − p_y(x)), by hand."""
    model, (x, y) = tiny_model(), batch()
    loss = mart(attack=shift, beta=6.0, adv_ratio=ratio)(model, x, y)
    model = tiny_model()
    x_mix = torch.cat([shift(None, x[:k], None), x[k:]])
    rows = kl_rows(model(x), model(x_mix))
    bce, reg = 0.0, 0.0
    for i, ((kl, p, q), t) in enumerate(zip(rows, y.tolist())):
        bce += -math.log(q[t]) - math.log(1 - max(v for j, v in enumerate(q) if j != t))
        reg += kl * (1 - p[t]) if i < k else 0.0
    assert loss.item() == pytest.approx(bce / len(y) + 6.0 * reg / k, rel=1e-3)


def test_trades_ramp_scales_the_bound_attack():
    objective = trades(attack=kl_pgd(steps=10), beta=6.0, eps_ramp_epochs=4)
    objective.on_epoch_start(0)
    assert objective.current_attack().keywords["eps"] == pytest.approx(EPS / 4)
    objective.on_epoch_start(3)
    assert objective.current_attack().keywords["eps"] == EPS


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
    for build in (mart, trades):
        seen.clear()
        build(attack=spy, adv_ratio=ratio)(tiny_model(), x, y)
        assert seen == [k]


@pytest.mark.parametrize("ratio", [0.0, 1.5, -0.2])
def test_adv_ratio_out_of_range(ratio):
    for build in (lambda: pgd_at(attack=shift, adv_ratio=ratio), lambda: trades(attack=kl_pgd(), beta=6, adv_ratio=ratio),
                  lambda: mart(attack=shift, adv_ratio=ratio)):
        with pytest.raises(ConfigError, match=r"objective.adv_ratio must be in \(0, 1\]"):
            build()
    with pytest.raises(ConfigError, match="objective.beta must be >= 0"):
        trades(attack=kl_pgd(), beta=-1)


@pytest.mark.parametrize("group,option", [("finetune", "trades"), ("finetune", "mart"), ("train", "trades")])
def test_configs_build_objectives_that_train(group, option):
    cfg = compose([f"{group}={option}", "dataset=digits"])
    objective = instantiate(cfg[group].objective, f"{group}.objective")
    assert objective.beta == 6.0 and objective.adv_ratio == 1.0
    model, (x, y) = tiny_model(), batch()
    loss = objective(model, x, y % 5)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    assert isinstance(objective, MART if option == "mart" else TRADES)
    assert objective.attack.func is pgd and objective.attack.keywords["eps"] == 0.1
    if option == "trades":  # TRADES' inner maximisation: KL ascent from x + 0.001·N(0, I), eps/4 steps
        kw = objective.attack.keywords
        settings = (kw["loss"], kw["random_start"], kw["init_std"], kw["steps"], kw["step_size"])
        assert settings == ("kl", "normal", 0.001, 10, None)
