"""AdaSAP's pruning during training: gradual masks reach the target, the physical cut keeps the masked
network's function, the sparsity accounting is l1_filter's, the schedule is checked before work, and a
shrunk end-to-end run through the CLI."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from tests.helpers import REPO, read_metrics, robprune
from torch import nn

from robprune.errors import ConfigError
from robprune.models import cnn8
from robprune.prune import PruneContext, prune_model
from robprune.prune.channel.gradual import GradualChannelMasks, check_schedule
from robprune.prune.channel.structured import build_groups
from robprune.train import fit
from robprune.train.sharpness import SharpnessAware


def _model():
    torch.manual_seed(0)
    return cnn8(in_channels=1, image_size=8, num_classes=3, mean=[0.5], std=[0.5], width=4, hidden=16)


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_masks_grow_step_by_step_to_the_target_and_stay_zero_under_adasap():
    model, (x, y) = _model(), _data()
    _, groups = build_groups(model, x[:1], exclude_stem=True, exclude_linear=True)
    targets = {g.root: g.channels // 2 for g in groups}
    hook = GradualChannelMasks(model, groups, targets, criterion="l2", interval=2, steps=3)
    opt = SharpnessAware(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), method="adasap")
    hook.bind(opt, model)
    assert opt.neurons is hook.neurons and opt.masks is hook.masks
    masked = []
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    objective = lambda m, a, b: nn.functional.cross_entropy(m(a), b)

    class Record:
        def after_step(self, m):
            masked.append(sum(int((~k).sum()) for k in hook.kept.values()))

    fit(model, loader, objective, opt, epochs=2, lr_factor=lambda e: 1.0, generator=torch.Generator(),
        hooks=[hook, Record()], progress=False)
    total = sum(targets.values())
    assert masked[1] < masked[3] < masked[5] == total and masked[-1] == total  # steps 1, 2, 3 at iterations 2, 4, 6
    for g in groups:
        conv = dict(model.named_modules())[g.root]
        dead = ~hook.kept[g.root]
        assert int(dead.sum()) == targets[g.root]
        assert bool((conv.weight[dead] == 0).all())  # momentum and the perturbation did not revive them
    assert opt.last_radii is not None and float(opt.last_radii.max()) <= 2.0 + 1e-6


def test_adasap_cut_keeps_the_masked_function_and_the_l1_filter_accounting():
    x, y = _data()
    model = _model()
    reference = _model()
    captured = {}

    def train(m, node, hooks):
        opt = SharpnessAware(m, torch.optim.SGD(m.parameters(), lr=0.05), method="adasap")
        for h in hooks:
            h.bind(opt, m)
        loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
        log = fit(m, loader, lambda mm, a, b: nn.functional.cross_entropy(mm(a), b), opt, epochs=int(node["epochs"]),
                  lr_factor=lambda e: 1.0, generator=torch.Generator(), hooks=hooks, progress=False)
        m.eval()
        captured["masked_logits"] = m(x).detach().clone()
        return log

    from omegaconf import OmegaConf
    cfg = OmegaConf.create({"_target_": "robprune.prune.adasap", "_partial_": True, "_recursive_": False,
                            "sparsity": 0.5, "during_training": {"epochs": 2, "prune_interval": 2, "prune_steps": 2}})
    info = prune_model(model, cfg, PruneContext(x[:1], train=train))
    model.eval()
    assert torch.allclose(model(x), captured["masked_logits"], atol=1e-5)  # removing zero channels changes nothing
    l1 = prune_model(reference, OmegaConf.create({"_target_": "robprune.prune.l1_filter", "_partial_": True,
                                                  "sparsity": 0.5}), PruneContext(x[:1]))
    assert info["ratios"] == l1["ratios"] and info["sparsity"] == pytest.approx(l1["sparsity"])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [c.out_channels for c in reference.modules() if isinstance(c, nn.Conv2d)]
    assert info["schedule"]["iterations"] == 8 and info["structured"] is True


def test_a_schedule_that_cannot_reach_the_target_is_refused():
    from omegaconf import OmegaConf
    cfg = OmegaConf.create({"during_training": {"epochs": 2, "prune_interval": 50, "prune_steps": 5}})
    with pytest.raises(ConfigError, match=r"prune_interval=50 x prune_steps=5 = 250 iterations, but epochs=2 x 8 batches = 16"):
        check_schedule(cfg, n_train=1000, batch_size=128)
    check_schedule(OmegaConf.create({"during_training": {"epochs": 2, "prune_interval": 4, "prune_steps": 4}}), 1000, 128)


def test_adasap_end_to_end_through_the_cli(tmp_path):
    quick = ["train=standard", "train.epochs=2", "model.width=8", "eval=clean", "eval.latency.repeats=2",
             "eval.latency.warmup=1", "eval.latency.batch_size=8"]
    args = ["run", *quick, "prune=adasap", "prune.sparsity=0.5", "+adasap.prune_epochs=2", "+adasap.prune_interval=5",
            "+adasap.prune_steps=3", "finetune=asam", "finetune.epochs=1", f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    proc = robprune(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = read_metrics(tmp_path / "run")
    assert set(m["stages"]) == {"train", "prune_train", "finetune", "eval"}  # no one-shot prune stage
    assert m["params"] < m["params_dense"] and abs(m["sparsity"] - 0.5) < 0.1 and 0 <= m["clean_acc"] <= 1
    from robprune.checkpoint import load_checkpoint
    model, meta = load_checkpoint(tmp_path / "run")
    assert meta["prune"]["method"] == "adasap" and meta["prune"]["schedule"]["prune_steps"] == 3
    weights = sum(mod.weight.numel() for mod in model.modules() if isinstance(mod, (nn.Conv2d, nn.Linear)))
    assert weights == meta["prune"]["prunable_after"]  # the saved checkpoint holds what the accounting says


def test_an_impossible_schedule_fails_before_training(tmp_path, capsys):
    from robprune.cli import main

    quick = ["train=standard", "train.epochs=1", "eval=clean"]
    code = main(["run", *quick, "prune=adasap", "+adasap.prune_interval=500", f"cache_dir={tmp_path / 'cache'}",
                 f"hydra.run.dir={tmp_path / 'bad'}"])
    err = capsys.readouterr().err
    assert code == 2 and "prune_interval=500" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad" / "metrics.json").exists()
    assert not (tmp_path / "cache" / "train").exists()  # nothing was trained


ADASAP_EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("adasap_*.yaml"))
SHRUNK = ["train.epochs=1", "adasap.prune_epochs=1", "adasap.prune_interval=1", "adasap.prune_steps=2", "data.batch_size=16",
          "adasap.finetune_epochs.adasap=1", "adasap.finetune_epochs.l2_filter=2", "eval.latency.repeats=1",
          "eval.latency.warmup=0", "eval.latency.batch_size=2", "eval.corruptions.n_examples=8",
          "eval.corruptions.names=[gaussian_noise,fog]", "eval.corruptions.severities=[1,5]",
          "dataset=synthetic", "dataset.num_train=48", "dataset.num_test=16", "dataset.train_split=train",
          "dataset.test_split=test"]
SIZE = {"resnet18": ["dataset.image_size=8", "model.width=4"], "vgg16_bn": ["dataset.image_size=32", "model.width_mult=0.0625"],
        "cnn8": ["dataset.image_size=8", "model.width=4", "model.hidden=16"]}


@pytest.mark.parametrize("name", ADASAP_EXPERIMENTS)
def test_adasap_experiments_run_shrunk_with_equal_budgets(tmp_path, name):
    from robprune.compose import compose
    from robprune.pipeline import run

    full = compose([f"+experiment={name}"])
    assert full.prune.method == "adasap" and full.finetune.sharpness.method == "asam" and "corruptions" in full.eval
    base = compose([f"+experiment={name}", "prune=l2_filter"])
    assert base.finetune.sharpness.method == "none" and "during_training" not in base.prune
    assert base.finetune.epochs == full.finetune.epochs + full.prune.during_training.epochs  # the same budget
    if full.dataset.name == "imagenet":  # streamed ImageNet trees: tests/test_every_option.py runs it shrunk
        return
    model = full.model._target_.rsplit(".", 1)[1]
    overrides = [f"+experiment={name}", *SHRUNK, *SIZE[model], f"cache_dir={tmp_path / 'cache'}"]
    m = run(compose(overrides), tmp_path / "adasap", choices={"experiment": name})
    assert m["params"] < m["params_dense"] and 0 <= m["corruption_acc/mean"] <= 1
    b = run(compose([*overrides, "prune=l2_filter"]), tmp_path / "l2", choices={"experiment": name})
    assert b["stages"]["train"]["key"] == m["stages"]["train"]["key"] and b["stages"]["train"]["reused"]
    assert abs(b["sparsity"] - m["sparsity"]) < 0.05  # same size (the same uniform ratio by bisection)


def test_adasap_table_shows_the_papers_numbers_next_to_ours(tmp_path):
    """+table=adasap on ImageNet runs: rows method × size, cells val / C / V2 (mean ± std over seeds), and the
    paper's ResNet-50 numbers at 0.40× beside them; what docs/methods/adasap.md#published-numbers does not list (V2, magnitude) reads —."""
    from tests.test_report import write_run

    from robprune.cli import main as cli_main

    runs = [("adasap", 0.6, 0.76, 0.40), ("taylor", 0.6, 0.74, 0.35), ("l2_filter", 0.6, 0.73, 0.34),
            ("adasap", 0.5, 0.77, 0.42), ("none", None, 0.78, 0.39)]
    for i, (method, sparsity, clean, corrupted) in enumerate(runs):
        for seed in (0, 1):
            write_run(tmp_path / f"{i}-{seed}", ratio=0.5, seed=seed, method=method, clean_acc=clean + 0.01 * seed,
                      config={"dataset": {"name": "imagenet"}, "prune": {"sparsity": sparsity}},
                      **{"corruption_acc/mean": corrupted, "clean_acc/imagenet_v2": clean - 0.1})
    assert cli_main(["table", "+table=adasap", str(tmp_path), "--quiet"]) == 0
    md = (tmp_path / "adasap.md").read_text()
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[3:-1]] for ln in md.splitlines()[2:]}
    assert list(lines) == ["dense", "AdaSAP 0.50×", "AdaSAP 0.40×", "Taylor 0.40×", "magnitude 0.40×"]
    assert lines["AdaSAP 0.40×"] == ["76.50 ± 0.71 / 40.00 ± 0.00 / 66.00 ± 0.00", "77.27 / 41.23 / —"]
    assert lines["Taylor 0.40×"][1] == "75.85 / 37.84 / —" and lines["magnitude 0.40×"][1] == "—"
    assert [c.strip() for c in md.splitlines()[0].split("|")[3:-1]] == ["ImageNet", "ImageNet (paper)"]
    csv = pd.read_csv(tmp_path / "adasap.csv")
    row = csv[csv["model"] == "Taylor 0.40×"].iloc[0]
    assert row["paper/corruption_acc/mean"] == pytest.approx(37.84) and np.isnan(row["paper/clean_acc/imagenet_v2"])


