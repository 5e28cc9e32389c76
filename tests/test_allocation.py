"""MRPF's score → ratio rules on cnn8 (docs/methods/mrpf.md#step-4): the bounded default
r_l = clip(c − λ·z_l, r_min, r_max_l) and the old inverse rule r_l = clip(c/s_l, 0, r_max)."""
import copy

import pytest
import torch
from omegaconf import OmegaConf

from robprune.declarations import load_option
from robprune.errors import ConfigError
from robprune.models import cnn8
from robprune.prune import PruneContext, prune_model
from robprune.prune.channel.allocation import (
    AllocationInput,
    BoundedRule,
    bounded_ratios,
    group_caps,
    inverse_ratios,
    standardised_log_scores,
    uniform_sparsity,
)
from robprune.prune.channel.budget import ParamBudget
from robprune.prune.channel.structured import build_groups

PRUNABLE = ["features.2", "features.4", "features.6", "features.8", "features.10"]  # 32, 64, 64, 128, 128 channels
NO_SMALL = BoundedRule(r_max_small=0.95)  # isolates the rule from the small-group cap


@pytest.fixture(scope="module")
def cnn():
    """(model, AllocationInput) for the paper's cnn8 on 28x28 MNIST; stem and Linear outputs excluded."""
    torch.manual_seed(0)
    model = cnn8(in_channels=1, image_size=28, num_classes=10, mean=[0.13], std=[0.31]).eval()
    _, groups = build_groups(model, torch.rand(1, 1, 28, 28), exclude_stem=True, exclude_linear=True)
    assert sorted(g.root for g in groups) == sorted(PRUNABLE)
    return model, AllocationInput(groups, {}, ParamBudget(model, groups))


def bounded(inp, scores, sparsity, rule=BoundedRule()):
    return bounded_ratios(inp, group_scores=dict(zip(PRUNABLE, scores)), rule=rule, sparsity=sparsity)


@pytest.mark.parametrize("target,rule", [(0.5, BoundedRule()), (0.8, NO_SMALL), (0.9, NO_SMALL)])
def test_equal_scores_give_the_uniform_allocation(cnn, target, rule):
    _, inp = cnn
    ratios = bounded(inp, [0.3] * 5, target, rule)
    uniform = uniform_sparsity(inp, sparsity=target)
    ours, theirs = inp.budget.removed_channels(ratios), inp.budget.removed_channels(uniform)
    assert all(abs(ours[r] - theirs[r]) <= 1 for r in PRUNABLE), (ours, theirs)  # within a channel


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9])
def test_higher_score_lower_ratio_and_target_hit(cnn, target):
    _, inp = cnn
    scores = [0.02, 0.5, 0.004, 0.1, 0.03]
    ratios = bounded(inp, scores, target, NO_SMALL)
    by_score = [ratios[r] for _, r in sorted(zip(scores, PRUNABLE))]
    assert all(a >= b for a, b in zip(by_score, by_score[1:])) and by_score[0] > by_score[-1]
    assert abs(inp.budget.sparsity(ratios) - target) <= 0.01
    assert abs(inp.budget.sparsity(bounded(inp, scores, target)) - target) <= 0.01  # with the small-group cap too


def test_noise_sized_scores_no_longer_send_groups_to_r_max(cnn):
    """The measured failure (docs/results/mrpf.md#previous-defaults, real MNIST): |MRS| ~ 1e-5, negative (noise) for 4 of the 5 prunable
    convs. inverse floors the four to τ = 1e-6·max, so c/τ makes them one step at r_max, the small early
    conv included; bounded floors them at 10% of the median positive score and moves each ratio at
    most λ·|z| from c, so none reaches r_max and the early conv stays at r_max_small or below."""
    _, inp = cnn
    scores = dict(zip(PRUNABLE, [-2e-5, -1.1e-5, -4e-6, -1e-6, 1.1e-5]))
    old = inverse_ratios(inp, group_scores=scores, sparsity=0.6, r_max=0.95)
    assert [old[r] for r in PRUNABLE[:4]] == [0.95] * 4
    new = bounded_ratios(inp, group_scores=scores, rule=BoundedRule(lam=0.2), sparsity=0.6)
    assert max(new.values()) < 0.85 and new["features.2"] <= 0.5
    assert abs(inp.budget.sparsity(new) - 0.6) <= 0.01
    # the chosen default λ = 0.4 moves ratios twice as far: noise-sized scores can again send a group to
    # r_max (docs/results/mrpf.md#choosing-mrpfs-defaults: the worst-case score, not λ, is what keeps MRS from being noise)
    default = bounded_ratios(inp, group_scores=scores, rule=BoundedRule(), sparsity=0.6)
    assert BoundedRule().lam == 0.4 and max(default.values()) == 0.95 and default["features.2"] <= 0.5


def test_standardising_is_scale_free(cnn):
    """A limitation to know (reported, not fixed): z is standardised, so positive noise 1e-5 ± 1e-6 (10%)
    spreads the ratios as far as scores 100× apart do, further than the inverse rule does (c/s moves by
    about 10%); λ alone bounds it (|r_l − c| ≤ λ·max|z| ≤ λ·√(L−1))."""
    _, inp = cnn
    noisy = [1e-5 + d for d in (1e-6, -1e-6, 0.5e-6, -0.5e-6, 0.0)]
    ratios = bounded(inp, noisy, 0.5)
    assert inp.budget.removed_channels(ratios) == inp.budget.removed_channels(bounded(inp, [v * 1e3 for v in noisy], 0.5))
    old = inverse_ratios(inp, group_scores=dict(zip(PRUNABLE, noisy)), sparsity=0.5)
    assert max(ratios.values()) - min(ratios.values()) > 2 * (max(old.values()) - min(old.values()))
    assert max(ratios.values()) < 0.95


