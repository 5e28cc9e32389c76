"""The Adver-Fine study: the attack compatibility mode, the paper's recipes as configs, every adverfine
experiment composed and run shrunk, the multirun grid, the Table 3/4 layout and the compression sweep plot."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from robprune.attacks import pgd
from robprune.attacks.compat import attack_compat
from robprune.attacks.threat import linf_norm
from robprune.cli import main as cli_main
from robprune.compose import compose
from robprune.config import instantiate
from robprune.models import build_model, small_cnn
from robprune.prune import prune_model
from robprune.pipeline import run
from robprune.quant import QuantSpec, calibrate, quantize_model
from tests.helpers import REPO, read_metrics, robprune

# the experiments that start from a RobustBench model take the zoo's datasets only: tests/test_every_option.py runs
# them shrunk on a tiny zoo folder and a tiny CIFAR-10
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("adverfine_*.yaml")
                     if not str(compose([f"+experiment={p.stem}"]).model._target_).endswith("robustbench_model"))
# One grid point per experiment (train, compress, finetune), chosen so that together they cover every path
# (QAT with PGD-AT, PTQ then adversarial fine-tuning, pruning then standard fine-tuning) within the time budget.
GRID_POINT = {"adverfine_mnist": ("adverfine_cpu_pgd_at", "qat", "adverfine_cpu_pgd_at"),
              "adverfine_fmnist": ("adverfine_pgd_at", "ptq", "adverfine_pgd_at"),
              "adverfine_cifar10": ("adverfine_standard", "prune", "adverfine_standard")}
TINY = [  # digits instead of the experiment's data, a tiny model and one-epoch stages with PGD-1
    "dataset=digits", "dataset.train_split='train[:256]'", "dataset.test_split='test[:64]'", "data.download=false",
    "train.epochs=1", "adverfine.qat_epochs=1", "finetune.epochs=1", "adverfine.attack_steps=1",
    "eval.attacks.pgd20.steps=2", "eval.n_examples.pgd20=32", "eval.large_eps_n=16",
    "eval.latency.repeats=1", "eval.latency.warmup=0", "eval.latency.batch_size=4",
]
SMALL_MODEL = {"cnn8": ["model.width=4", "model.hidden=16"], "resnet18": ["model.width=4"]}


@pytest.mark.parametrize("quantised", [False, True], ids=["float", "int8"])
def test_compat_adverfine_pixel_perturbation_is_half_the_configured_eps(quantised):
    torch.manual_seed(0)
    model = small_cnn(in_channels=1, image_size=8, num_classes=10, mean=[0.5], std=[0.5]).eval()
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    if quantised:
        quantize_model(model, QuantSpec("ptq", 8))
        calibrate(model, x)
    eps = 0.1
    x_adv = pgd(model, x, y, eps=eps, steps=10, compat="adverfine")
    assert linf_norm(x_adv - x).max().item() == pytest.approx(eps / 2, abs=1e-6)  # ε acted on (x − .5)/.5
    x_ok = pgd(model, x, y, eps=eps, steps=10)  # the default convention: ε in pixels, clamped to [0, 1]
    assert linf_norm(x_ok - x).max().item() == pytest.approx(eps, abs=1e-6) and 0 <= x_ok.min() <= x_ok.max() <= 1


def test_attack_compat_is_recorded_for_every_attack_of_the_study():
    base = ["+experiment=adverfine_fmnist", "train=adverfine_pgd_at", "compress=qat", "finetune=adverfine_pgd_at"]
    assert set(attack_compat(compose(base)).values()) == {None}
    switched = attack_compat(compose([*base, "adverfine.attack_compat=adverfine"]))
    assert set(switched) == {"train.objective.attack", "quant.train.objective.attack", "finetune.objective.attack",
                             "eval.attacks.pgd20"}
    assert set(switched.values()) == {"adverfine"}


def test_paper_recipes_as_configs():
    cfg = compose(["+experiment=adverfine_fmnist", "train=adverfine_pgd_at", "compress=prune", "finetune=adverfine_pgd_at"])
    assert cfg.data.batch_size == 64 and cfg.train.epochs == 20 and cfg.prune.channel_ratio == 0.8
    assert OmegaConf.to_container(cfg.train.schedule) == {"name": "step", "milestones": [4], "gamma": 0.1}
    assert (cfg.train.optimizer.lr, cfg.train.optimizer.momentum) == (0.1, 0.0)
    assert (cfg.finetune.epochs, cfg.finetune.optimizer.lr, cfg.finetune.optimizer.momentum) == (3, 0.1, 0.0)  # pruned
    assert cfg.finetune.objective.attack.steps == 20 and cfg.eval.attacks.pgd20.step_size == 0.01
    for compress in ("ptq", "qat"):
        q = compose(["+experiment=adverfine_fmnist", f"compress={compress}", "finetune=adverfine_standard"])
        optimizer = instantiate(q.finetune.optimizer, "finetune.optimizer")([torch.zeros(1, requires_grad=True)])
        assert (optimizer.defaults["lr"], optimizer.defaults["momentum"]) == (0.01, 0.9)  # quantised, as built
        assert q.quant.bits == 8
    model = build_model(cfg.model, in_channels=1, image_size=28, num_classes=10, mean=[0.5], std=[0.5])
    info = prune_model(model, cfg.prune, example_inputs=torch.zeros(1, 1, 28, 28))
    assert [layer["channels_after"] for layer in info["layers"]] == [32, 7, 13, 13, 26, 26]  # 80% removed, stem kept
    assert compose(["+experiment=adverfine_cifar10", "compress=prune"]).prune.channel_ratio == 0.5


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_grid_point_runs_shrunk(tmp_path, experiment):
    train, compress, finetune = GRID_POINT.get(experiment, ("adverfine_standard", "ptq", "adverfine_pgd_at"))
    model = compose([f"+experiment={experiment}"]).model._target_.rsplit(".", 1)[-1]
    cfg = compose([f"+experiment={experiment}", f"train={train}", f"compress={compress}", f"finetune={finetune}",
                   *TINY, *SMALL_MODEL[model], f"cache_dir={tmp_path / 'cache'}"])
    m = run(cfg, tmp_path / "run", choices={"compress": compress})
    assert list(m["stages"]) == ["train", "prune", *(["quant"] if compress != "prune" else []), "finetune", "eval"]
    assert m["quant"]["method"] == {"prune": "none"}.get(compress, compress)
    assert m["compression_ratio"] > (3 if compress != "prune" else 1.5)
    assert 0 <= m["robust_acc/pgd20"] <= m["clean_acc/pgd20"] and m["n_eval/pgd20"] == 32
    assert set(m["attack_compat"].values()) == {None}


def test_multirun_grid_from_the_experiment_and_its_table(tmp_path):
    """`-m +experiment=adverfine_mnist` expands hydra.sweeper.params; here only the compression axis is left open."""
    tiny = [o for o in TINY if not o.startswith("finetune.")]
    args = ["run", "-m", "+experiment=adverfine_mnist", *tiny, "model.width=4", "model.hidden=16",
            "train=adverfine_cpu_standard", "finetune=none", "seed=0", f"cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    res = robprune(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    runs = [read_metrics(p.parent) for p in sorted((tmp_path / "sweep").glob("*/metrics.json"))]
    assert [m["choices"]["compress"] for m in runs] == ["none", "prune", "ptq", "qat"]
    assert [m["stages"]["train"]["reused"] for m in runs] == [False, True, True, True]  # one dense model
    assert [m["quant"]["method"] for m in runs] == ["none", "none", "ptq", "qat"]
    assert cli_main(["table", "+table=adverfine", str(tmp_path / "sweep"), "--quiet"]) == 0
    md = (tmp_path / "sweep" / "adverfine.md").read_text()
    for row in ("dense f_s", "pruned f_s", "quantised f_s", "QAT f_s"):
        assert row in md


def write_run(root: Path, i: int, *, train: str, compress: str, finetune: str, seed: int, clean: float, robust: float):
    run_dir = root / str(i)
    run_dir.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": seed, "dataset": {"name": "fashion_mnist"}}), run_dir / "config.yaml")
    metrics = {"clean_acc": clean, "robust_acc/pgd20": robust, "seed": seed, "dataset": {"name": "fashion_mnist"},
               "choices": {"train": train, "compress": compress, "finetune": finetune}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_adverfine_table_layout_on_fixture_runs(tmp_path):
    i = 0
    for seed, (c, r) in enumerate([(0.80, 0.70), (0.84, 0.74)]):
        write_run(tmp_path, i, train="adverfine_standard", compress="prune", finetune="adverfine_pgd_at", seed=seed,
                  clean=c, robust=r)
        write_run(tmp_path, i + 1, train="adverfine_standard", compress="prune", finetune="none", seed=seed,
                  clean=0.3, robust=0.0)
        write_run(tmp_path, i + 2, train="adverfine_pgd_at", compress="none", finetune="none", seed=seed,
                  clean=0.88, robust=0.8)
        i += 3
    assert cli_main(["table", "+table=adverfine", str(tmp_path), "--quiet"]) == 0
    md = (tmp_path / "adverfine.md").read_text()
    lines = {ln.split("|")[1].strip(): ln for ln in md.splitlines()[2:]}
    assert list(lines) == ["pruned f_s", "dense f_r"]  # the layout's order: f_s before f_r
    assert "82.00 ± 2.83 / 72.00 ± 2.83" in lines["pruned f_s"]  # mean ± std (ddof 1) over the two seeds, in %
    assert "83.91 / 76.74" in lines["pruned f_s"] and "87.87 / 82.51" in lines["dense f_r"]  # the paper alongside
    header = md.splitlines()[0]
    assert header.index("no fine-tune") < header.index("adversarial FT") and "adversarial FT (paper)" in header
    csv = pd.read_csv(tmp_path / "adverfine.csv")
    row = csv[(csv["model"] == "pruned f_s") & (csv["column"] == "adversarial FT")].iloc[0]
    assert row["clean_acc"] == pytest.approx(0.82) and row["paper/robust_acc/pgd20"] == pytest.approx(76.74)
    assert cli_main(["table", "+table=nope", str(tmp_path)]) == 2  # unknown layout: one-line ConfigError


def test_compression_sweep_summary_and_plot(tmp_path):
    spec = importlib.util.spec_from_file_location("compression_sweep", REPO / "scripts" / "compression_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    for method, key, levels in (("prune", "channel_ratio", (0.3, 0.7)), ("quant", "bits", (8, 4))):
        for j, level in enumerate(levels):
            run_dir = tmp_path / method / str(j)
            run_dir.mkdir(parents=True)
            OmegaConf.save(OmegaConf.create({"seed": 0, method: {key: level}}), run_dir / "config.yaml")
            ratio = 1 / (1 - level) ** 2 if method == "prune" else 32 / level
            (run_dir / "metrics.json").write_text(json.dumps({"clean_acc": 0.9 - 0.01 * ratio, "robust_acc/pgd20": 0.5,
                                                              "compression_ratio": ratio, "seed": 0}))
    table = sweep.summarise(tmp_path)
    table.columns = ["/".join(c for c in col if c) if isinstance(col, tuple) else col for col in table.columns]
    assert sorted(table["level"]) == [0.3, 0.7, 4, 8] and table["compression_ratio/mean"].max() == pytest.approx(1 / 0.09)
    png = sweep.plot_flat(table, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
