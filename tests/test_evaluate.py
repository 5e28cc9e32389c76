"""evaluate_robustness on a tiny model trained on sklearn's bundled 8x8 digits, with the real
conf/eval and conf/attack files composed by Hydra inside a minimal config tree (these tests do not
depend on conf/config.yaml)."""
from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn

from robprune.config import config_dir, instantiate
from robprune.errors import ConfigError, DataError
from robprune.evaluate import _accuracies, evaluate_robustness
from robprune.models import small_cnn

# AutoAttack shrunk for CPU tests: two white-box attacks, few iterations, a small subset
CHEAP = ["eval.attacks.autoattack.attacks=[apgd-ce,apgd-t]", "eval.attacks.autoattack.n_iter=10",
         "eval.n_examples.autoattack=64", "eval.n_examples.pgd20=160", "eval.large_eps_n=32"]



@pytest.fixture(scope="module")
def conf_tree(tmp_path_factory):
    """tmp conf/ with our eval and attack groups and a config.yaml defining what they interpolate."""
    root = tmp_path_factory.mktemp("conf")
    for group in ("eval", "attack"):
        shutil.copytree(config_dir() / group, root / group)
    (root / "config.yaml").write_text(
        "defaults:\n  - eval: default\n  - _self_\nseed: 0\ndataset: {eps: 0.1, eps_l2: 1.0}\n")
    return root


def compose_eval(conf_tree, *overrides):
    with initialize_config_dir(config_dir=str(conf_tree), version_base="1.3"):
        return compose("config", overrides=list(overrides)).eval