def test_small_groups_are_capped_at_r_max_small(cnn):
    _, inp = cnn
    caps = group_caps(inp.groups, inp.budget, r_max=0.95, r_max_small=0.5, small_fraction=0.02)
    assert caps == {"features.2": 0.5, **{r: 0.95 for r in PRUNABLE[1:]}}  # 9,216 of 549,408 weights = 1.7%
    scores = [0.001, 0.5, 0.5, 0.5, 0.5]  # features.2 the least sensitive: it would get the largest ratio
    assert bounded(inp, scores, 0.8)["features.2"] == 0.5
    assert bounded(inp, scores, 0.8, BoundedRule(small_fraction=0.0))["features.2"] > 0.5
    assert group_caps(inp.groups, inp.budget, r_max=0.6, r_max_small=0.9, small_fraction=0.02)["features.2"] == 0.6  # never above r_max


def test_r_min_is_respected(cnn):
    _, inp = cnn
    scores = [0.02, 50.0, 0.004, 0.1, 0.03]
    ratios = bounded(inp, scores, 0.8, BoundedRule(r_min=0.2, lam=0.5))
    assert min(ratios.values()) == 0.2 == ratios["features.4"]  # the most sensitive group sits on the clip
    assert abs(inp.budget.sparsity(ratios) - 0.8) <= 0.01
    with pytest.raises(ConfigError, match=r"prune.sparsity=0.1 is below .* what prune.r_min=0.5 already removes"):
        bounded(inp, scores, 0.1, BoundedRule(r_min=0.5))


def test_bounded_is_deterministic_and_order_free(cnn):
    _, inp = cnn
    scores = dict(zip(PRUNABLE, [0.02, 0.5, 0.004, 0.1, 0.03]))
    first = bounded_ratios(inp, group_scores=scores, rule=BoundedRule(), sparsity=0.8)
    again = bounded_ratios(inp, group_scores=dict(reversed(list(scores.items()))), rule=BoundedRule(), sparsity=0.8)
    assert first == again


def test_standardised_log_scores():
    s, z = standardised_log_scores({"a": 1.0, "b": 100.0, "c": 0.001, "d": -3.0}, 0.1)
    assert s == pytest.approx({"a": 1.0, "b": 100.0, "c": 0.05005, "d": 0.05005})  # 10% of the median, (1 + 0.001)/2
    assert sum(z.values()) == pytest.approx(0) and sum(v * v for v in z.values()) / 4 == pytest.approx(1)
    assert z["c"] == z["d"] < z["a"] < z["b"]
    assert standardised_log_scores({"a": 2.0, "b": 2.0}, 0.1)[1] == {"a": 0.0, "b": 0.0}  # std 0 → uniform
    assert standardised_log_scores({"a": -1.0, "b": -2.0}, 0.1)[1] == {"a": 0.0, "b": 0.0}  # none positive
    s, _ = standardised_log_scores({"a": -1.0, "b": -2.0, "c": 4.0}, 0.1)  # median ≤ 0: median of the positive ones
    assert s == {"a": 0.4, "b": 0.4, "c": 4.0}


def test_bounded_mean_normalization_centres_on_channel_ratio(cnn):
    _, inp = cnn
    ratios = bounded_ratios(inp, group_scores=dict(zip(PRUNABLE, [0.02, 0.5, 0.004, 0.1, 0.03])),
                            rule=BoundedRule(r_max_small=0.95, lam=0.2), channel_ratio=0.4, normalization="mean")
    assert sum(ratios.values()) / 5 == pytest.approx(0.4)  # no clipping at λ = 0.2: mean of c − λ·z is c


@pytest.mark.parametrize("rule", ["bounded", "inverse"])
def test_prune_record_carries_ratio_s_and_z(cnn, rule):
    model, _ = cnn
    mrs = dict(zip(PRUNABLE, [0.02, 0.5, 0.004, 0.1, 0.03]))
    cfg = OmegaConf.merge(load_option("prune", "mrs"), {"sparsity": 0.8, "rule": rule})
    context = PruneContext(torch.rand(1, 1, 28, 28), scores={"layers": [{"name": k, "mrs": v} for k, v in mrs.items()]})
    info = prune_model(copy.deepcopy(model), cfg, context)
    rows = {r["name"]: r for r in info["layers"] if r["group"]}
    assert set(rows) == set(PRUNABLE) and abs(info["sparsity"] - 0.8) <= 0.01
    assert all(rows[r]["ratio"] == info["ratios"][r] and rows[r]["mrs"] == mrs[r] for r in PRUNABLE)
    if rule == "bounded":
        s, z = standardised_log_scores(mrs, 0.1)
        assert all(rows[r]["z"] == z[r] and rows[r]["s"] == s[r] for r in PRUNABLE)
        assert info["options"]["rule"] == "bounded" and info["options"]["lam"] == 0.4
    else:
        assert all(rows[r]["z"] is None and rows[r]["s"] == mrs[r] for r in PRUNABLE)
