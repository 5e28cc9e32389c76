"""HYDRA (prune=hydra): the straight-through top-k mask, frozen weights during score optimisation, the
mask kept through fine-tuning, the channel variant cut physically, bad input refused before any work, and a
shrunk end-to-end run through the CLI."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from robprune.declarations import load_option
from robprune.errors import ConfigError
from robprune.prune import PruneContext, prune_model
from robprune.prune.channel.hydra import WeightScores, scaled_scores, top_k_mask
from robprune.prune.masks import finetune_hooks
from robprune.prune.stats import PRUNABLE_TYPES, conv_channels
from robprune.train import fit
from tests.helpers import read_metrics, robprune
from tests.test_adasap import (  # the same small cnn8 and seeded data as the other gradual pruner
    _data,
    _model,
)

STANDARD = {"_target_": "robprune.train.objectives.standard"}


def _cfg(**options):
    return OmegaConf.merge(load_option("prune", "hydra"), {"score_epochs": 2, "during_training": {"objective": STANDARD}},
                           options)


def _context(x, y, seen: list):
    """A PruneContext whose train runs the one loop (robprune.train.fit) with the node's optimizer and epochs,
    recording what it saw: the trainable tensors and the frozen weights at the start."""
    def train(model, node, hooks):
        trainable = [p for p in model.parameters() if p.requires_grad]
        seen.append({"trainable": trainable, "names": [n for n, p in model.named_parameters() if p.requires_grad]})
        opt = torch.optim.SGD(model.parameters(), lr=float(node["optimizer"]["lr"]), momentum=0.9,
                              weight_decay=float(node["optimizer"]["weight_decay"]))
        loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(y), 16)]
        objective = lambda m, a, b: nn.functional.cross_entropy(m(a), b)  # noqa: E731
        start = {n: s.detach().clone() for n, s in model.named_parameters() if s.requires_grad}
        history = fit(model, loader, objective, opt, epochs=int(node["epochs"]), lr_factor=lambda e: 1.0,
                      generator=torch.Generator(), hooks=hooks, progress=False)
        seen[-1]["scores_moved"] = any(not torch.equal(start[n], s) for n, s in model.named_parameters() if n in start)
        return history
    return PruneContext(x[:1], train=train)


def test_straight_through_mask_keeps_exactly_k_and_every_score_gets_a_gradient():
    torch.manual_seed(0)
    weight = torch.randn(6, 3, 3, 3)
    scorer = WeightScores(weight, keep=50)
    mask = scorer.mask()
    assert int(mask.sum()) == 50 and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(mask.bool().flatten(), torch.zeros(162, dtype=torch.bool).index_fill_(
        0, torch.argsort(scorer.scores.detach().abs().flatten(), descending=True, stable=True)[:50], True))
    upstream = torch.randn(6, 3, 3, 3)
    (scorer(weight) * upstream).sum().backward()
    # straight-through: d/ds of Σ g ⊙ θ ⊙ m(|s|) is g ⊙ θ ⊙ sign(s), kept AND dropped entries alike
    assert torch.allclose(scorer.scores.grad, upstream * weight * scorer.scores.detach().sign())
    assert bool((scorer.scores.grad != 0).all())
    s = scaled_scores(weight)  # HYDRA's scaled initialisation: θ/max|θ|·sqrt(6/fan_in), so |s| ranks like |θ|
    assert torch.allclose(s, weight / weight.abs().max() * (6 / 27) ** 0.5)
    assert torch.equal(top_k_mask(s, 50), top_k_mask(weight, 50))


def test_weights_frozen_bitwise_only_scores_train_and_k_per_layer():
    model, (x, y) = _model(), _data()
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = []
    info = prune_model(model, _cfg(sparsity=0.5), _context(x, y, seen))
    assert seen[0]["names"] and all(n.endswith(".scores") for n in seen[0]["names"])
    assert seen[0]["scores_moved"]  # the scores did train
    assert {n for n, _ in model.named_parameters()} == set(dense)  # parametrizations removed, names as before
    for name, p in model.named_parameters():
        kept = p != 0
        assert torch.equal(p[kept], dense[name][kept])  # bitwise: every surviving value is the dense one
        assert p.requires_grad
    for module in model.modules():  # k = n − round(0.5·n) kept in every layer (no exclusions by default)
        if isinstance(module, PRUNABLE_TYPES):
            n = module.weight.numel()
            assert int((module.weight != 0).sum()) == n - round(0.5 * n)
    assert info["masked"] and not info["structured"] and info["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert len(info["train_log"]) == 2


def test_mask_survives_finetuning():
    model, (x, y) = _model(), _data()
    info = prune_model(model, _cfg(sparsity=0.7), _context(x, y, []))
    zeros = {n: m.weight == 0 for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    hooks = finetune_hooks(model, {"prune": info})
    assert hooks
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    fit(model, [(x, y)], lambda m, a, b: nn.functional.cross_entropy(m(a), b), opt, epochs=2,
        lr_factor=lambda e: 1.0, generator=torch.Generator(), hooks=hooks, progress=False)
    for name, m in model.named_modules():
        if name in zeros:
            assert bool((m.weight[zeros[name]] == 0).all())
            assert bool((m.weight[~zeros[name]] != 0).any())  # the rest did train


def test_channel_variant_removes_channels_physically():
    model, (x, y) = _model(), _data()
    before = conv_channels(model)
    with torch.no_grad():
        logits_shape = model(x).shape
    info = prune_model(model, _cfg(sparsity=0.5, granularity="channel", exclude_stem=True), _context(x, y, []))
    after = conv_channels(model)
    assert info["structured"] and not info["masked"] and info["history"]
    assert sum(after.values()) < sum(before.values())
    assert any(isinstance(m, nn.Conv2d) and m.out_channels < before[n] for n, m in model.named_modules())
    assert info["prunable_after"] == sum(m.weight.numel() for m in model.modules() if isinstance(m, PRUNABLE_TYPES))
    assert abs(info["sparsity"] - 0.5) < 0.1
    with torch.no_grad():
        assert model(x).shape == logits_shape


@pytest.mark.parametrize("options, key", [
    ({"score_epochs": 0}, "prune.score_epochs"),
    ({"score_lr": 0.0}, "prune.score_lr"),
    ({"score_lr": -1.0}, "prune.score_lr"),
    ({"granularity": "block"}, "prune.granularity"),
    ({"sparsity": 0.999999}, "prune.sparsity"),  # some layer would keep no weight
])
def test_bad_options_are_one_line_config_errors(options, key):
    model, (x, y) = _model(), _data()
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = []
    with pytest.raises(ConfigError) as err:
        prune_model(model, _cfg(**options), _context(x, y, seen))
    assert key in str(err.value) and "\n" not in str(err.value)
    assert not seen and all(torch.equal(p, dense[n]) for n, p in model.named_parameters())  # before any work


@pytest.mark.parametrize("args, key", [
    (["prune.score_epochs=0"], "prune.score_epochs"),
    (["prune.score_lr=0"], "prune.score_lr"),
    (["prune.granularity=block"], "prune.granularity"),
    (["prune.sparsity=0.99999"], "prune.sparsity"),
    (["trainer.devices=2"], "trainer.devices"),
    (["dataset=sst2", "model=bert", "train=text_finetune", "finetune=text_finetune", "eval=text"], "prune=hydra prunes image"),
])
def test_cli_refuses_bad_input_in_one_line_exit_2(args, key, tmp_path, capsys):
    from robprune.cli import main

    code = main(["run", "train=standard", "train.epochs=1", "eval=clean", "prune=hydra", *args,
                 f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and key in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("model.safetensors"))


def test_hydra_end_to_end_through_the_cli(tmp_path):
    quick = ["train=pgd_at", "train.epochs=1", "train.objective.attack.steps=1", "model.width=8", "eval=clean",
             "eval.latency.repeats=2", "eval.latency.warmup=1", "eval.latency.batch_size=8",
             "dataset.train_split='train[:128]'", "dataset.test_split='test[:64]'"]
    args = ["run", *quick, "prune=hydra", "prune.sparsity=0.8", "prune.score_epochs=1", "finetune=standard",
            "finetune.epochs=1", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = robprune(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = read_metrics(tmp_path / "run")
    assert set(m["stages"]) == {"train", "prune_train", "finetune", "eval"}
    assert abs(m["sparsity"] - 0.8) < 0.01 and 0 <= m["clean_acc"] <= 1
    from robprune.checkpoint import load_checkpoint
    model, meta = load_checkpoint(tmp_path / "run")
    assert meta["prune"]["method"] == "hydra" and meta["prune"]["masked"]
    zeros = sum(int((mod.weight == 0).sum()) for mod in model.modules() if isinstance(mod, PRUNABLE_TYPES))
    assert zeros >= meta["prune"]["prunable_before"] - meta["prune"]["prunable_after"]  # fine-tuning kept the mask
