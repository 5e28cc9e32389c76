"""MRPF's module robustness sensitivity, the scores stage in the pipeline, and every mrpf experiment, shrunk."""
import functools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from robprune.attacks import pgd
from robprune.compose import compose
from robprune.config import config_dir
from robprune.declarations import load_option
from robprune.models import Normalize
from robprune.pipeline import run
from robprune.prune import PruneContext, prune_model
from robprune.prune.channel.scores import scores_record
from robprune.prune.channel.sensitivity import mrs_scores
from tests.helpers import SHARED_DATA, SHRINK

ATTACK = functools.partial(pgd, eps=0.1, steps=3)


class TwoBranch(nn.Module):
    """stem → [branch_a, branch_b · gate] concatenated → pool → fc. gate = 0: branch_b's weights
    provably cannot change the output (its contribution is multiplied by an exact zero)."""

    def __init__(self):
        super().__init__()
        self.normalize = Normalize([0.5], [0.25])
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.branch_a = nn.Conv2d(8, 16, 3, padding=1)
        self.branch_b = nn.Conv2d(8, 16, 3, padding=1)
        self.register_buffer("gate", torch.zeros(()))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.stem(self.normalize(x)))
        z = torch.cat([F.relu(self.branch_a(h)), F.relu(self.branch_b(h)) * self.gate], 1)
        return self.fc(z.mean((2, 3)))


@pytest.fixture(scope="module")
def trained_two_branch():
    """TwoBranch fitted for 60 steps on a learnable toy task (class = brightest quadrant band)."""
    torch.manual_seed(0)
    x = torch.rand(256, 1, 8, 8)
    y = (x.view(256, -1)[:, :10].argmax(1)) % 10
    model = TwoBranch()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def _mrs(model, x, y, **kw):
    result = mrs_scores(model, (x * 255).to(torch.uint8), y, device=torch.device("cpu"), attack=ATTACK,
                        n_images=128, batch_size=64, **kw)
    return {name: row["mrs"] for name, row in result.layers.items()}, result


@pytest.mark.parametrize("perturbation", ["worst_case", "gaussian_rel", "grad_rel"])
def test_mrs_deterministic_and_zero_branch_is_least_sensitive(trained_two_branch, perturbation):
    # α = 1: at small α a Gaussian draw can *lower* the loss on AE (the examples were tuned to the
    # unperturbed weights), i.e. MRS < 0, which allocation floors to τ; α = 1 makes every live layer clearly > 0.
    model, x, y = trained_two_branch
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first, result = _mrs(model, x, y, perturbation=perturbation, seed=0, alpha=1.0, steps=3)
    again, _ = _mrs(model, x, y, perturbation=perturbation, seed=0, alpha=1.0, steps=3)
    assert first == again
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # restored bit-exactly
    assert first["branch_b"] == 0.0  # provably no effect on the loss
    assert all(v > 0 for k, v in first.items() if k != "branch_b"), first
    if perturbation == "gaussian_rel":
        other_seed, _ = _mrs(model, x, y, perturbation=perturbation, seed=1, alpha=1.0, steps=3)
        assert other_seed != first
        assert len(result.layers["stem"]["losses"]) == 5  # R = 5 draws by default
    # ... and so the largest ratio: allocation with the real scores
    info = prune_model(model, OmegaConf.merge(load_option("prune", "mrs"), {"sparsity": 0.4}),
                       PruneContext(torch.rand(1, 1, 8, 8), scores={"layers": [{"name": k, "mrs": v} for k, v in first.items()]}))
    ratios = info["ratios"]
    assert ratios["branch_b"] == max(ratios.values()) > ratios["branch_a"]  # r_l = min(c/s_l, r_max), s floored at τ


