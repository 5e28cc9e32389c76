"""Structured pruning: contract over every model, the L1 criterion, exclusions, config errors."""
import copy
import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from robprune.config import config_dir
from robprune.declarations import load_option
from robprune.errors import ConfigError
from robprune.models import build_model
from robprune.prune import prune_model
from robprune.prune.channel.structured import channels_to_remove
from robprune.prune.stats import prunable_weight_count
from robprune.registry import PRUNERS

# name -> (in_channels, image_size); 32x32 models are slow-ish, so one fixture prunes each once
SHAPES = {"small_cnn": (1, 8), "cnn8": (1, 28), "resnet18": (3, 32), "vgg16_bn": (3, 32)}
# convs whose output channels must survive: the stem, plus (ResNet) the convs added to the stem's output
KEPT = {"small_cnn": {"features.0"}, "cnn8": {"features.0"}, "vgg16_bn": {"features.0"},
        "resnet18": {"conv1", "layer1.0.conv2", "layer1.1.conv2"}}


def prune_cfg(name="l1_filter", **overrides):
    cfg = load_option("prune", name)  # the file over its declared defaults, as Hydra composes it
    return OmegaConf.merge(cfg, overrides)


def make(name, **options):
    c, s = SHAPES[name]
    cfg = OmegaConf.create({"_target_": f"robprune.models.{name}", **options})
    return build_model(cfg, in_channels=c, image_size=s, num_classes=10, mean=[0.5] * c, std=[0.25] * c)


@pytest.fixture(scope="module", params=list(SHAPES))
def pruned(request):
    name = request.param
    torch.manual_seed(0)
    dense = make(name)
    dense.train()
    c, s = SHAPES[name]
    with torch.no_grad():
        dense(torch.rand(4, c, s, s))  # non-trivial BN statistics
    model = copy.deepcopy(dense)
    info = prune_model(model, prune_cfg(), example_inputs=torch.rand(2, c, s, s))
    return name, dense, model, info


def test_output_shape_and_forward(pruned):
    name, _, model, _ = pruned
    c, s = SHAPES[name]
    out = model.eval()(torch.rand(2, c, s, s))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_channel_counts_follow_ratio(pruned):
    name, dense, model, info = pruned
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    for row in info["layers"]:
        before = row["channels_before"]
        expected = before if row["name"] in KEPT[name] else before - before // 2
        assert row["channels_after"] == expected == convs[row["name"]].out_channels, row
    assert [r["name"] for r in info["layers"]] == list(convs)


def test_stem_and_classifier_untouched(pruned):
    name, dense, model, _ = pruned
    stem_dense = next(m for m in dense.modules() if isinstance(m, nn.Conv2d))
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert torch.equal(stem.weight, stem_dense.weight)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert last.out_features == 10
    for (_, bn), (_, bn_dense) in zip(_bns(model)[:1], _bns(dense)[:1]):  # stem BN: statistics not disturbed by tracing
        assert torch.equal(bn.running_mean, bn_dense.running_mean) and torch.equal(bn.running_var, bn_dense.running_var)


