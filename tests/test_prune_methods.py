"""Allocation to a parameter-sparsity target, the analytic budget, criteria inside a layer, and the
unstructured baseline with its fine-tuning mask."""
import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from robprune.checkpoint import load_checkpoint, save_checkpoint
from robprune.declarations import load_option
from robprune.errors import ConfigError
from robprune.models import build_model
from robprune.prune import PruneContext, prune_model
from robprune.prune.channel.allocation import AllocationInput, inverse_ratios
from robprune.prune.channel.budget import ParamBudget
from robprune.prune.channel.importance import FilterNormImportance, RandomImportance, TaylorImportance
from robprune.prune.channel.policy import structured_prune
from robprune.prune.channel.structured import build_groups
from robprune.prune.masks import finetune_hooks
from robprune.prune.stats import prunable_weight_count
from robprune.train import fit

# small-width variants: same topology (residual coupling, pools, flatten) at a fraction of the cost
MODELS = {"cnn8": ({}, 1, 28), "resnet18": ({"width": 16}, 3, 16), "vgg16_bn": ({"width_mult": 0.25}, 3, 32),
          "wrn": ({"depth": 10, "widen_factor": 2}, 3, 16)}  # wrn: pre-activation blocks, BN after the residual sum


def make(name):
    options, c, s = MODELS[name]
    torch.manual_seed(0)
    cfg = OmegaConf.create({"_target_": f"robprune.models.{name}", **options})
    return build_model(cfg, in_channels=c, image_size=s, num_classes=10, mean=[0.5] * c, std=[0.25] * c)


def prune_cfg(name, **overrides):
    return OmegaConf.merge(load_option("prune", name), overrides)


def example(name, n=1):
    _, c, s = MODELS[name]
    return torch.rand(n, c, s, s)


def synthetic_scores(model):
    """Seeded per-layer 'MRS' values spanning negative (insensitive) to large."""
    g = torch.Generator().manual_seed(3)
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return {"layers": [{"name": n, "mrs": float(v)} for n, v in zip(names, torch.randn(len(names), generator=g).exp() - 0.3)]}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("method", ["mrs", "l1_filter"])
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9])
def test_parameter_sparsity_target_is_hit(name, method, target):
    model = make(name)
    dense_weights = prunable_weight_count(model)
    context = PruneContext(example(name), scores=synthetic_scores(model) if method == "mrs" else None)
    info = prune_model(model, prune_cfg(method, sparsity=target), context)
    achieved = 1 - prunable_weight_count(model) / dense_weights
    assert info["sparsity"] == pytest.approx(achieved, abs=1e-12)
    assert abs(achieved - target) <= 0.01, (name, method, target, achieved)
    assert all(r["channels_after"] >= 1 for r in info["layers"])
    assert max(info["ratios"].values()) <= 0.95 + 1e-12
    assert model.eval()(example(name, 2)).shape == (2, 10)
    if method == "mrs":  # a more sensitive group never loses a larger fraction (ratio = clip(c − λ·z, r_min, r_max_l))
        mrs = {g["root"]: sum(r["mrs"] for r in info["layers"] if r["name"] in g["members"]) for g in info["groups"] if len(g["members"]) == 1}
        capped = {root for root, ratio in info["ratios"].items() if ratio == 0.5}  # small groups stop at r_max_small
        order = [root for root in sorted(mrs, key=mrs.get) if root not in capped]
        assert all(info["ratios"][a] >= info["ratios"][b] - 1e-12 for a, b in zip(order, order[1:]))


@pytest.mark.parametrize("name", list(MODELS))
def test_budget_is_exact_for_arbitrary_ratios(name):
    """The analytic budget bisection relies on equals a real cut's count, including Linear inputs
    behind a flatten (cnn8) and residual-coupled groups (resnet18)."""
    model = make(name)
    _, groups = build_groups(model, example(name), exclude_stem=True, exclude_linear=False)
    g = torch.Generator().manual_seed(1)
    ratios = {grp.root: float(torch.rand(1, generator=g)) * 0.9 for grp in groups}
    predicted, before = ParamBudget(model, groups).sparsity(ratios), prunable_weight_count(model)
    structured_prune(model, example_inputs=example(name), importance=FilterNormImportance(), allocate=lambda inp: ratios,
                     exclude_stem=True, exclude_linear=False)
    assert predicted == pytest.approx(1 - prunable_weight_count(model) / before, abs=1e-12)


def test_mrs_mean_normalization_spreads_channel_ratio_inversely():
    model = make("cnn8")
    _, groups = build_groups(model, example("cnn8"), exclude_stem=True, exclude_linear=True)
    scores = {grp.root: float(i + 1) for i, grp in enumerate(groups)}
    inp = AllocationInput(groups, {}, ParamBudget(model, groups))
    ratios = inverse_ratios(inp, group_scores=scores, channel_ratio=0.3, normalization="mean")
    assert sum(ratios.values()) / len(ratios) == pytest.approx(0.3)  # MRPF: mean ratio = S (no clipping here)
    assert ratios[groups[0].root] == pytest.approx(2 * ratios[groups[1].root])  # r ∝ 1/s
    with pytest.raises(ConfigError, match="prune.normalization=mean spreads a mean per-layer channel ratio"):
        inverse_ratios(inp, group_scores=scores, sparsity=0.5, normalization="mean")


