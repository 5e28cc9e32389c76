"""Attack contract, run over every registered attack, plus PGD/AutoAttack specifics.

The model is small_cnn trained for a few seconds on sklearn's bundled 8x8 digits (offline)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robprune.attacks import L2Ball, LinfBall, autoattack, capture_warnings, fgsm, pgd
from robprune.attacks.common import kl_loss, loss_target
from robprune.attacks.threat import l2_norm, linf_norm, normal_start
from robprune.config import config_dir
from robprune.errors import ConfigError
from robprune.models import small_cnn
from robprune.registry import ATTACKS

EPS, EPS_L2 = 0.1, 0.5



def digits(seed: int = 0):
    """sklearn digits as (N, 1, 8, 8) float pixels in [0, 1] and int64 labels, shuffled by seed."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[perm], y[perm]


def train_small_cnn(x, y, *, epochs: int = 8, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A few seconds of Adam on (x, y): about 95% test accuracy on digits. Returned in eval mode."""
    torch.manual_seed(seed)
    model = small_cnn(in_channels=1, image_size=8, num_classes=num_classes, mean=[0.5], std=[0.5])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            F.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    """(model, x_test[:128], y_test[:128])."""
    x, y = digits()
    model = train_small_cnn(x[:1400], y[:1400])
    return model, x[1400:1528], y[1400:1528]


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@dataclass
class Case:
    name: str  # registry key, then a variant
    attack: Callable
    eps: float
    norm: Callable


# The conf file's own options, shrunk to a few steps; eps by the file's threat model. A newly registered
# attack (conf/attack/<name>.yaml + a registration) is picked up here without editing this file.
SHRINK_ATTACK = {"steps": 5, "n_iter": 5, "n_queries": 20, "seed": 0, "batch_size": 64}


def registry_case(name: str) -> Case:
    """The contract case of a registered image attack, bound from conf/attack/<name>.yaml."""
    from omegaconf import OmegaConf

    node = OmegaConf.load(config_dir() / "attack" / f"{name}.yaml")
    norm = str(node.get("norm", "linf")).lower()
    eps = EPS_L2 if norm == "l2" else EPS
    params = {k: SHRINK_ATTACK[k] if k in SHRINK_ATTACK else node[k] for k in node if k not in ("_target_", "_partial_", "eps", "defaults")}
    if name == "autoattack":  # the standard suite's FAB-T and 5000-query Square take minutes: two of its attacks
        params.update(version="custom", attacks=["apgd-ce", "square"])
    assert ATTACKS.find(ATTACKS.get(name)) is not None
    return Case(name, partial(ATTACKS.get(name), eps=eps, **params), eps, l2_norm if norm == "l2" else linf_norm)


VARIANTS = [
    Case("fgsm", partial(fgsm, eps=EPS), EPS, linf_norm),
    Case("fgsm-l2", partial(fgsm, eps=EPS_L2, norm="l2"), EPS_L2, l2_norm),
    Case("pgd-linf", partial(pgd, eps=EPS, steps=5), EPS, linf_norm),
    Case("pgd-l2", partial(pgd, eps=EPS_L2, steps=5, norm="l2"), EPS_L2, l2_norm),
    Case("pgd-restarts-earlystop", partial(pgd, eps=EPS, steps=5, restarts=2, early_stop=True), EPS, linf_norm),
    Case("pgd-kl", partial(pgd, eps=EPS, steps=5, loss="kl", random_start="normal"), EPS, linf_norm),
    Case("pgd-kl-l2-restarts", partial(pgd, eps=EPS_L2, steps=5, norm="l2", loss="kl", restarts=2), EPS_L2, l2_norm),
    Case("autoattack-apgd-fab", partial(autoattack, eps=EPS, attacks=["apgd-ce", "fab-t"], n_iter=5), EPS, linf_norm),
]
CASES = [registry_case(name) for name in ATTACKS.names(modality="image")] + VARIANTS


def test_cases_cover_registry():
    """Every registered image attack has a case bound from its own conf file, and every variant is of a
    registered attack."""
    names = ATTACKS.names(modality="image")
    assert [case.name for case in CASES[:len(names)]] == list(names)
    assert {case.name.split("-")[0] for case in VARIANTS} <= set(names)
    assert all((config_dir() / "attack" / f"{name}.yaml").is_file() for name in names)


@pytest.mark.parametrize("training", [False, True], ids=["eval-mode", "train-mode"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_attack_contract(case, training, trained):
    model, x, y = trained
    x, y = x[:64], y[:64]
    model.train(training)
    params = list(model.parameters())
    for i, p in enumerate(params):  # half the parameters carry a gradient, half None
        p.grad = torch.full_like(p, 0.5) if i % 2 == 0 else None
    grads_before = [None if p.grad is None else p.grad.clone() for p in params]
    grad_objects = [p.grad for p in params]
    weights_before = [p.detach().clone() for p in params]
    try:
        x_adv = case.attack(model, x, y)
        assert model.training is training
        assert all(m.training is training for m in model.modules())
        for p, g, g_obj, w in zip(params, grads_before, grad_objects, weights_before):
            assert p.grad is g_obj  # the very same object (or None) is left in place
            assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g))
            assert torch.equal(p.detach(), w)
    finally:
        model.eval()
        for p in params:
            p.grad = None
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert case.norm(x_adv - x).max().item() <= case.eps + 1e-6
    assert accuracy(model, x_adv, y) <= accuracy(model, x, y)


def test_pgd_at_least_as_strong_as_fgsm(trained):
    model, x, y = trained
    torch.manual_seed(0)
    acc_fgsm = accuracy(model, fgsm(model, x, y, eps=EPS), y)
    acc_pgd = accuracy(model, pgd(model, x, y, eps=EPS, steps=10), y)
    assert acc_pgd <= acc_fgsm + 1e-9
    assert acc_pgd < accuracy(model, x, y)  # the attack does something at this eps


def count_images(model: nn.Module):
    """Forward hook counting images through the model; returns (counter dict, hook handle)."""
    seen = {"images": 0, "calls": 0}

    def hook(_module, inputs, _output):
        seen["images"] += inputs[0].shape[0]
        seen["calls"] += 1

    return seen, model.register_forward_hook(hook)


def test_early_stop_same_strength_fewer_gradient_evaluations(trained):
    model, x, y = trained
    results = {}
    for early_stop in (False, True):
        seen, handle = count_images(model)
        x_adv = pgd(model, x, y, eps=EPS, steps=10, early_stop=early_stop, generator=torch.Generator().manual_seed(0))
        handle.remove()
        results[early_stop] = (accuracy(model, x_adv, y), seen["images"])
    (acc_full, images_full), (acc_es, images_es) = results[False], results[True]
    assert images_full == 10 * len(x)
    assert images_es < images_full
    # early stop keeps each example's first fooling point, so it can only be as strong or stronger
    # (up to examples the last steps of the full run would have fooled; small tolerance)
    assert acc_es <= acc_full + 2 / len(x)


def test_restarts_keep_a_fooling_point(trained):
    model, x, y = trained
    gen = torch.Generator().manual_seed(0)
    acc_1 = accuracy(model, pgd(model, x, y, eps=EPS, steps=5, generator=gen), y)
    gen = torch.Generator().manual_seed(0)
    acc_3 = accuracy(model, pgd(model, x, y, eps=EPS, steps=5, restarts=3, generator=gen), y)
    assert acc_3 <= acc_1 + 1e-9  # restart 1 is identical (same generator); later ones only add fooled points


def test_generator_and_global_rng_make_pgd_deterministic(trained):
    model, x, y = trained
    a = pgd(model, x, y, eps=EPS, steps=3, generator=torch.Generator().manual_seed(5))
    b = pgd(model, x, y, eps=EPS, steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    torch.manual_seed(7)
    c = pgd(model, x, y, eps=EPS, steps=3)
    torch.manual_seed(7)
    assert torch.equal(c, pgd(model, x, y, eps=EPS, steps=3))


def clean_kl(model, x, x_adv) -> torch.Tensor:
    """Per-example KL(p(x) ‖ p(x_adv)) (N,), model in its current mode."""
    with torch.no_grad():
        return kl_loss(model(x_adv), F.softmax(model(x), dim=1))


@pytest.mark.parametrize("norm,eps,norm_fn", [("linf", EPS, linf_norm), ("l2", EPS_L2, l2_norm)])
def test_pgd_kl_ascends_the_kl_inside_the_ball(norm, eps, norm_fn, trained):
    """loss='kl' (TRADES' inner maximisation) moves away from the clean distribution, in the ε-ball and [0, 1]."""
    model, x, y = trained
    x_adv = pgd(model, x, y, eps=eps, steps=10, norm=norm, loss="kl", random_start="normal",
                generator=torch.Generator().manual_seed(0))
    start = normal_start(x, 0.001, torch.Generator().manual_seed(0)).clamp(0, 1)
    assert clean_kl(model, x, x_adv).sum() > 10 * clean_kl(model, x, start).sum()
    assert norm_fn(x_adv - x).max().item() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_kl_computes_the_clean_distribution_once(trained):
    """One extra forward pass (the detached p(x)) besides the steps, shared by every restart."""
    model, x, y = trained
    for restarts, calls in [(1, 1 + 5), (2, 1 + 2 * (5 + 1))]:  # p(x) + steps (+ a final evaluation per restart)
        seen, handle = count_images(model)
        gen = torch.Generator().manual_seed(0)
        pgd(model, x[:16], y[:16], eps=EPS, steps=5, loss="kl", restarts=restarts, generator=gen)
        handle.remove()
        assert seen["calls"] == calls
    assert torch.equal(loss_target(model, x, y, "ce"), y)


def test_normal_start_is_trades_start(trained):
    """random_start='normal' with a zero step returns clamp(x + init_std·N(0, I)) from the generator."""
    model, x, y = trained
    x_adv = pgd(model, x, y, eps=EPS, steps=1, step_size=0.0, loss="kl", random_start="normal", init_std=0.01,
                generator=torch.Generator().manual_seed(3))
    expected = (x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    assert torch.equal(x_adv, expected)


@pytest.mark.parametrize("ball", [LinfBall(0.1), L2Ball(0.5)], ids=["linf", "l2"])
def test_random_start_inside_ball(ball):
    x = torch.rand(32, 3, 4, 4)
    start = ball.random_start(x, torch.Generator().manual_seed(0))
    assert ball.norm(start - x).max().item() <= ball.eps + 1e-6
    assert ball.norm(start - x).min().item() > 0


def test_adverfine_compat_uses_normalised_units(trained):
    """Adver-Fine: eps in (x - .5)/.5 units, so pixel L∞ = eps/2; no random start, no clamp."""
    model, x, y = trained
    x_adv = pgd(model, x, y, eps=EPS, steps=5, compat="adverfine")
    assert linf_norm(x_adv - x).max().item() == pytest.approx(EPS / 2, abs=1e-6)
    assert torch.equal(x_adv, pgd(model, x, y, eps=EPS, steps=5, compat="adverfine"))  # deterministic
    assert x_adv.min() < 0  # digits have zero pixels: without a clamp some go negative


@pytest.mark.parametrize("kwargs, key", [
    ({"eps": -0.1, "steps": 5}, "attack.eps"),
    ({"eps": 0.1, "steps": 0}, "attack.steps"),
    ({"eps": 0.1, "steps": 5, "norm": "l3"}, "attack.norm"),
    ({"eps": 0.1, "steps": 5, "restarts": 0}, "attack.restarts"),
    ({"eps": 0.1, "steps": 5, "loss": "mse"}, "attack.loss"),
    ({"eps": 0.1, "steps": 5, "compat": "madry"}, "attack.compat"),
    ({"eps": 0.1, "steps": 5, "random_start": "gaussian"}, "attack.random_start"),
    ({"eps": 0.1, "steps": 5, "random_start": "normal", "init_std": -0.1}, "attack.init_std"),
    ({"eps": 0.1, "steps": 5, "norm": "l2", "compat": "adverfine"}, "attack.norm"),
])
def test_pgd_bad_arguments_name_the_key(kwargs, key, trained):
    model, x, y = trained
    with pytest.raises(ConfigError, match=key):
        pgd(model, x[:2], y[:2], **kwargs)


def test_fgsm_and_autoattack_bad_arguments(trained):
    model, x, y = trained
    with pytest.raises(ConfigError, match=r"attack\.eps must be >= 0, got -1"):
        fgsm(model, x[:2], y[:2], eps=-1)
    with pytest.raises(ConfigError, match="attack.norm"):
        autoattack(model, x[:2], y[:2], eps=0.1, norm="linf")  # pyautoattack spells it Linf
    with pytest.raises(ConfigError, match="attack.attacks"):
        autoattack(model, x[:2], y[:2], eps=0.1, attacks=["apgd-xx"])


def test_autoattack_rejects_targeted_attacks_for_3_classes():
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    model = small_cnn(in_channels=1, image_size=8, num_classes=3, mean=[0.5], std=[0.5]).eval()
    with pytest.raises(ConfigError, match="4 classes"):
        autoattack(model, x, y, eps=0.1)
    x_adv = autoattack(model, x, y, eps=0.1, attacks=["apgd-ce"], n_iter=2)  # CE works for any class count
    assert linf_norm(x_adv - x).max() <= 0.1 + 1e-6


def test_autoattack_fits_target_classes_to_model(trained):
    """5 classes: APGD-T/FAB-T may only target 4 classes; pyautoattack's check must stay silent."""
    model, x, y = trained
    keep = y < 5
    x5, y5 = x[keep][:16], y[keep][:16]
    model5 = train_small_cnn(x5, y5, epochs=2, num_classes=5)
    with capture_warnings() as messages:
        autoattack(model5, x5, y5, eps=0.1, attacks=["apgd-t", "fab-t"], n_iter=2)
    assert not any("target classes" in m for m in messages)


def test_autoattack_deterministic_and_leaves_global_rng_alone(trained):
    model, x, y = trained
    state = torch.get_rng_state()
    a = autoattack(model, x[:32], y[:32], eps=EPS, attacks=["apgd-ce"], n_iter=5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # pyautoattack reseeds inside; we fork
    b = autoattack(model, x[:32], y[:32], eps=EPS, attacks=["apgd-ce"], n_iter=5, seed=3)
    assert torch.equal(a, b)


def test_autoattack_logs_routed_and_check_warnings_captured(trained, caplog):
    """A model that outputs probabilities trips pyautoattack's logits check: the warning is captured,
    and its records (DEBUG progress included) arrive on robprune's logger."""
    model, x, y = trained
    softmax_model = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    aa_logger = logging.getLogger("auto-attack")
    before = (aa_logger.level, aa_logger.propagate, list(aa_logger.handlers))
    with caplog.at_level(logging.DEBUG, logger="robprune"), capture_warnings() as messages:
        autoattack(softmax_model, x[:8], y[:8], eps=EPS, attacks=["apgd-ce"], n_iter=2)
    assert any("probability distribution" in m for m in messages)
    routed = [r for r in caplog.records if r.name == "robprune.attacks.autoattack"]
    assert any(r.levelno == logging.DEBUG for r in routed)
    assert any(r.levelno == logging.WARNING and "probability" in r.getMessage() for r in routed)
    assert (aa_logger.level, aa_logger.propagate, list(aa_logger.handlers)) == before


def test_autoattack_restores_mixed_module_modes(trained):
    model, x, y = trained
    model.train()
    model.classifier.eval()  # e.g. a frozen head inside a model being trained
    modes = [m.training for m in model.modules()]
    try:
        autoattack(model, x[:8], y[:8], eps=EPS, attacks=["apgd-ce"], n_iter=2)
        assert [m.training for m in model.modules()] == modes
    finally:
        model.eval()


def test_empty_batch(trained):
    model, x, y = trained
    for name, attack in [("pgd", partial(pgd, eps=EPS, steps=2, restarts=2)), ("aa", partial(autoattack, eps=EPS))]:
        out = attack(model, x[:0], y[:0])
        assert out.shape == x[:0].shape, name
