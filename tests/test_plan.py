"""robprune plan / robprune run --dry-run: the checks of a run and its stage keys, nothing built or written."""
from __future__ import annotations

import json

import pytest

from robprune.cli import main
from tests.test_validation import assert_one_line

TINY = ["logger=none", "threads=1", "model.width=8", "model.hidden=16", "train.epochs=1", "finetune.epochs=1",
        "eval=pgd", "eval.attacks.pgd20.steps=1", "eval.n_examples.pgd20=16", "eval.latency.repeats=1",
        "eval.latency.warmup=0", "eval.latency.batch_size=8"]


def planned(args: list[str], capsys) -> dict[str, tuple[str, str]]:
    capsys.readouterr()
    assert main([*args, "quiet=true"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    return {stage: (key, state) for stage, key, state in rows}


def test_the_plan_names_the_keys_a_run_uses_and_what_it_would_reuse(tmp_path, capsys):
    cache = f"cache_dir={tmp_path / 'cache'}"
    before = planned(["plan", *TINY, cache], capsys)
    assert list(before) == ["train", "prune", "finetune", "eval"] and {s for _, s in before.values()} == {"build"}
    assert not (tmp_path / "cache").exists() or not any(p.name != "datasets" for p in (tmp_path / "cache").iterdir())
    assert main(["run", *TINY, cache, f"hydra.run.dir={tmp_path / 'run'}", "quiet=true"]) == 0
    stages = json.loads((tmp_path / "run" / "metrics.json").read_text())["stages"]
    assert {name: stages[name]["key"] for name in stages} == {name: key for name, (key, _) in before.items()}
    again = planned(["run", "--dry-run", *TINY, cache], capsys)  # the same as robprune plan
    assert {s for _, s in again.values()} == {"cached"} and {k for k, _ in again.values()} == {k for k, _ in before.values()}
    other = planned(["plan", *[o for o in TINY if not o.startswith("finetune.epochs")], "finetune.epochs=2", cache], capsys)
    assert [other[s][1] for s in ("train", "prune", "finetune", "eval")] == ["cached", "cached", "build", "build"]


def test_a_planned_job_gets_the_checks_of_a_run(tmp_path, capsys):
    capsys.readouterr()
    code = main(["plan", *TINY, "model.init=nowhere.pt", f"cache_dir={tmp_path / 'cache'}"])
    assert "model.init" in assert_one_line(code, capsys.readouterr().err, "model.init")
    code = main(["run", "--dry-run", *TINY, "prune.channel_ratio=1.5", f"cache_dir={tmp_path / 'cache'}"])
    assert_one_line(code, capsys.readouterr().err, "prune.channel_ratio")
    assert not (tmp_path / "cache").exists() or not any(p.name != "datasets" for p in (tmp_path / "cache").iterdir())


@pytest.mark.parametrize("flag", ["-m", "--multirun"])
def test_a_plan_is_one_job(flag, capsys):
    code = main(["plan", flag, "seed=0,1"])
    assert "drop -m" in assert_one_line(code, capsys.readouterr().err, "robprune plan")


def test_the_table_says_what_each_stage_would_do(tmp_path, capsys):
    capsys.readouterr()
    assert main(["plan", *TINY, f"cache_dir={tmp_path / 'cache'}", "quiet=false"]) == 0
    out = capsys.readouterr().out
    assert "model: train" in out and "0 of 4 stages cached, 4 to build" in out


def test_the_plan_sees_a_damaged_entry_and_a_partial_build(tmp_path, capsys):
    """StageCache.state: an entry that fails verification is rebuilt, a left-over .partial folder resumed."""
    cache = tmp_path / "cache"
    assert main(["run", *TINY, f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}", "quiet=true"]) == 0
    keys = {stage: key for stage, (key, _) in planned(["plan", *TINY, f"cache_dir={cache}"], capsys).items()}
    (cache / "eval" / keys["eval"] / "metrics.json").write_text("{}")  # edited after it was built
    finetune = cache / "finetune" / keys["finetune"]
    finetune.rename(finetune.with_name(f"{keys['finetune']}.partial"))  # as a build killed half-way leaves it
    states = {stage: state for stage, (_, state) in planned(["plan", *TINY, f"cache_dir={cache}"], capsys).items()}
    assert states == {"train": "cached", "prune": "cached", "finetune": "resume", "eval": "damaged"}