def _bns(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


def test_sparsity_recounted(pruned):
    name, dense, model, info = pruned
    expected = 1 - prunable_weight_count(model) / prunable_weight_count(dense)
    assert info["sparsity"] == pytest.approx(expected, abs=1e-12)
    assert 0.5 < info["sparsity"] < 0.8  # 50% channels ≈ 1-(1-p)^2 = 0.75 where both sides of a layer shrink
    assert info["params_before"] == sum(p.numel() for p in dense.parameters())
    assert info["params_after"] == sum(p.numel() for p in model.parameters()) < info["params_before"]
    assert info["structured"] is True and info["method"] == "l1_filter" and info["channel_ratio"] == 0.5


def test_cnn8_sparsity_exact():
    # conv 1→32 (kept), 32→16, 16→32, 32→32, 32→64, 64→64 (3x3); FC 1024→128; FC 128→10
    before = 9 * (32 + 32 * 32 + 32 * 64 + 64 * 64 + 64 * 128 + 128 * 128) + 2048 * 128 + 1280
    after = 9 * (32 + 32 * 16 + 16 * 32 + 32 * 32 + 32 * 64 + 64 * 64) + 1024 * 128 + 1280
    model = make("cnn8")
    info = prune_model(model, prune_cfg(), example_inputs=torch.rand(1, 1, 28, 28))
    assert info["sparsity"] == pytest.approx(1 - after / before)  # 0.624: the big FC loses only its inputs


def test_info_is_json_and_history_replayable(pruned):
    import torch_pruning as tp

    name, dense, model, info = pruned
    assert json.loads(json.dumps(info)) == info
    assert info["history"] and all(len(h) == 3 and h[1] is True for h in info["history"])
    c, s = SHAPES[name]
    replay = copy.deepcopy(dense)
    tp.DependencyGraph().build_dependency(replay, example_inputs=torch.rand(1, c, s, s)).load_pruning_history(info["history"])
    assert {k: v.shape for k, v in replay.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_training_flag_restored():
    model = make("small_cnn").train()
    prune_model(model, prune_cfg(), example_inputs=torch.rand(1, 1, 8, 8))
    assert model.training
    model = make("small_cnn").eval()
    prune_model(model, prune_cfg(), example_inputs=torch.rand(1, 1, 8, 8))
    assert not model.training


def test_l1_keeps_largest_filters():
    """small_cnn: features.2 (16→32) gets filter norms in a known random order; the next conv's input
    slices are weighted inversely, so a criterion that also scored them would keep different filters."""
    torch.manual_seed(1)
    model = make("small_cnn")
    conv, nxt = model.features[2], model.features[4]
    scale = torch.randperm(32).float() + 1
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight).sign() * scale.view(-1, 1, 1, 1))
        nxt.weight.copy_(torch.rand_like(nxt.weight) * (100 / scale).view(1, -1, 1, 1))
    w_conv, w_next = conv.weight.clone(), nxt.weight.clone()
    prune_model(model, prune_cfg(), example_inputs=torch.rand(1, 1, 8, 8))
    kept = torch.sort(torch.topk(scale, 16).indices).values
    assert torch.equal(model.features[2].weight, w_conv[kept])
    # features.4 is ranked on its unpruned filters (Li et al.'s independent strategy), then loses inputs
    kept_next = torch.sort(torch.topk(w_next.abs().flatten(1).sum(1), 16).indices).values
    assert torch.equal(model.features[4].weight, w_next[kept_next][:, kept])


def test_residual_group_ranked_by_mean_filter_norm():
    torch.manual_seed(2)
    model = make("resnet18", width=8)  # layer2 group: 16 channels shared by 3 convs via the residual adds
    members = [model.layer2[0].conv2, model.layer2[0].shortcut[0], model.layer2[1].conv2]
    norms = torch.stack([m.weight.detach().abs().flatten(1).sum(1) for m in members])
    expected = torch.sort(torch.topk(norms.mean(0), 8).indices).values
    singles = [torch.sort(torch.topk(n, 8).indices).values for n in norms]
    assert not all(torch.equal(s, expected) for s in singles)  # the test discriminates mean vs one member
    shortcut = members[1].weight.detach().clone()
    prune_model(model, prune_cfg(), example_inputs=torch.rand(1, 3, 32, 32))
    assert torch.equal(model.layer2[0].shortcut[0].weight, shortcut[expected])  # its input (stem group) is kept
    assert model.layer2[1].conv2.out_channels == model.layer3[0].conv1.in_channels == 8


def test_exclusions_can_be_switched_off():
    model = make("small_cnn")
    info = prune_model(model, prune_cfg(exclude_stem=False), example_inputs=torch.rand(1, 1, 8, 8))
    assert [r["channels_after"] for r in info["layers"]] == [8, 16, 16]
    model = make("cnn8")
    prune_model(model, prune_cfg(exclude_linear=False), example_inputs=torch.rand(1, 1, 28, 28))
    hidden, classifier = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert (hidden.in_features, hidden.out_features) == (1024, 64)
    assert (classifier.in_features, classifier.out_features) == (64, 10)  # the output layer is never cut


def test_ratio_zero_and_none_leave_model_alone():
    for cfg in (prune_cfg(channel_ratio=0.0), prune_cfg("none")):
        model = make("cnn8")
        state = copy.deepcopy(model.state_dict())
        info = prune_model(model, cfg, example_inputs=torch.rand(1, 1, 28, 28))
        assert info["history"] == [] and info["sparsity"] == 0.0
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert info["method"] == "none" and info["structured"] is False
    assert info["params_before"] == info["params_after"]


@pytest.mark.parametrize("ratio", [1.5, 1.0, -0.1])
def test_channel_ratio_out_of_range(ratio):
    with pytest.raises(ConfigError) as err:
        prune_model(make("small_cnn"), prune_cfg(channel_ratio=ratio), example_inputs=torch.rand(1, 1, 8, 8))
    assert str(err.value).startswith(f"ConfigError: prune.channel_ratio must be in [0, 1), got {ratio}; ")