@pytest.fixture(scope="module")
def data():
    """(model, x_test (397, 1, 8, 8) in [0, 1], y_test): small_cnn after a few seconds of Adam."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(raw.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    torch.manual_seed(0)
    model = small_cnn(in_channels=1, image_size=8, num_classes=10, mean=[0.5], std=[0.5])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(8):
        for i in range(0, 1400, 64):
            opt.zero_grad()
            F.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return model.eval(), x[1400:], y[1400:]


@pytest.fixture(scope="module")
def result(conf_tree, data):
    """evaluate_robustness with eval=default (shrunk) plus an FGSM attack on 100 points."""
    model, x, y = data
    cfg = compose_eval(conf_tree, *CHEAP, "+attack@eval.attacks.fgsm=fgsm", "+eval.n_examples.fgsm=100")
    return cfg, evaluate_robustness(model, x, y, cfg, device="cpu", seed=0)


@pytest.mark.parametrize("name", ["default", "pgd", "autoattack", "clean"])
def test_eval_configs_compose_and_build(conf_tree, name):
    cfg = compose_eval(conf_tree, f"eval={name}")
    assert {"attacks", "n_examples", "batch_size", "large_eps_check", "latency"} <= set(cfg)
    for attack_name in cfg.attacks:
        attack = instantiate(cfg.attacks[attack_name], f"eval.attacks.{attack_name}")
        assert callable(attack) and attack.keywords["eps"] == 0.1  # ${dataset.eps} resolved
    expected = {"default": {"pgd20", "autoattack"}, "pgd": {"pgd20"}, "autoattack": {"autoattack"}, "clean": set()}
    assert set(cfg.attacks) == expected[name]
    if "pgd20" in cfg.attacks:
        assert cfg.attacks.pgd20.steps == 20 and cfg.attacks.pgd20.early_stop


def test_attack_configs_compose(conf_tree):
    for option, target in [("pgd", "pgd"), ("pgd_l2", "pgd"), ("fgsm", "fgsm"), ("autoattack", "autoattack")]:
        cfg = compose_eval(conf_tree, f"+attack@eval.attacks.extra={option}")
        assert cfg.attacks.extra._target_ == f"robprune.attacks.{target}"
    assert compose_eval(conf_tree, "+attack@eval.attacks.extra=pgd_l2").attacks.extra.eps == 1.0


def test_metric_keys_and_subset_sizes(result, data):
    cfg, metrics = result
    names = ["pgd20", "autoattack", "fgsm"]
    for name in names:
        assert {f"robust_acc/{name}", f"clean_acc/{name}", f"n_eval/{name}"} <= set(metrics)
    assert (metrics["n_eval/pgd20"], metrics["n_eval/autoattack"], metrics["n_eval/fgsm"]) == (160, 64, 100)
    assert metrics["n_eval/worst"] == 64  # common prefix of the nested subsets
    assert 0.8 < metrics["clean_acc"] <= 1.0
    for name in names:
        assert 0 <= metrics[f"robust_acc/{name}"] <= metrics[f"clean_acc/{name}"]
    # the smallest subset is exactly the common prefix, so worst <= that attack's robust accuracy
    assert metrics["robust_acc/worst"] <= metrics["robust_acc/autoattack"]
    assert metrics["robust_acc/worst"] < metrics["clean_acc/autoattack"]  # attacks do something at eps 0.1


def test_checks(result):
    _, metrics = result
    checks = metrics["checks"]
    assert checks["robust_le_clean"] is True
    assert checks["autoattack_le_pgd"] is True
    assert 0.0 <= checks["zero_grad_fraction"] <= 1.0
    assert checks["large_eps_acc"] <= 0.05 and checks["large_eps_ok"] is True
    assert isinstance(checks["autoattack_warnings"], list)
    assert checks["passed"] is True


def test_deterministic_for_a_seed_and_rng_untouched(conf_tree, data, result):
    model, x, y = data
    cfg, first = result
    state = torch.get_rng_state()
    again = evaluate_robustness(model, x, y, cfg, device="cpu", seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert again == first


def test_worst_case_is_per_example_not_an_average():
    correct = torch.ones(4, dtype=torch.bool)
    perm = torch.arange(4)
    robust = {"a": torch.tensor([True, True, False, False]), "b": torch.tensor([False, False, True, True]),
              "c": torch.tensor([True, True, True])}
    metrics = _accuracies(correct, perm, robust)
    assert metrics["robust_acc/a"] == metrics["robust_acc/b"] == 0.5
    assert metrics["robust_acc/worst"] == 0.0 and metrics["n_eval/worst"] == 3


def test_clean_only_uint8_and_modes_restored(conf_tree, data):
    model, x, y = data
    cfg = compose_eval(conf_tree, "eval=clean")
    x8 = (x * 255).round().to(torch.uint8)
    model.train()
    try:
        metrics = evaluate_robustness(model, x8, y, cfg, device="cpu", seed=0)
        assert model.training
    finally:
        model.eval()
    with torch.no_grad():
        expected = (model(x8.float() / 255).argmax(1) == y).float().mean().item()
    assert metrics["clean_acc"] == pytest.approx(expected)
    assert not any(k.startswith(("robust_acc", "n_eval")) for k in metrics)
    checks = metrics["checks"]
    assert checks["autoattack_le_pgd"] is None and checks["large_eps_acc"] is None and checks["passed"] is True


def test_autoattack_warnings_reach_checks(conf_tree, data):
    """A model that outputs probabilities trips pyautoattack's logits check."""
    model, x, y = data
    softmax_model = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    cfg = compose_eval(conf_tree, "eval=autoattack", "eval.attacks.autoattack.attacks=[apgd-ce]",
                       "eval.attacks.autoattack.n_iter=2", "eval.n_examples.autoattack=16", "eval.large_eps_check=false")
    checks = evaluate_robustness(softmax_model, x, y, cfg, device="cpu", seed=0)["checks"]
    assert any("probability distribution" in w for w in checks["autoattack_warnings"])


def test_bad_inputs(conf_tree, data):
    model, x, y = data
    cfg = compose_eval(conf_tree, "eval=pgd", "eval.n_examples.pgd20=0")
    with pytest.raises(ConfigError, match="eval.n_examples.pgd20"):
        evaluate_robustness(model, x, y, cfg, device="cpu", seed=0)
    cfg = compose_eval(conf_tree, "eval=pgd", "eval.attacks.pgd20.eps=-1")
    with pytest.raises(ConfigError, match="attack.eps"):
        evaluate_robustness(model, x[:8], y[:8], cfg, device="cpu", seed=0)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        evaluate_robustness(model, x * 16, y, compose_eval(conf_tree, "eval=clean"), device="cpu", seed=0)

