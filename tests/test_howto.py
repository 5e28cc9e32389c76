"""The how-to pages' worked examples, built from the pages themselves (docs/how-to/*.md).

Every fenced block titled with a path (```` ```python title="robprune/attacks/fgsm_rs.py" ````) is written
into a copy of the repository (robprune/, conf/, tests/, pyproject.toml; no install: the copy runs with
PYTHONPATH pointing at it); a ``diff`` block titled with a path is applied to that file. Then, in the
copy, each page's own commands run: its ``pytest`` command (the contract tests that pick the new thing up
through the registries, no test edited) and its ``robprune run`` command with shrink overrides, and the
results must record the new thing. All examples share one copy and one stage cache per session (xdist
workers included), so the digits runs reuse one dense model."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_roots import shared_folder

REPO = Path(__file__).resolve().parents[1]
HOWTO = REPO / "docs" / "how-to"
FENCE = re.compile(r'^```(\w+) title="([^"]+)"\n(.*?)^```\s*$', re.S | re.M)
# the digits default shrunk to seconds (the page's command keeps its own keys unless listed here)
SHRINK = {"train.epochs": "1", "finetune.epochs": "1", "model.width": "8", "model.hidden": "32", "eval": "pgd",
          "eval.attacks.pgd20.steps": "2", "eval.n_examples.pgd20": "60", "eval.latency.repeats": "1",
          "eval.latency.warmup": "0", "eval.latency.batch_size": "8", "logger": "none", "quiet": "true"}


def blocks(page: str) -> list[tuple[str, str, str]]:
    """(language, title, body) of every titled fenced block of docs/how-to/<page>.md."""
    return FENCE.findall((HOWTO / f"{page}.md").read_text())


def commands(page: str, program: str) -> list[list[str]]:
    """The words of each line of the page's ``run`` blocks that starts with ``program``."""
    return [shlex.split(line) for _, title, body in blocks(page) if title == "run"
            for line in body.splitlines() if line.startswith(program)]


def build_copy(folder: Path) -> None:
    """The repository's code, conf and tests in ``folder``, with every example of every page added."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("robprune", "conf", "tests"):
        shutil.copytree(REPO / name, folder / name, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", folder)
    for page in sorted(p.stem for p in HOWTO.glob("*.md")):
        for language, title, body in blocks(page):
            if title in ("run", "script"):
                continue
            if language == "diff":
                out = subprocess.run(["git", "apply", "--verbose", "-"], input=body, cwd=folder, text=True,
                                     capture_output=True)
                assert out.returncode == 0, f"{page}.md: the diff of {title} does not apply: {out.stderr}"
                continue
            path = folder / title
            assert not path.exists(), f"{page}.md: {title} would overwrite a file of the repository"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, worker_id) -> Path:
    return shared_folder(tmp_path_factory, worker_id, "howto-repo", build_copy)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, worker_id) -> Path:
    base = tmp_path_factory.getbasetemp()
    return (base.parent if worker_id != "master" else base) / "howto-cache"


def _env(repo: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(repo), "ROBPRUNE_QUIET": "1"}


def run_pytest(repo: Path, page: str) -> str:
    """The page's pytest command in the copy, in one process; its report (every test's outcome)."""
    (words,) = [w for w in commands(page, "python -m pytest")]
    args = [w for i, w in enumerate(words[3:]) if w != "-n" and (i == 0 or words[3:][i - 1] != "-n")]
    out = subprocess.run([sys.executable, "-m", "pytest", *args, "-p", "no:xdist", "-p", "no:cacheprovider",
                          "-o", "addopts=", "-rA", "-q"], cwd=repo, env=_env(repo), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    return out.stdout


def passed(report: str, *ids: str) -> None:
    for test_id in ids:
        assert re.search(rf"^PASSED \S*{re.escape(test_id)}$", report, re.M), f"{test_id} did not run and pass"


def run_command(repo: Path, words: list[str], run_dir: Path, cache: Path, shrink: dict) -> dict:
    """``robprune run <page's overrides>`` in the copy: the page's keys, those of ``shrink`` replaced,
    the other shrink keys added first; the run's metrics.json."""
    assert words[:2] == ["robprune", "run"], words
    given = words[2:]
    key = lambda word: word.split("=", 1)[0].lstrip("+")  # noqa: E731  (+key=value adds a key)
    overrides = {**shrink, "cache_dir": str(cache), "hydra.run.dir": str(run_dir)}
    args = [f"{k}={v}" for k, v in overrides.items() if k not in {key(w) for w in given}]
    args += [w.split("=", 1)[0] + "=" + overrides[key(w)] if key(w) in overrides else w for w in given]
    out = subprocess.run([sys.executable, "-m", "robprune.cli", "run", *args], cwd=run_dir.parent, env=_env(repo),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, " ".join(args) + "\n" + out.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


def saved(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / name).read_text())


