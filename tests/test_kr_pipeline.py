"""Knowledge-retention pruning in the pipeline (issue "Knowledge-retention pruning"): weight-averaging
ingredients as a stage family, the greedy average, the shared calibration draw, kr_obs / sparsegpt /
magnitude on the averaged model, their reports, and the bad inputs — on a tiny BERT."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from robprune.compose import compose
from robprune.graph import MODEL, plan
from robprune.pipeline import run
from robprune.stages import STAGES
from tests.test_validation import assert_one_line, no_cache_entry, run_main
from tests.text_fixtures import tiny_bert, write_sst2

SHRINK = ["dataset.train_split='train[:200]'", "dataset.heldout_split='train[200:240]'", "train.epochs=6",
          "train.optimizer.lr=3e-3", "~average.ingredients.lr2e5_wd1e3_2ep", "~average.ingredients.freelb_seed3",
          "average.ingredients.lr3e5_seed1.optimizer.lr=2e-3", "+average.ingredients.lr3e5_seed1.epochs=6",
          "average.n_score=6", "average.attack.query_budget=40", "prune.calibration.n=48", "prune.calibration.heldout=16",
          "eval.n_examples.textfooler=6", "eval.n_examples.textbugger=6", "eval.attacks.textfooler.query_budget=60",
          "eval.latency.repeats=1", "eval.latency.warmup=0", "eval.latency.batch_size=4"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("kr")
    data = write_sst2(root / "sst2", n_train=240, n_dev=30)
    return {"root": root, "data": data, "bert": tiny_bert(root / "bert", data / "train.tsv")}


def _cfg(tiny, tmp_path, *extra):
    return compose(["+experiment=kr_sst2", f"data.root={tiny['data']}", f"model.pretrained={tiny['bert']}", *SHRINK,
                    f"cache_dir={tmp_path / 'cache'}", *extra])


def test_plan_averages_ingredients_then_prunes_the_average(tiny, tmp_path):
    placed = {p.stage.name: p.inputs for p in plan(STAGES, compose(["+experiment=kr_sst2", "data.root=x"]))}
    assert list(placed) == ["train", "ingredient_lr3e5_seed1", "ingredient_lr2e5_wd1e3_2ep", "ingredient_freelb_seed3",
                            "average", "calib", "prune", "eval"]
    assert set(placed["average"]) == {"train", "ingredient_lr3e5_seed1", "ingredient_lr2e5_wd1e3_2ep", "ingredient_freelb_seed3"}
    assert placed["prune"] == {MODEL: "average", "calib": "calib"} and placed["eval"] == {MODEL: "prune"}


def test_kr_sweep_builds_the_average_once_and_each_method_reports(tiny, tmp_path):
    first = run(_cfg(tiny, tmp_path), tmp_path / "kr_obs")
    record = json.loads((tmp_path / "kr_obs" / "average.json").read_text())
    assert set(record["scores"]) == {"train", "ingredient_lr3e5_seed1"} and record["chosen"][0] == record["order"][0]
    assert first["sparsity"] == pytest.approx(0.5, abs=0.01) and 0 < first["sparsity_total"] < first["sparsity"]
    assert first["checks"]["sparsity_matches_pruner"] and first["checks"]["passed"]
    assert (tmp_path / "kr_obs" / "reconstruction.md").exists() and (tmp_path / "kr_obs" / "reconstruction.png").exists()
    for method in ("sparsegpt", "magnitude"):
        m = run(_cfg(tiny, tmp_path, f"prune={method}"), tmp_path / method)
        reused = {name for name, s in m["stages"].items() if s["reused"]}
        assert {"train", "ingredient_lr3e5_seed1", "average", "calib"} <= reused and "prune" not in reused
        assert m["sparsity"] == pytest.approx(0.5, abs=0.01) and all("rel_error" in row for row in m["prune_layers"])
        assert (tmp_path / method / "reconstruction.md").exists()
    n_m = run(_cfg(tiny, tmp_path, "prune.n_m=2:4"), tmp_path / "n_m")
    assert n_m["sparsity"] == pytest.approx(0.5, abs=1e-9) and n_m["stages"]["calib"]["reused"]
    _check_robustness_script(tmp_path, ["kr_obs", "sparsegpt", "magnitude", "n_m"])


def _check_robustness_script(tmp_path, names):
    """scripts/kr_robustness.py on these runs: its pooled Aua is each run's own (one seed), and since the
    runs of a seed attack the same sentences, robust-only-under-kr_obs minus robust-only-under-the-other
    is exactly the difference of their robust counts."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "robustness.json"
    script = Path(__file__).parents[1] / "scripts" / "kr_robustness.py"
    subprocess.run([sys.executable, str(script), *(str(tmp_path / n) for n in names), "--out", str(out)],
                   check=True, capture_output=True)
    rows = {(r["method"], r["n_m"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {("kr_obs", None), ("sparsegpt", None), ("magnitude", None), ("kr_obs", "2:4")}
    for name, key in zip(names, [("kr_obs", None), ("sparsegpt", None), ("magnitude", None), ("kr_obs", "2:4")]):
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        for attack in ("textfooler", "textbugger"):
            got = rows[key][attack]
            assert got["attacked"] == metrics[f"n_eval/{attack}"] and got["aua_pooled"] == pytest.approx(metrics[f"text_attack/{attack}/aua"])
    reference = rows[("kr_obs", None)]
    for other in ("sparsegpt", "magnitude"):
        for attack in ("textfooler", "textbugger"):
            versus = rows[(other, None)][attack]["vs_reference"]
            assert versus["robust_only_reference"] - versus["robust_only_this"] == (
                reference[attack]["robust"] - rows[(other, None)][attack]["robust"])
            assert 0 < versus["p"] <= 1 and versus["compared"] == reference[attack]["attacked"]
    assert "vs_reference" not in reference["textfooler"] and "vs_dense" not in reference["textfooler"]  # no dense run given
    spec = importlib.util.spec_from_file_location("kr_robustness", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.mcnemar(5, 0) == 2 / 2 ** 5 and module.mcnemar(3, 3) == 1 and module.mcnemar(0, 0) == 1


@pytest.mark.parametrize("overrides, named", [
    (["~average.ingredients.lr3e5_seed1"], "average.ingredients is empty"),
    (["prune.calibration.n=500"], "prune.calibration.n=500"),
    (["prune.n_m=2:3"], "prune.n_m=2:3"),
    (["prune.n_m=4:2"], "prune.n_m=4:2"),
    (["prune.sparsity=1.0"], "prune.sparsity"),
    (["dataset.heldout_split=null"], "dataset.heldout_split"),
])
def test_kr_bad_inputs_exit_2_before_any_stage(tiny, tmp_path, capsys, overrides, named):
    args = ["+experiment=kr_sst2", f"data.root={tiny['data']}", f"model.pretrained={tiny['bert']}", *SHRINK,
            f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", *overrides]
    code, err = run_main(args, capsys)
    assert_one_line(code, err, named)
    assert no_cache_entry(tmp_path / "cache")


def test_language_pruner_on_a_cnn_is_refused(capsys, tmp_path):
    code, err = run_main(["prune=kr_obs", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert_one_line(code, err, "prune=kr_obs prunes transformer text models")


def _kr_run(root, i, *, method, sparsity, n_m, seed, acc, aua, asr, averaged=True, finetune_epochs=0):
    run_dir = root / str(i)
    run_dir.mkdir(parents=True)
    prune = {"method": method} if method == "none" else {"method": method, "sparsity": sparsity, "n_m": n_m}
    config = {"seed": seed, "dataset": {"name": "sst2"}, "prune": prune, "finetune": {"epochs": finetune_epochs}}
    if averaged:  # kr_sst2's `average` node; `~average` runs have none
        config["average"] = {"n_score": 100, "ingredients": {"a": {"seed": 1}}}
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    metrics = {"clean_acc": acc, "text_attack/textfooler/aua": aua, "text_attack/textfooler/asr": asr, "seed": seed,
               "dataset": {"name": "sst2"}, "choices": {"prune": method}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_kr_table_layout_with_the_papers_numbers(tmp_path):
    from robprune.cli import main as cli_main

    rows = [("none", None, None, 0.90, 0.30, 0.66), ("kr_obs", 0.5, None, 0.88, 0.40, 0.55),
            ("sparsegpt", 0.5, None, 0.87, 0.20, 0.77), ("kr_obs", 0.5, "32:64", 0.86, 0.41, 0.52)]
    for i, (method, sparsity, n_m, acc, aua, asr) in enumerate(rows):
        for seed in (0, 1):
            _kr_run(tmp_path, 2 * i + seed, method=method, sparsity=sparsity, n_m=n_m, seed=seed,
                    acc=acc + 0.01 * seed, aua=aua, asr=asr)
    # the train stage's model alone (`~average`): its own row, next to the paper's fine-tuned dense model
    _kr_run(tmp_path, 99, method="none", sparsity=None, n_m=None, seed=0, acc=0.92, aua=0.1, asr=0.89, averaged=False)
    _kr_run(tmp_path, 98, method="magnitude", sparsity=0.5, n_m=None, seed=0, acc=0.85, aua=0.05, asr=0.94,
            finetune_epochs=1)  # the "+ fine-tune" baseline
    assert cli_main(["table", "+table=kr", str(tmp_path), "--quiet"]) == 0
    md = (tmp_path / "kr.md").read_text()
    lines = {ln.split("|")[1].strip(): ln for ln in md.splitlines()[2:]}
    assert list(lines) == ["dense", "dense (single fine-tune)", "this method 50%", "this method 50% 32:64",
                           "SparseGPT 50%", "magnitude 50% + fine-tune"]
    assert "92.00 / 10.00 / 89.00" in lines["dense (single fine-tune)"]
    assert "92.30 / 12.70 / 86.20" in lines["dense (single fine-tune)"]
    assert "88.50 ± 0.71 / 40.00 ± 0.00 / 55.00 ± 0.00" in lines["this method 50%"]
    assert "88.31 / 43.10 / 51.20" in lines["this method 50%"] and "91.40 / 30.40 / 66.75" in lines["dense"]
    assert "88.42 / 44.30 / 49.90" in lines["this method 50% 32:64"]


def test_average_key_covers_a_users_vectors_file(tmp_path):
    """The scoring attack's vectors file is in the average stage's key (path, size, mtime), as for eval."""
    from robprune.graph import ConfigView, config_slice
    from robprune.stages.average import STAGE

    vectors = tmp_path / "vectors.txt"
    vectors.write_text("good 0.1 0.2\nbad 0.2 0.1\n")
    cfg = compose(["+experiment=kr_sst2", "data.root=x", f"average.attack.vectors={vectors}"])
    view = ConfigView(config_slice(cfg, STAGE.reads), STAGE.name, STAGE.reads, ())
    before = STAGE.externals(view)
    assert before and str(vectors) in json.dumps(before)
    vectors.write_text("good 0.1 0.2\nbad 0.2 0.1\nfilm 0.3 0.3\n")
    assert STAGE.externals(view) != before


def test_refit_head_ablation_through_the_cli_and_the_dev_logits_script(tiny, tmp_path):
    """prune.refit_head=false re-runs only the prune stage and keeps the averaged model's pooler and
    classifier with the same pruned encoder; scripts/kr_logits_error.py --dense-head measures exactly that
    model from the refit run (same accuracy and logits error on the test split), and 0 for the dense."""
    import subprocess
    import sys
    from pathlib import Path

    import torch

    from robprune.checkpoint import load_checkpoint

    shrink = [o for o in SHRINK if not o.startswith("prune.")]  # prune=none has no calibration node
    dense = run(compose(["+experiment=kr_sst2", f"data.root={tiny['data']}", f"model.pretrained={tiny['bert']}",
                         *shrink, f"cache_dir={tmp_path / 'cache'}", "prune=none"]), tmp_path / "dense")
    run(_cfg(tiny, tmp_path), tmp_path / "refit")
    kept = run(_cfg(tiny, tmp_path, "prune.refit_head=false"), tmp_path / "kept")
    assert kept["stages"]["average"]["reused"] and not kept["stages"]["prune"]["reused"] and dense["sparsity"] == 0
    models = {name: load_checkpoint(tmp_path / name)[0].state_dict() for name in ("dense", "refit", "kept")}
    head = ("hf.bert.pooler.", "hf.classifier.")
    for key, value in models["kept"].items():
        assert torch.equal(value, models["dense" if key.startswith(head) else "refit"][key]), key
    assert any(not torch.equal(models["refit"][k], models["dense"][k]) for k in models["refit"] if k.startswith(head))
    script = Path(__file__).parents[1] / "scripts" / "kr_logits_error.py"
    out = tmp_path / "errors.json"
    runs = [str(tmp_path / name) for name in ("dense", "refit", "kept")]  # the dense run as a run too
    subprocess.run([sys.executable, str(script), "--dense", str(tmp_path / "dense"), *runs, "--dense-head",
                    "--threads", "1", "--out", str(out)], check=True, capture_output=True)
    listed = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in listed] == ["dense", "none", "kr_obs 0.5", "kr_obs 0.5"]
    assert "dense_head" not in listed[1] and all("dense_head" in r for r in listed[2:])  # unpruned: no head swap
    rows = {Path(r["run"]).name: r for r in listed}
    assert rows["dense"]["logits_error"] == 0 and rows["refit"]["logits_error"] > 0
    assert rows["refit"]["model"] == "kr_obs 0.5"
    for key in ("acc", "logits_error"):
        assert rows["refit"]["dense_head"][key] == pytest.approx(rows["kept"][key], rel=1e-6, abs=1e-9)
        assert rows["kept"]["dense_head"][key] == pytest.approx(rows["kept"][key], rel=1e-6, abs=1e-9)


def test_a_seed_sweep_with_train_seed_pinned_shares_the_average_and_redraws_the_calibration():
    """kr_sst2 pins train_seed, so seed=0 and seed=1 share the dense model, the ingredients and the greedy
    average (its scoring attack is seeded by train_seed); the calibration draw follows the run seed."""
    from robprune.graph import config_slice, stage_keys

    prints = {"meta": "m" * 16, "train": "t" * 16, "test": "e" * 16, "heldout": "h" * 16}
    by_name = {s.name: s for s in STAGES}

    def key(name, seed, train_seed=None):
        cfg = compose(["+experiment=kr_sst2", "data.root=x", f"seed={seed}",
                       *([] if train_seed is None else [f"train_seed={train_seed}"])])
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        stage = by_name[name]
        inputs = {"train": ("k", "s"), "ingredient_lr3e5_seed1": ("k", "s"), MODEL: ("k", "s")}
        return stage_keys(stage, config_slice(cfg, stage.reads, stage.ignores), inputs, prints, "cpu")[0]

    assert key("average", 0) == key("average", 1) and key("train", 0) == key("train", 1)
    assert key("average", 0, train_seed=1) != key("average", 0)
    assert key("calib", 0) != key("calib", 1)
