"""evaluate_robustness on a tiny model trained on sklearn's bundled 8x8 digits, with the real
conf/eval and conf/attack files composed by Hydra inside a minimal config tree (these tests do not
depend on conf/config.yaml)."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn

from robprune.config import config_dir, instantiate
from robprune.declarations import store_declarations
from robprune.errors import ConfigError, DataError
from robprune.evaluate import adversarial, evaluate_robustness
from robprune.data.tensors import seeded_indices
from robprune.evaluate.adversarial import _accuracies, robustness_blocks
from robprune.evaluate.blocks import block_seed
from robprune.evaluate.checks import ZERO_GRAD_MAX, autoattack_gap_check, ball_excess, ball_tolerance
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
    store_declarations()  # the declared defaults conf files pull in (robprune.declarations)
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


def test_checks_pass_on_a_fine_model(result):
    _, metrics = result
    checks = metrics["checks"]
    assert checks["failed"] == [] and checks["passed"] is True
    assert 0.0 <= checks["zero_grad_fraction"] <= checks["zero_grad_fraction_max"] == ZERO_GRAD_MAX
    assert checks["large_eps_acc"] <= checks["large_eps_acc_max"] == 0.05
    for name in ("pgd20", "autoattack", "fgsm"):  # every attack's returned examples are measured
        assert 0.0 <= checks[f"ball_violation/{name}"] <= checks[f"ball_tolerance/{name}"]
    assert checks["autoattack_gap/autoattack_vs_pgd20"] <= checks["autoattack_gap_max/autoattack_vs_pgd20"]
    assert checks["n_common/autoattack_vs_pgd20"] == 64 and checks["pgd_only_fooled/autoattack_vs_pgd20"] >= 0
    assert checks["autoattack_warnings"] == []
    assert "robust_le_clean" not in checks  # true by construction (only clean-correct points are attacked)
    # per sub-attack accuracy of AutoAttack, non-increasing, ending at its robust accuracy
    subs = [metrics["robust_acc/autoattack/apgd-ce"], metrics["robust_acc/autoattack/apgd-t"]]
    assert subs[0] >= subs[1] == metrics["robust_acc/autoattack"]


def test_deterministic_for_a_seed_and_rng_untouched(conf_tree, data, result):
    model, x, y = data
    cfg, first = result
    state = torch.get_rng_state()
    again = evaluate_robustness(model, x, y, cfg, device="cpu", seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert again == first


def test_blocks_are_seeded_runs_of_their_points(conf_tree, data):
    """A subset within one block is one attack run seeded with ``seed`` (what evaluation drew before
    blocks existed); past one block, block k is a run on its points seeded with block_seed(seed, k)
    (block 0: ``seed``), the flags joined in block order."""
    model, x, y = data
    pgd = ["eval=pgd", "eval.attacks.pgd20.steps=3", "eval.n_examples.pgd20=40", "eval.large_eps_check=false"]
    attack = instantiate(compose_eval(conf_tree, *pgd).attacks.pgd20, "eval.attacks.pgd20")  # random start: seeded
    perm = seeded_indices(x.shape[0], None, 5)

    def seeded_once(idx, seed):  # the points' clean-correct ones attacked in one batch under one seed
        with torch.no_grad():
            flags = model(x[idx]).argmax(1) == y[idx]
        torch.manual_seed(seed)
        todo = idx[flags]
        with torch.no_grad():
            flags[flags.clone()] = model(attack(model, x[todo], y[todo])).argmax(1) == y[todo]
        return flags

    def robust(block_size):
        cfg = compose_eval(conf_tree, *pgd, f"eval.block_size={block_size}")
        parts = robustness_blocks(model, x, y, cfg, device="cpu", seed=5)
        return torch.cat([part.runs["pgd20"].robust for part in parts if "pgd20" in part.runs])

    assert torch.equal(robust(1000), seeded_once(perm[:40], 5))
    blocks = [seeded_once(perm[start:min(start + 16, 40)], block_seed(5, k)) for k, start in enumerate(range(0, 40, 16))]
    assert torch.equal(robust(16), torch.cat(blocks))
    assert block_seed(5, 0) == 5 and len({block_seed(5, k) for k in range(100)}) == 100


def test_worst_case_is_per_example_not_an_average():
    correct = torch.ones(4, dtype=torch.bool)
    robust = {"a": torch.tensor([True, True, False, False]), "b": torch.tensor([False, False, True, True]),
              "c": torch.tensor([True, True, True])}
    metrics = _accuracies(correct, robust)
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
    assert checks["large_eps_acc"] is None and checks["zero_grad_fraction"] is None
    assert checks["failed"] == [] and checks["passed"] is True
    assert not any(k.startswith(("autoattack_gap", "ball_violation")) for k in checks)


def test_autoattack_warnings_reach_checks(conf_tree, data):
    """A model that outputs probabilities trips pyautoattack's logits check."""
    model, x, y = data
    softmax_model = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    cfg = compose_eval(conf_tree, "eval=autoattack", "eval.attacks.autoattack.attacks=[apgd-ce]",
                       "eval.attacks.autoattack.n_iter=2", "eval.n_examples.autoattack=16", "eval.large_eps_check=false")
    checks = evaluate_robustness(softmax_model, x, y, cfg, device="cpu", seed=0)["checks"]
    assert any("probability distribution" in w for w in checks["autoattack_warnings"])
    assert checks["passed"] is False
    assert any(r.startswith("autoattack_warnings: it seems that the output is a probability") for r in checks["failed"])