def test_adasap_refuses_to_run_outside_the_training_stage_or_without_a_target():
    from omegaconf import OmegaConf

    x, _ = _data()
    node = {"epochs": 1, "prune_interval": 1, "prune_steps": 1}
    base = {"_target_": "robprune.prune.adasap", "_partial_": True, "_recursive_": False, "during_training": node}
    with pytest.raises(ConfigError, match="prunes during training"):
        prune_model(_model(), OmegaConf.create({**base, "sparsity": 0.5}), PruneContext(x[:1]))
    with pytest.raises(ConfigError, match="prune.sparsity must be set"):
        prune_model(_model(), OmegaConf.create({**base, "sparsity": None}), PruneContext(x[:1], train=lambda m, n, h: []))
    with pytest.raises(ConfigError, match="only 0 of prune_steps=1"):  # a training that stops early is caught too
        prune_model(_model(), OmegaConf.create({**base, "sparsity": 0.5}), PruneContext(x[:1], train=lambda m, n, h: []))


def test_gradual_masks_travel_to_a_rank_and_their_state_comes_back():
    """What data-parallel training does with the hook (robprune.train.trainer): one pickle with the model,
    re-traced on the replica (Torch-Pruning's groups hold autograd nodes), trained there, and the masks
    and counters handed back to the original hook, which then cuts exactly what the rank masked."""
    import copy
    import pickle

    from robprune.train.trainer import _plain, _tensors

    model, (x, y) = _model(), _data()
    _, groups = build_groups(model, x[:1], exclude_stem=True, exclude_linear=True)
    targets = {g.root: g.channels // 2 for g in groups}
    hook = GradualChannelMasks(model, groups, targets, criterion="l2", interval=2, steps=3,
                               regroup={"example_inputs": x[:1], "exclude_stem": True, "exclude_linear": True})
    replica, remote = pickle.loads(pickle.dumps(copy.deepcopy((model, hook))))
    assert remote.groups is None
    remote.attach(replica)
    opt = torch.optim.SGD(replica.parameters(), lr=0.05)
    remote.bind(opt, replica)
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    fit(replica, loader, lambda m, a, b: nn.functional.cross_entropy(m(a), b), opt, epochs=2,
        lr_factor=lambda e: 1.0, generator=torch.Generator(), hooks=[remote], progress=False)
    assert remote.done == 3
    model.load_state_dict(replica.state_dict())
    hook.load_state(_tensors(_plain(remote.state())))
    assert (hook.done, hook.iteration) == (3, 8) and hook.removed() == remote.removed()
    assert sum(len(v) for v in hook.removed().values()) == sum(targets.values())
    for p, mask in hook.masks.items():  # the original hook's masks match the weights it got back
        assert bool((p[~mask] == 0).all())