def test_worst_case_is_positive_restores_weights_and_beats_a_random_direction(trained_two_branch):
    model, x, y = trained_two_branch
    model.train()  # mode and .grad must come back as found
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    worst, result = _mrs(model, x, y, alpha=0.1, steps=4)
    assert model.training
    assert all((g is None and p.grad is None) or torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    model.eval()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # restored bit-exactly
    assert all(v >= 0 for v in worst.values()) and worst["branch_b"] == 0.0, worst
    assert result.info["steps"] == 4 and all(len(r["losses"]) == 4 for r in result.layers.values())
    _, gauss = _mrs(model, x, y, perturbation="gaussian_rel", alpha=0.1, draws=1)
    for name, row in result.layers.items():  # same AE (same seed), same ‖ΔW‖_F: ascent beats a random direction
        assert max(row["losses"]) >= gauss.layers[name]["losses"][0], name
    assert _mrs(model, x, y, alpha=0.1, steps=4)[0] == worst  # deterministic for a seed


@pytest.mark.parametrize("key, value", [("alpha", 0.0), ("alpha", -1.0), ("steps", 0), ("draws", 0)])
def test_bad_scores_options_name_the_key(trained_two_branch, key, value):
    from robprune.errors import ConfigError

    model, x, y = trained_two_branch
    with pytest.raises(ConfigError, match=rf"prune\.scores\.{key} must be .*e\.g\. prune\.scores\.{key}="):
        _mrs(model, x, y, **{key: value})


def test_calibration_set_is_adversarial_and_from_training_images(trained_two_branch):
    model, x, y = trained_two_branch
    _, result = _mrs(model, x, y, steps=1)
    assert result.x_adv.shape == (128, 1, 8, 8) and result.y.shape == (128,)
    with torch.no_grad():
        adv_loss = F.cross_entropy(model(result.x_adv), result.y).item()
    assert result.baseline_loss == pytest.approx(adv_loss, rel=1e-5)
    assert result.info["n_images"] == 128 and result.info["perturbation"] == "worst_case"  # the default


def test_coupled_layers_share_the_mean_score():
    from robprune.models import build_model

    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"_target_": "robprune.models.resnet18", "width": 4}), in_channels=3, image_size=8,
                        num_classes=10, mean=[0.5] * 3, std=[0.25] * 3).eval()
    x, y = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8), torch.arange(32) % 10
    result = mrs_scores(model, x, y, device=torch.device("cpu"), attack=ATTACK, n_images=32, steps=1)
    record = scores_record(model, result, torch.rand(1, 3, 8, 8))
    layer = {r["name"]: r["mrs"] for r in record["layers"]}
    group = next(g for g in record["groups"] if "layer2.0.shortcut.0" in g["members"])
    assert set(group["members"]) == {"layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2"}
    assert group["mrs"] == pytest.approx(sum(layer[m] for m in group["members"]) / 3)
    assert json.loads(json.dumps(record)) == record


def _run(tmp_path, name, *overrides):
    cfg = compose([*SHRINK, f"cache_dir={tmp_path / 'cache'}", "prune=mrs", "prune.scores.n_images=64",
                   "prune.scores.steps=2", "prune.scores.damage_seeds=[0]", "train_seed=0", *overrides])
    return run(cfg, tmp_path / name, choices={}), tmp_path / name


def test_scores_stage_runs_once_per_dense_model(tmp_path):
    a, dir_a = _run(tmp_path, "a", "prune.sparsity=0.5", "seed=0")
    b, dir_b = _run(tmp_path, "b", "prune.sparsity=0.7", "seed=1")
    built = [p for p in (tmp_path / "cache" / "scores").iterdir() if p.is_dir()]
    assert len(built) == 1  # one MRS computation for two sparsities and two run seeds
    assert b["stages"]["train"]["reused"] and not b["stages"]["prune"]["reused"]
    assert a["sparsity"] == pytest.approx(0.5, abs=0.1) and b["sparsity"] > a["sparsity"]
    for d in (dir_a, dir_b):
        assert {"scores.json", "scores.md", "mrs.png", "damage.png"} <= {p.name for p in d.iterdir()}
    scores = json.loads((dir_a / "scores.json").read_text())
    assert scores["kind"] == "mrs" and len(scores["layers"]) == 5 and scores["n_images"] == 64
    rows = [r for r in b["prune_layers"] if r["group"]]
    assert rows and all("mrs" in r and 0 <= r["ratio"] <= 0.95 for r in rows)
    assert (dir_a / "mrs.png").read_bytes()[:4] == b"\x89PNG"