class _ZeroGrad(torch.autograd.Function):
    """Rounds to 8-bit grey levels on the way forward, passes no gradient back (gradient masking)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 255) / 255

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class _Masked(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_ZeroGrad.apply(x))


def test_zero_input_gradients_fail(conf_tree, data):
    """Before: zero gradients everywhere and 100% PGD accuracy still reported passed: true."""
    model, x, y = data
    cfg = compose_eval(conf_tree, "eval=pgd", "eval.attacks.pgd20.steps=3", "eval.attacks.pgd20.random_start=false", "eval.n_examples.pgd20=32",
                       "eval.large_eps_n=16")
    metrics = evaluate_robustness(_Masked(model).eval(), x, y, cfg, device="cpu", seed=0)
    checks = metrics["checks"]
    assert checks["zero_grad_fraction"] == 1.0 and metrics["robust_acc/pgd20"] == metrics["clean_acc/pgd20"]
    assert checks["passed"] is False
    assert any(r.startswith("zero_grad_fraction: 100.0% of 32 evaluated inputs") for r in checks["failed"])


@pytest.mark.parametrize("how", ["outside_ball", "outside_box"])
def test_attack_returning_points_outside_the_threat_model_fails(conf_tree, data, monkeypatch, how):
    """The examples are measured, not the attack's promise: eps=0.1 L∞, so x+0.3 leaves the ball and
    an unclamped x+0.05 leaves [0, 1] at bright pixels."""
    model, x, y = data
    shift = {"outside_ball": lambda xb: (xb + 0.3).clamp(0, 1), "outside_box": lambda xb: xb + 0.05}[how]
    monkeypatch.setattr(adversarial, "instantiate", lambda cfg, where: lambda model, xb, yb: shift(xb))
    cfg = compose_eval(conf_tree, "eval=pgd", "eval.n_examples.pgd20=32", "eval.large_eps_check=false")
    checks = evaluate_robustness(model, x, y, cfg, device="cpu", seed=0)["checks"]
    expected = {"outside_ball": 0.2, "outside_box": 0.05}[how]
    assert checks["ball_violation/pgd20"] == pytest.approx(expected, abs=1e-6)
    assert checks["passed"] is False and checks["failed"][0].startswith("ball_violation/pgd20: ")


def test_ball_excess_per_norm():
    x = torch.full((2, 1, 2, 2), 0.5)
    delta = torch.zeros_like(x)
    delta[0, 0, 0, 0], delta[0, 0, 1, 1] = 0.3, -0.4  # L∞ 0.4, L2 0.5, L1 0.7
    assert ball_excess(x, x + delta, 0.4, "Linf") == pytest.approx(0.0, abs=1e-7)
    assert ball_excess(x, x + delta, 0.3, "linf") == pytest.approx(0.1, abs=1e-7)
    assert ball_excess(x, x + delta, 0.45, "L2") == pytest.approx(0.05, abs=1e-7)
    assert ball_excess(x, x + delta, 0.5, "l1") == pytest.approx(0.2, abs=1e-7)
    assert ball_excess(x, x + 0.6, None, "linf") == pytest.approx(0.1, abs=1e-7)  # [0, 1] box only
    assert ball_excess(x, x * float("nan"), 1.0, "linf") == float("inf")
    assert ball_tolerance(0.03) < 2e-6


def test_autoattack_weaker_than_pgd_fails():
    pgd_robust = torch.tensor([False] * 6 + [True] * 4)
    values, failed = autoattack_gap_check("autoattack", "pgd20", torch.ones(10, dtype=torch.bool), pgd_robust)
    assert values["autoattack_gap/autoattack_vs_pgd20"] == pytest.approx(0.6)
    assert values["pgd_only_fooled/autoattack_vs_pgd20"] == 6 and failed[0].startswith("autoattack_gap/")
    one_more = pgd_robust.clone()
    one_more[0] = True  # one example of slack
    assert autoattack_gap_check("autoattack", "pgd20", one_more, pgd_robust)[1] == []


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



def test_a_model_that_answers_one_class_fails_prediction_collapse(conf_tree, data):
    """The trained digits model passes; the same model with its last layer answering class 3 whatever the
    input fails, naming the class and its share, although every other check passes and its PGD accuracy
    is the share of class 3 in the subset. A test set that is itself one class does not fire the check."""
    import copy

    from robprune.evaluate.checks import PREDICTION_SHARE_MAX, prediction_collapse_check

    model, x, y = data
    cfg = compose_eval(conf_tree, "eval=pgd", "eval.attacks.pgd20.steps=3", "eval.n_examples.pgd20=60", "eval.large_eps_check=false")
    healthy = evaluate_robustness(model, x, y, cfg, device="cpu", seed=0)["checks"]
    assert healthy["majority_prediction_share"] < 0.5 and not any(f.startswith("prediction_collapse") for f in healthy["failed"])
    collapsed = copy.deepcopy(model)
    last = [m for m in collapsed.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(0.01)  # the features still reach the logits (no saturated, zero gradient) ...
        last.bias.copy_(torch.arange(10) == 3).mul_(3.0)  # ... but class 3 wins everywhere
    metrics = evaluate_robustness(collapsed, x, y, cfg, device="cpu", seed=0)
    checks = metrics["checks"]
    assert checks["majority_prediction_share"] == 1.0 > PREDICTION_SHARE_MAX and not checks["passed"]
    share3 = (y == 3).float().mean().item()
    assert checks["failed"] == [f"prediction_collapse: the model predicts class 3 for 100.0% of the {len(y)} test examples, "
                                f"of which {share3:.1%} are that class; its accuracy under attack measures that share, not robustness"]
    assert metrics["clean_acc"] == pytest.approx(share3)
    one_sided = prediction_collapse_check(torch.full((50,), 3), torch.cat([torch.full((46,), 3), torch.zeros(4, dtype=torch.long)]))
    assert one_sided == ({"majority_prediction_share": 1.0, "majority_prediction_share_max": PREDICTION_SHARE_MAX}, [])
