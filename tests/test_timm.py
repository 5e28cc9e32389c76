"""model=timm: timm architectures behind robprune's builder contract, and Torch-Pruning's physical channel
removal on them (the architectures of the MRPF paper: ResNet, VGG, MobileViT), checked against the dense
model with the removed channels zeroed."""
import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from robprune.checkpoint import load_checkpoint, save_checkpoint
from robprune.compose import compose
from robprune.errors import ConfigError
from robprune.measure import dense_model
from robprune.models import Normalize
from robprune.pipeline import run
from robprune.prune import prune_model
from robprune.validate import check_before_stages
from tests.helpers import SHRINK

pytest.importorskip("timm")

SIZE = 32


def arch(name: str, channels: int = 3, size: int = SIZE, **options) -> dict:
    return {"model": {**compose(["model=timm"]).model, "name": name, **options}, "in_channels": channels,
            "image_size": size, "num_classes": 10, "mean": [0.45] * channels, "std": [0.25] * channels}


def with_real_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms (seeded), so zeroed and removed channels differ
    from kept ones; eval mode."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


def zero_removed(dense: nn.Module, history: list, x: torch.Tensor) -> nn.Module:
    """The dense model with every removed output channel zeroed (filter, bias, BN scale and shift) instead
    of cut: since every activation maps 0 to 0, it must compute what the physically pruned model computes."""
    masked = copy.deepcopy(dense)
    dg = tp.DependencyGraph().build_dependency(masked, example_inputs=x[:1])
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for name, is_out, idxs in history:
            assert is_out
            module = modules[name]
            for item in dg.get_pruning_group(module, dg.get_pruner_of_module(module).prune_out_channels, idxs):
                target = item.dep.target.module
                if dg.is_out_channel_pruning_fn(item.dep.handler) and getattr(target, "weight", None) is not None:
                    target.weight[item.idxs] = 0
                    if getattr(target, "bias", None) is not None:
                        target.bias[item.idxs] = 0
    return masked.eval()


def weight_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


@pytest.mark.parametrize("name", ["resnet10t", "mobilevit_xxs"])
def test_builder_contract(name):
    model = dense_model(arch(name, channels=1, size=28))
    assert isinstance(next(iter(model.children())), Normalize)
    x = torch.rand(2, 1, 28, 28)
    assert model.eval()(x).shape == (2, 10)
    first = model.net.get_submodule(model.net.pretrained_cfg["first_conv"])
    assert first.in_channels == 1 and first.stride == (1, 1)          # stem auto at 28 px: full resolution
    timm_stem = dense_model(arch(name, channels=1, size=28, stem="timm"))
    assert timm_stem.net.get_submodule(timm_stem.net.pretrained_cfg["first_conv"]).stride == (2, 2)


def test_small_stem_is_a_cifar_resnet():
    """stem auto at 32 px: stride-1 first conv, no max-pool, so layer4 sees 4x4 (timm's own stem: 1x1)."""
    small, timm_stem = dense_model(arch("resnet18")).eval(), dense_model(arch("resnet18", stem="timm")).eval()
    assert isinstance(small.net.maxpool, nn.Identity) and isinstance(timm_stem.net.maxpool, nn.MaxPool2d)
    x = torch.rand(1, 3, SIZE, SIZE)
    assert small.net.forward_features(small.normalize(x)).shape[-2:] == (4, 4)
    assert timm_stem.net.forward_features(timm_stem.normalize(x)).shape[-2:] == (1, 1)