def test_global_magnitude_keeps_its_sparsity_through_finetuning(tmp_path):
    cfg = compose([*SHRINK, f"cache_dir={tmp_path / 'cache'}", "prune=global_magnitude", "prune.sparsity=0.7"])
    m = run(cfg, tmp_path / "gm", choices={})
    from robprune.checkpoint import load_checkpoint

    model, meta = load_checkpoint(tmp_path / "gm")
    weights = torch.cat([mod.weight.flatten() for mod in model.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))])
    assert m["stages"]["finetune"]["reused"] is False and meta["finetune_log"]
    assert (weights == 0).float().mean().item() == pytest.approx(0.7, abs=1e-4)
    assert m["sparsity"] == pytest.approx(0.7, abs=1e-4) and m["structured"] is False


# the experiments that start from a RobustBench model take the zoo's datasets only: tests/test_every_option.py runs
# them shrunk on a tiny zoo folder and a tiny CIFAR-10
EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("mrpf_*.yaml")
                     if not str(compose([f"+experiment={p.stem}"]).model._target_).endswith("robustbench_model"))
# every experiment, shrunk: tiny synthetic images (MNIST: the real files when present), 1+1 epochs
EXPERIMENT_SHRINK = [
    "train.epochs=1", "finetune.epochs=1", "eval=pgd", "eval.attacks.pgd20.steps=2", "eval.n_examples.pgd20=16",
    "eval.latency.repeats=1", "eval.latency.warmup=0", "eval.latency.batch_size=2", "data.batch_size=32",
    "prune.scores.n_images=32", "prune.scores.draws=1", "prune.scores.steps=2", "prune.scores.damage_seeds=[0]",
    "prune.scores.attack.steps=2",
    "train.objective.attack.steps=2", "finetune.objective.attack.steps=2",
]
SYNTHETIC = ["dataset=synthetic", "dataset.num_train=64", "dataset.num_test=16", "dataset.train_split=train",
             "dataset.test_split=test"]
SIZES = {"resnet18": ["dataset.image_size=8", "model.width=4"], "vgg16_bn": ["dataset.image_size=32", "model.width_mult=0.0625"]}


def experiment_overrides(name: str) -> list[str]:
    cfg = compose([f"+experiment={name}"])
    model = cfg.model._target_.rsplit(".", 1)[1]
    if name == "mrpf_mnist" and (SHARED_DATA / "mnist").is_dir():
        data = [f"data.root={SHARED_DATA / 'mnist'}", "dataset.train_split='test[:64]'", "dataset.test_split='test[8000:8016]'",
                "model.width=4", "model.hidden=16"]
    else:
        data = SYNTHETIC + SIZES.get(model, ["dataset.image_size=8", "model.width=4", "model.hidden=16"])
    return [f"+experiment={name}", *EXPERIMENT_SHRINK, *data]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_shrunk(tmp_path, name):
    full = compose([f"+experiment={name}"])
    assert full.prune.method == "mrs" and full.prune.sparsity >= 0.8 and full.finetune.objective.beta == 6.0
    assert "autoattack" in full.eval.attacks and "pgd20" in full.eval.attacks
    cfg = compose([*experiment_overrides(name), f"cache_dir={tmp_path / 'cache'}"])
    m = run(cfg, tmp_path / name, choices={"experiment": name})
    assert abs(m["sparsity"] - cfg.prune.sparsity) <= 0.05 and m["params"] < m["params_dense"]
    assert (Path(tmp_path / name) / "scores.json").exists()
    assert 0 <= m["robust_acc/pgd20"] <= 1
