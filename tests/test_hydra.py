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
from tests.helpers import REPO, read_metrics, robprune
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
    (["prune.during_training.objective._target_=x"], "is the interpolation ${oc.select:train.objective,null}"),
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


# ---------------------------------------------------------------- the paper's setup: experiment, model, table

def test_hydra_cifar10_experiment_is_the_papers_setup(tmp_path):
    """+experiment=hydra_cifar10 composes and validates: VGG16-BN (model=wrn for WRN-28-4), HYDRA at 99%, 20 score
    epochs at lr 0.1, TRADES (β = 6, the authors' adversarial trainer) for the dense model, the scores and fine-tuning."""
    from robprune.compose import compose
    from robprune.validate import validate

    cfg = compose(["+experiment=hydra_cifar10", f"data.root={tmp_path}"])
    validate(cfg)
    assert cfg.model._target_ == "robprune.models.vgg16_bn" and cfg.dataset.name == "cifar10"
    assert cfg.prune.method == "hydra" and cfg.prune.sparsity == 0.99 and cfg.prune.granularity == "weight"
    assert cfg.prune.during_training.epochs == 20 and cfg.prune.during_training.optimizer.lr == 0.1
    assert cfg.prune.during_training.objective == cfg.train.objective  # the scores train under the run's objective
    assert cfg.train.objective._target_.endswith("trades") and cfg.train.objective.beta == 6.0
    assert (cfg.train.epochs, cfg.train.optimizer.lr, cfg.finetune.epochs, cfg.finetune.optimizer.lr) == (100, 0.1, 100, 0.01)
    assert {"pgd20", "autoattack"} <= set(cfg.eval.attacks)
    wide = compose(["+experiment=hydra_cifar10", f"data.root={tmp_path}", "model=wrn", "prune.sparsity=0.9"])
    validate(wide)
    assert (wide.model.depth, wide.model.widen_factor) == (28, 4) and wide.prune.sparsity == 0.9


MRPF_EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("mrpf_*.yaml"))


@pytest.mark.parametrize("name", MRPF_EXPERIMENTS)
def test_hydra_joins_every_mrpf_comparison(name, tmp_path):
    """prune=hydra composes with each MRPF experiment (its header's HYDRA sweep line): the experiment's sparsity,
    the scores trained under the experiment's own training objective."""
    from robprune.compose import compose
    from robprune.validate import validate

    (tmp_path / "imagenet-c").mkdir()
    cfg = compose([f"+experiment={name}", f"data.root={tmp_path}", "prune=hydra", "prune.score_epochs=2"])
    validate(cfg)
    assert cfg.prune.method == "hydra" and cfg.prune.sparsity == compose([f"+experiment={name}"]).prune.sparsity
    assert cfg.prune.during_training.epochs == 2 and cfg.prune.during_training.objective == cfg.train.objective


def test_wrn_28_4_has_the_standard_size_and_shape():
    """model=wrn at its defaults is WRN-28-4 (Zagoruyko & Komodakis): 5,849,050 parameters for 10 classes, logits (N, 10)."""
    from robprune.models import wrn

    model = wrn(in_channels=3, image_size=32, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3)
    assert sum(p.numel() for p in model.parameters()) == 5_849_050
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match="model.depth must be 6n"):
        wrn(in_channels=3, image_size=32, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3, depth=27)


def test_hydra_table_shows_the_papers_numbers_next_to_ours(tmp_path):
    """+table=hydra on CIFAR-10 runs: rows sparsity × method, one column per model, the README table's era next to
    our cells in the PGD slot; benign accuracy and AutoAttack, not verified or not published, read —."""
    from tests.test_report import write_run

    from robprune.cli import main as cli_main

    runs = [("hydra", 0.99, "vgg16_bn"), ("global_magnitude", 0.99, "vgg16_bn"), ("hydra", 0.9, "wrn"), ("none", None, "vgg16_bn")]
    for i, (method, sparsity, model) in enumerate(runs):
        write_run(tmp_path / str(i), ratio=0.5, seed=0, method=method, config={"dataset": {"name": "cifar10"},
                  "prune": {"sparsity": sparsity}}, choices={"dataset": "cifar10", "model": model, "prune": method},
                  **{"robust_acc/autoattack": 0.3})
    assert cli_main(["table", "+table=hydra", str(tmp_path), "--quiet"]) == 0
    md = (tmp_path / "hydra.md").read_text()
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[3:-1]] for ln in md.splitlines()[2:]}
    assert list(lines) == ["dense", "HYDRA 90%", "HYDRA 99%", "magnitude 99%"]
    header = [c.strip() for c in md.splitlines()[0].split("|")[3:-1]]
    assert header == ["VGG16", "VGG16 (paper)", "WRN-28-4", "WRN-28-4 (paper)"]
    assert lines["HYDRA 99%"][1] == "— / 41.70 / —" and lines["magnitude 99%"][1] == "— / 34.30 / —"
    assert lines["HYDRA 90%"][3] == "— / 55.20 / —" and lines["dense"][1] == "— / 51.90 / —"


def test_scores_train_at_the_full_eps_even_when_train_ramps_it():
    from robprune.compose import compose
    from robprune.prune.channel.hydra import full_eps

    cfg = compose(["+experiment=mrpf_cifar10_cpu", "prune=hydra"])
    assert cfg.prune.during_training.objective.eps_ramp_epochs == 2  # the dense model's ramp, interpolated
    node = full_eps(cfg.prune.during_training)
    assert node.objective.eps_ramp_epochs == 0 and node.objective.attack.eps == cfg.dataset.eps