@pytest.mark.parametrize("overrides,message", [
    ({"ratio_semantics": "params"}, "prune.ratio_semantics=params needs prune.sparsity"),
    ({"ratio_semantics": "channel", "sparsity": 0.5}, "set prune.sparsity=null to use prune.channel_ratio"),
    ({"channel_ratio": None}, "set prune.sparsity (global parameter fraction) or prune.channel_ratio"),
    ({"ratio_semantics": "weights"}, "prune.ratio_semantics must be params, channel or null"),
    ({"sparsity": 1.2}, "prune.sparsity must be in [0, 1)"),
    ({"sparsity": 0.999}, "prune.sparsity=0.999 is not reachable"),
    ({"allocation": "magic", "sparsity": 0.5}, "prune.allocation must be one of"),
    ({"allocation": "global"}, "prune.allocation=global ranks channels across layers to a parameter target"),
])
def test_sparsity_semantics_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        prune_model(make("small_cnn"), prune_cfg(**overrides), example_inputs=torch.rand(1, 1, 8, 8))


def test_sparsity_takes_precedence_over_default_channel_ratio():
    """prune=l1_filter prune.sparsity=0.8: the YAML's channel_ratio 0.5 is not used; params semantics recorded."""
    model = make("cnn8")
    info = prune_model(model, prune_cfg(sparsity=0.8), example_inputs=torch.rand(1, 1, 28, 28))
    assert info["ratio_semantics"] == "params" and info["channel_ratio"] is None
    assert info["sparsity_target"] == 0.8 and abs(info["sparsity"] - 0.8) < 0.01
    assert len({r["ratio"] for r in info["layers"] if r["group"]}) == 1  # uniform: one shared ratio
    assert 0 < info["channel_ratio_achieved"] < 0.95


@pytest.mark.parametrize("channels,ratio,removed", [(32, 0.5, 16), (33, 0.5, 16), (1, 0.9, 0), (10, 0.99, 9),
                                                    (100, 0.57, 57), (64, 0.0, 0), (3, 0.34, 1)])
def test_channels_to_remove(channels, ratio, removed):
    assert channels_to_remove(channels, ratio) == removed


@pytest.mark.parametrize("name", PRUNERS.names())
def test_yaml_keys_have_comments(name):
    lines = (config_dir() / "prune" / f"{name}.yaml").read_text().splitlines()
    assert lines and all(" # " in line or line.startswith("# ") for line in lines if line.strip())


@pytest.mark.parametrize("overrides,message", [
    ({"sparsity": 0.5, "ratio_semantics": "channel"}, "set prune.sparsity=null"),
    ({"sparsty": 0.5}, "prune.sparsty is not an option of channel pruning"),
])
def test_options_checked_without_a_model(overrides, message):
    from robprune.prune import check_prune_config

    with pytest.raises(ConfigError, match=message):
        check_prune_config(OmegaConf.merge(prune_cfg(), overrides))
    for name in PRUNERS.names(modality="image"):
        check_prune_config(prune_cfg(name))  # every shipped config is valid as it is


def test_none_accepts_an_experiments_amount_keys():
    """+experiment=mrpf_mnist prune=none: the experiment's prune.sparsity lands on none.yaml; the dense reference still runs."""
    model = make("cnn8")
    info = prune_model(model, OmegaConf.merge(prune_cfg("none"), {"sparsity": 0.8}), example_inputs=torch.rand(1, 1, 28, 28))
    assert info["sparsity"] == 0.0 and info["history"] == []


def test_options_read_interpolations_from_the_run_config():
    """An interpolation inside the prune node resolves against the whole config, as the cache key does."""
    from robprune.prune import _method

    root = OmegaConf.create({"study": {"ratio": 0.3},
                             "prune": OmegaConf.merge(prune_cfg(), {"channel_ratio": "${oc.select:study.ratio,0.5}"})})
    assert _method(root.prune).keywords["channel_ratio"] == 0.3
    root.study.ratio = 0.7
    assert _method(root.prune).keywords["channel_ratio"] == 0.7
    del root.study
    assert _method(root.prune).keywords["channel_ratio"] == 0.5  # the select's default when the key is absent
    with pytest.raises(ConfigError, match=r"prune\.channel_ratio"):
        _method(OmegaConf.create({"prune": OmegaConf.merge(prune_cfg(), {"channel_ratio": "${study.gone}"})}).prune)