# ---------------------------------------------------------------- add-attack.md

def test_attack_is_contract_tested_and_evaluated(repo, cache, tmp_path):
    passed(run_pytest(repo, "add-attack"), "test_a_conf_file_builds_what_is_registered_under_its_stem[attack-fgsm_rs]",
           "test_attack_contract[fgsm_rs-eval-mode]", "test_attack_contract[fgsm_rs-train-mode]",
           "test_registered_names_are_the_conf_stems[attack]")
    (words,) = commands("add-attack", "robprune run")
    m = run_command(repo, words, tmp_path / "run", cache, {**SHRINK, "eval.n_examples.fgsm_rs": "60"})
    assert m["n_eval/fgsm_rs"] == 60 and 0 <= m["robust_acc/fgsm_rs"] <= m["clean_acc/fgsm_rs"]
    assert m["robust_acc/worst"] <= m["robust_acc/fgsm_rs"]
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "robprune.attacks.fgsm_rs.fgsm_rs" in config and "step: 1.25" in config  # the declared default


# ---------------------------------------------------------------- add-pruner.md

def test_pruners_are_picked_up_by_the_contract_tests(repo):
    report = run_pytest(repo, "add-pruner")
    for name in ("linf_filter", "l1_keep", "lm_random"):
        passed(report, f"test_yaml_keys_have_comments[{name}]", f"test_a_conf_file_builds_what_is_registered_under_its_stem[prune-{name}]")
    passed(report, "test_registered_names_are_the_conf_stems[prune]")
    assert re.search(r"^PASSED \S*test_options_checked_without_a_model", report, re.M)  # every image pruner's config


def _pruner_command(name: str) -> list[str]:
    (words,) = [w for w in commands("add-pruner", "robprune run") if f"prune={name}" in w]
    return words


def test_criterion_pruner_runs(repo, cache, tmp_path):
    m = run_command(repo, _pruner_command("linf_filter"), tmp_path / "run", cache, SHRINK)
    info = saved(tmp_path / "run", "model.json")["prune"]
    assert m["choices"]["prune"] == "linf_filter" and info["method"] == "linf_filter" and info["criterion"] == "linf"
    assert info["channel_ratio_achieved"] == pytest.approx(0.5, abs=0.1) and m["params"] < m["params_dense"]


def test_pruner_with_a_new_option_runs(repo, cache, tmp_path):
    words = _pruner_command("l1_keep")
    assert "prune.keep_min=0.3" in words
    m = run_command(repo, words, tmp_path / "run", cache, SHRINK)
    info = saved(tmp_path / "run", "model.json")["prune"]
    assert m["choices"]["prune"] == "l1_keep" and info["method"] == "l1_keep" and info["keep_min"] == 0.3
    assert info["sparsity_target"] == 0.5 and 0.3 < m["sparsity"] < 0.6
    groups = [row for row in info["layers"] if row.get("group") is not None]
    assert groups and all(row["channels_after"] >= 0.3 * row["channels_before"] for row in groups)