@pytest.mark.parametrize("name,target", [("resnet10t", 0.5), ("resnet18", 0.5), ("mobilevit_xxs", 0.3)])
def test_l1_filter_removes_channels_physically(name, target):
    """Real config (model=timm, prune=l1_filter to a parameter sparsity): the cut shrinks convs, keeps the
    output shape, reports the sparsity the weights show, and computes exactly the dense model with the
    removed channels zeroed. mobilevit_xxs: its transformers are Linear layers, which l1_filter keeps
    (exclude_linear), so at most ~0.47 of its weights can go."""
    cfg = compose(["model=timm", f"model.name={name}", f"prune.sparsity={target}"])
    dense = with_real_bn(dense_model(arch(name)))
    x = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    check_before_stages(cfg, dense, x[:1])                          # the trial cut of validation passes
    pruned = copy.deepcopy(dense)
    info = prune_model(pruned, cfg.prune, example_inputs=x[:1])
    before = {n: m.out_channels for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)}
    after = {n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    shrunk = [n for n in before if after[n] < before[n]]
    assert len(shrunk) >= 3 and all(after[n] >= 1 for n in after)
    assert pruned.net.get_submodule(pruned.net.pretrained_cfg["first_conv"]).out_channels == \
        dense.net.get_submodule(dense.net.pretrained_cfg["first_conv"]).out_channels   # exclude_stem
    assert info["sparsity"] == pytest.approx(1 - weight_count(pruned) / weight_count(dense), abs=1e-12)
    assert info["sparsity"] == pytest.approx(target, abs=0.02)
    assert info["params_after"] == sum(p.numel() for p in pruned.parameters())
    masked = zero_removed(dense, info["history"], x)
    with torch.no_grad():
        out, dense_out, masked_out = pruned.eval()(x), dense(x), masked(x)
    assert out.shape == (4, 10)
    assert torch.allclose(out, masked_out, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out, dense_out, atol=1e-3)             # the cut did change the function


def test_pruned_timm_checkpoint_round_trips(tmp_path):
    a = arch("resnet10t")
    model = with_real_bn(dense_model(a))
    x = torch.rand(2, 3, SIZE, SIZE)
    info = prune_model(model, compose(["model=timm", "prune.channel_ratio=0.5"]).prune, example_inputs=x[:1])
    save_checkpoint(model.eval(), tmp_path / "ckpt", arch=a, history=info["history"])
    loaded, meta = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert meta["arch"]["model"]["name"] == "resnet10t"


def test_attention_heads_are_not_cut():
    """MobileViT with prune.exclude_linear=false: Torch-Pruning would cut the attention projections across
    heads (the forward pass then fails on the head reshape); validation refuses it before training."""
    cfg = compose(["model=timm", "model.name=mobilevit_xxs", "prune.exclude_linear=false"])
    with pytest.raises(ConfigError, match=r"across the 4 heads of net\..*attn.*set prune\.exclude_linear=true"):
        check_before_stages(cfg, dense_model(arch("mobilevit_xxs")), torch.zeros(1, 3, SIZE, SIZE))


@pytest.mark.parametrize("prune", ["l1_filter", "adasap"])
def test_architecture_the_cut_breaks_is_refused_before_training(prune):
    """RegNet's grouped convs: Torch-Pruning's cut leaves inconsistent group widths; the trial cut says so
    (also for prune=adasap, which cuts after training)."""
    cfg = compose(["model=timm", "model.name=regnetx_002", f"prune={prune}"])
    with pytest.raises(ConfigError, match=r"model\.name=regnetx_002: Torch-Pruning's channel removal does not fit.*"
                                          r"prune=global_magnitude"):
        check_before_stages(cfg, dense_model(arch("regnetx_002")), torch.zeros(1, 3, SIZE, SIZE))


@pytest.mark.parametrize("options,message", [
    ({"name": "resnet1888"}, r"model\.name='resnet1888' is not a timm model; close matches: resnet18, "),
    ({"name": "vgg11", "drop_path_rate": 0.1}, r"model\.name=vgg11 does not take .*drop_path_rate"),
    ({"name": "vit_tiny_patch16_224", "stem": "small"}, r"model\.stem=small: .*stride \(16, 16\)\); use model\.stem=timm"),
], ids=["unknown name", "option the model lacks", "small stem on a patch embedding"])
def test_builder_errors_name_the_key(options, message):
    with pytest.raises(ConfigError, match=message):
        dense_model(arch(**{"name": "resnet18", **options}))


def test_pipeline_end_to_end_on_timm(tmp_path):
    """The whole pipeline (train, prune, fine-tune, eval, checkpoint) with model=timm on synthetic 16 px images."""
    shrink = [o for o in SHRINK if not o.startswith(("model.", "train.optimizer"))]
    cfg = compose([*shrink, "model=timm", "model.name=resnet10t", "dataset=synthetic", "dataset.image_size=16",
                   "dataset.num_train=32", "dataset.num_test=16", "eval.n_examples.pgd20=8", "train=standard",
                   "finetune=standard", "train.epochs=1", "data.batch_size=16", "prune.sparsity=0.5",
                   f"cache_dir={tmp_path / 'cache'}"])
    metrics = run(cfg, tmp_path / "run", choices={"prune": cfg.prune.method})
    assert metrics["sparsity"] == pytest.approx(0.5, abs=0.02) and metrics["params"] < metrics["params_dense"]
    model, meta = load_checkpoint(tmp_path / "run")
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 10) and meta["pruning_history"]