def test_global_allocation_hits_target_and_is_not_uniform():
    model = make("vgg16_bn")
    info = prune_model(model, prune_cfg("l1_filter", sparsity=0.8, allocation="global"), PruneContext(example("vgg16_bn")))
    assert abs(info["sparsity"] - 0.8) <= 0.01
    assert len({round(r, 6) for r in info["ratios"].values()}) > 2


def test_l2_criterion_differs_from_l1():
    """features.2 of cnn8 (32 filters): even filters spiky, odd filters flat, all with the same L1 norm
    (up to a tiny j-dependent factor). L2 keeps the spiky ones; L1 keeps the last 16."""
    weights = []
    for name in ("l2_filter", "l1_filter"):
        model = make("cnn8")
        conv = model.features[2]
        n = conv.weight[0].numel()
        with torch.no_grad():
            spiky = torch.zeros(n)
            spiky[: n // 4] = 4.0
            for j in range(conv.out_channels):
                conv.weight[j] = (spiky if j % 2 == 0 else torch.ones(n)).view_as(conv.weight[j]) * (1 + 1e-3 * j)
        w = conv.weight.detach().clone()
        prune_model(model, prune_cfg(name, channel_ratio=0.5), PruneContext(example("cnn8")))
        weights.append((model.features[2].weight.detach(), w))
    (l2_kept, w), (l1_kept, _) = weights
    assert torch.equal(l2_kept, w[0::2]) and torch.equal(l1_kept, w[16:])


def test_taylor_scores_follow_the_formula():
    conv = nn.Conv2d(2, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0, -1.0, 0.5, 3.0, 3.0]).view(3, 2, 1, 1))
    grads = {conv: torch.tensor([1.0, 1.0, 2.0, 2.0, -1.0, 1.0]).view(3, 2, 1, 1)}
    scores = TaylorImportance(grads).filter_scores(conv, [0, 1, 2])
    assert torch.allclose(scores, torch.tensor([9.0, 1.0, 0.0]))  # (Σ g·w)²: (1+2)², (-2+1)², (-3+3)²


def test_taylor_needs_calibration_and_is_deterministic():
    with pytest.raises(ConfigError, match="prune.criterion=taylor needs the calibration adversarial set"):
        prune_model(make("cnn8"), prune_cfg("taylor", sparsity=0.5), PruneContext(example("cnn8")))
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    infos = [prune_model(make("cnn8"), prune_cfg("taylor", sparsity=0.5), PruneContext(example("cnn8"), calib_x=x, calib_y=y))
             for _ in range(2)]
    l1 = prune_model(make("cnn8"), prune_cfg("l1_filter", sparsity=0.5), PruneContext(example("cnn8")))
    assert infos[0]["history"] == infos[1]["history"] != l1["history"]


def test_random_criterion_is_seeded():
    runs = [prune_model(make("cnn8"), prune_cfg("random", sparsity=0.5), PruneContext(example("cnn8"), seed=s))["history"]
            for s in (0, 0, 1)]
    assert runs[0] == runs[1] != runs[2]
    assert len(RandomImportance(5).filter_scores(None, [0, 1, 2])) == 3


@pytest.mark.parametrize("target", [0.5, 0.9])
def test_global_magnitude_zeroes_smallest_weights(target):
    model = make("cnn8")
    dense = copy.deepcopy(model)
    info = prune_model(model, prune_cfg("global_magnitude", sparsity=target), PruneContext(example("cnn8")))
    layers = [(m, d) for m, d in zip(model.modules(), dense.modules()) if isinstance(m, (nn.Conv2d, nn.Linear))]
    zero = torch.cat([(m.weight == 0).flatten() for m, _ in layers])
    mags = torch.cat([d.weight.abs().flatten() for _, d in layers])
    assert info["sparsity"] == pytest.approx(target, abs=1e-5) and zero.float().mean() == pytest.approx(target, abs=1e-5)
    assert mags[zero].max() <= mags[~zero].min()  # every removed weight is smaller than every kept one
    assert info["structured"] is False and info["masked"] is True and info["params_after"] == info["params_before"]


def test_mask_survives_checkpoint_and_finetuning(tmp_path):
    model = make("cnn8")
    info = prune_model(model, prune_cfg("global_magnitude", sparsity=0.8), PruneContext(example("cnn8")))
    save_checkpoint(model, tmp_path, arch={"model": {"_target_": "robprune.models.cnn8"}, "in_channels": 1, "image_size": 28,
                                           "num_classes": 10, "mean": [0.5], "std": [0.25]}, extra={"prune": info})
    loaded, meta = load_checkpoint(tmp_path)
    zeros_before = [m.weight == 0 for m in loaded.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = finetune_hooks(loaded, meta)
    assert len(hooks) == 1 and hooks[0].sparsity() == pytest.approx(0.8, abs=1e-5)
    x, y = torch.rand(32, 1, 28, 28), torch.arange(32) % 10
    before = copy.deepcopy(loaded.state_dict())
    opt = torch.optim.Adam(loaded.parameters(), lr=1e-2, weight_decay=1e-3)
    fit(loaded, [(x[:16], y[:16]), (x[16:], y[16:])], lambda m, a, b: nn.functional.cross_entropy(m(a), b), opt, epochs=2,
        lr_factor=lambda e: 1.0, generator=torch.Generator(), hooks=hooks, progress=False)
    zeros_after = [m.weight == 0 for m in loaded.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(torch.equal(a, b) for a, b in zip(zeros_before, zeros_after))
    assert any(not torch.equal(before[k], v) for k, v in loaded.state_dict().items())  # it did train
    assert finetune_hooks(loaded, {"prune": {"masked": False}}) == []