@pytest.fixture(scope="module")
def text_files(tmp_path_factory, worker_id) -> Path:
    def make(folder: Path) -> None:
        from tests.text_fixtures import tiny_bert, write_sst2

        data = write_sst2(folder / "sst2", n_train=200, n_dev=40)
        tiny_bert(folder / "bert", data / "train.tsv")

    return shared_folder(tmp_path_factory, worker_id, "howto-text", make)


def test_language_model_pruner_runs(repo, cache, tmp_path, text_files):
    shrink = {"data.root": str(text_files / "sst2"), "model.pretrained": str(text_files / "bert"),
              "dataset.train_split": "train", "train.epochs": "1", "eval": "clean", "eval.latency.repeats": "1",
              "eval.latency.warmup": "0", "eval.latency.batch_size": "8", "prune.calibration.n": "32",
              "prune.calibration.heldout": "16", "logger": "none", "quiet": "true"}
    m = run_command(repo, _pruner_command("lm_random"), tmp_path / "run", cache, shrink)
    info = saved(tmp_path / "run", "model.json")["prune"]
    assert m["choices"]["prune"] == "lm_random" and info["method"] == "lm_random"
    assert m["sparsity"] == pytest.approx(0.5, abs=0.01) and m["checks"]["sparsity_matches_pruner"]
    # removing half of every weight at random may leave the one-epoch tiny BERT answering one class: that check
    # (prediction_collapse) is the only one allowed to fail
    assert {f.split(":")[0] for f in m["checks"]["failed"]} <= {"prediction_collapse"}
    assert all(row["sparsity"] == pytest.approx(0.5, abs=0.01) for row in info["layers"] if row["pruned"])


# ---------------------------------------------------------------- add-dataset.md

def test_dataset_is_registered_and_read(repo, cache, tmp_path):
    passed(run_pytest(repo, "add-dataset"), "test_registered_names_are_the_conf_stems[dataset]",
           "test_every_dataset_yaml_matches_the_registry")
    ((_, _, script),) = [b for b in blocks("add-dataset") if b[1] == "script"]
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=120)
    (words,) = commands("add-dataset", "robprune run")
    m = run_command(repo, words, tmp_path / "run", cache, {**SHRINK, "data.root": str(tmp_path / "my_data")})
    assert m["choices"]["dataset"] == "npz" and m["dataset"] == {"name": "npz", "n_train": 1400, "n_test": 397}
    assert m["clean_acc"] > 0


# ---------------------------------------------------------------- add-model.md

def test_model_is_registered_and_trained(repo, cache, tmp_path):
    passed(run_pytest(repo, "add-model"), "test_a_conf_file_builds_what_is_registered_under_its_stem[model-mlp]",
           "test_registered_names_are_the_conf_stems[model]")
    (words,) = commands("add-model", "robprune run")
    shrink = {k: v for k, v in SHRINK.items() if k != "model.width"}  # the MLP has no width option
    m = run_command(repo, words, tmp_path / "run", cache, shrink)
    arch = saved(tmp_path / "run", "model.json")["arch"]
    assert m["choices"]["model"] == "mlp" and m["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert m["params_dense"] == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10, arch  # 8x8 digits, depth 2, hidden 32


# ---------------------------------------------------------------- add-stage.md

def test_stage_is_keyed_run_and_reused(repo, cache, tmp_path):
    passed(run_pytest(repo, "add-stage"), "test_key_changes_exactly_with_the_paths_a_stage_reads[weight_stats-]")
    (words,) = commands("add-stage", "robprune run")
    first = run_command(repo, words, tmp_path / "a", cache, SHRINK)
    rows = saved(tmp_path / "a", "weight_stats.json")
    assert "weight_stats" in first["stages"] and [r["name"] for r in rows][:1] == ["features.0"]
    assert all(0 <= r["zeros"] <= 1 and r["l1"] > 0 for r in rows)
    second = run_command(repo, words, tmp_path / "b", cache, SHRINK)
    assert second["stages"]["weight_stats"]["reused"] and saved(tmp_path / "b", "weight_stats.json") == rows
