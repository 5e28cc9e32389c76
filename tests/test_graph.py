"""The stage graph: keys derived from declarations (a property test over every registered stage),
builders that cannot read what they did not declare, code/library/device/data in every key, and
finished run directories that a later run never touches."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from robprune.cli import main as cli_main
from robprune.compose import compose
from robprune.graph import (MODEL, ConfigView, DataView, Planned, Stage, UndeclaredRead, _covered, config_slice,
                            data_fingerprint, plan, stage_keys)
from robprune.stages import STAGES
from tests.helpers import REPO, SHRINK

# configs under which every registered stage runs (scores needs prune=mrs, quant needs quant=ptq)
FULL = ["prune=mrs", "quant=ptq"]
# stages that replace one of FULL's: prune_train runs instead of prune when the prune node trains (AdaSAP)
RUNS_UNDER = {"prune_train": ["prune=adasap", "quant=ptq"], "average": ["+experiment=kr_sst2"],
              "calib": ["+experiment=kr_sst2"], "ingredient": ["+experiment=kr_sst2"]}
PRINTS = {"meta": "m" * 16, "train": "t" * 16, "test": "e" * 16, "heldout": "h" * 16}


def resolved(overrides):
    """The composed config with every interpolation resolved, so each leaf is one independent value."""
    return OmegaConf.create(OmegaConf.to_container(compose(overrides), resolve=True))


def leaves(node, prefix=""):
    """Dotted paths of every leaf of a plain container (a list is one leaf)."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1]


def changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.5
    if isinstance(value, str):
        return value + "_x"
    if isinstance(value, list):
        return [*value, 1]
    if isinstance(value, dict):
        return {"added": 1}
    return 1  # None


def key_of(stage, cfg, device="cpu"):
    inputs = {role: ("k-" + role, "s-" + role) for role in ("train", "scores", MODEL)}
    return stage_keys(stage, config_slice(cfg, stage.reads, stage.ignores), inputs, PRINTS, device)[0]


def with_leaf(cfg, path, value):
    plain = OmegaConf.to_container(cfg)
    node = plain
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    return OmegaConf.create(plain)


def _concrete():
    """Every registered stage, a family expanded into its members under the config it runs with."""
    out = []
    for stage in STAGES:
        overrides = RUNS_UNDER.get(stage.name, FULL)
        out += [(m, overrides) for m in stage.instances(resolved(overrides))] if stage.instances else [(stage, overrides)]
    return out


@pytest.mark.parametrize("stage, overrides", _concrete(), ids=lambda s: getattr(s, "name", ""))
def test_key_changes_exactly_with_the_paths_a_stage_reads(stage, overrides):
    cfg = resolved(overrides)
    assert stage.when(cfg), f"{stage.name} should run under {overrides}"
    base = key_of(stage, cfg)
    paths = list(leaves(OmegaConf.to_container(cfg)))
    read = [p for p in paths if _covered(p, stage.reads) and not _covered(p, stage.ignores)]
    unread = [p for p in paths if p not in read]
    assert read and unread
    for path in read:
        value = OmegaConf.select(cfg, path)
        assert key_of(stage, with_leaf(cfg, path, changed(value))) != base, f"{stage.name}: {path} not in key"
    for path in unread:
        value = OmegaConf.select(cfg, path)
        assert key_of(stage, with_leaf(cfg, path, changed(value))) == base, f"{stage.name}: {path} changes the key"


def test_eval_key_leaves_out_how_many_ranks_share_it_but_not_its_blocks():
    """trainer.devices only says how many ranks share the eval stage's seeded blocks (the numbers are the
    same for any: tests/test_distributed.py), so it is out of the eval key, yet its builder reads it;
    eval.block_size is in (other blocks, other seeds). Training keys it (per-rank BatchNorm and draws)."""
    from robprune.pipeline import keys_of

    cfg = resolved(FULL)
    stage = next(s for s in STAGES if s.name == "eval")
    base = key_of(stage, cfg)
    assert key_of(stage, with_leaf(cfg, "trainer.devices", 2)) == base
    assert key_of(stage, with_leaf(cfg, "eval.block_size", 16)) != base
    train = next(s for s in STAGES if s.name == "train")
    assert key_of(train, with_leaf(cfg, "trainer.devices", 2)) != key_of(train, cfg)
    placed = Planned(stage, {MODEL: "finetune"})
    key, _, _, view, _ = keys_of(placed, with_leaf(cfg, "trainer.devices", 2), None, {MODEL: ("k", "s")}, dict(PRINTS),
                                 torch.device("cpu"))
    assert view.trainer.devices == 2 and key == keys_of(placed, cfg, None, {MODEL: ("k", "s")}, dict(PRINTS),
                                                         torch.device("cpu"))[0]
    with pytest.raises(UndeclaredRead):
        view.trainer.precision


def test_key_covers_inputs_data_and_device():
    cfg = resolved(FULL)
    stage = next(s for s in STAGES if s.name == "finetune")
    sliced = config_slice(cfg, stage.reads)
    base = stage_keys(stage, sliced, {MODEL: ("a", "s")}, PRINTS, "cpu")
    assert stage_keys(stage, sliced, {MODEL: ("b", "s")}, PRINTS, "cpu")[0] != base[0]   # upstream rebuilt
    assert stage_keys(stage, sliced, {MODEL: ("a", "s")}, {**PRINTS, "train": "x" * 16}, "cpu")[0] != base[0]
    assert stage_keys(stage, sliced, {MODEL: ("a", "s")}, {**PRINTS, "test": "x" * 16}, "cpu") == base
    cuda = stage_keys(stage, sliced, {MODEL: ("a", "s")}, PRINTS, "cuda")
    assert cuda[0] != base[0] and cuda[1] == base[1]    # other device: other artifact, same random draws


def test_a_builder_cannot_read_an_undeclared_path_or_data_part():
    cfg = compose([])
    reads = ("seed", "dataset.augment")
    view = ConfigView(config_slice(cfg, reads), "probe", reads, ())
    assert view.seed == 0 and view.dataset.augment.hflip is False
    for read in (lambda: view.train, lambda: view.dataset.eps, lambda: view.dataset.get("eps", 0.1),
                 lambda: "cache" in view, lambda: view["quiet"]):
        with pytest.raises(UndeclaredRead, match="does not declare"):
            read()
    eval_view = ConfigView(config_slice(cfg, ("eval",), ("eval.latency",)), "eval", ("eval",), ("eval.latency",))
    with pytest.raises(UndeclaredRead, match="excludes"):
        eval_view.eval.latency
    with pytest.raises(Exception):  # read-only: a builder cannot write into its config either
        view.dataset.augment.hflip = True
    bundle = type("Bundle", (), {"train_x": torch.zeros(2, 1, 4, 4, dtype=torch.uint8), "test_x": None,
                                 "num_classes": 10})()
    data = DataView(bundle, "eval", ("test",))
    assert data.num_classes == 10
    with pytest.raises(UndeclaredRead, match="train"):
        data.train_x


def test_a_stage_reading_an_undeclared_path_fails_when_walked(tmp_path):
    from robprune.data import build_data
    from robprune.pipeline import walk
    from robprune.store import StageCache

    cfg = compose([])
    sneaky = Stage("sneaky", reads=("seed",), build=lambda ctx: ctx.cfg.train.epochs, produces_model=False)
    cache = StageCache(tmp_path / "cache", enabled=True, scratch=tmp_path / "scratch")
    with pytest.raises(UndeclaredRead, match="train"):
        walk(plan([sneaky], cfg), cfg, build_data(cfg.dataset), cache, torch.device("cpu"))
    assert not [p for p in (tmp_path / "cache" / "sneaky").glob("*") if p.is_dir() and not p.name.endswith(".partial")]


def test_plan_follows_the_config_and_resolves_the_model_input():
    names = lambda overrides: {p.stage.name: p.inputs for p in plan(STAGES, compose(overrides))}  # noqa: E731
    assert list(names([])) == ["train", "prune", "finetune", "eval"]
    full = names(FULL)
    assert list(full) == ["train", "scores", "prune", "quant", "finetune", "eval"]
    assert full["prune"] == {MODEL: "train", "scores": "scores"}
    assert full["finetune"] == {MODEL: "quant"} and full["eval"] == {MODEL: "finetune"}
    assert names(["finetune=none", "prune=none"])["eval"] == {MODEL: "prune"}
    adasap = names(["prune=adasap"])
    assert list(adasap) == ["train", "prune_train", "finetune", "eval"] and adasap["finetune"] == {MODEL: "prune_train"}


def test_data_fingerprint_is_the_content_of_the_part():
    from robprune.data import build_data

    data = build_data(compose([]).dataset)
    train, test = data_fingerprint(data, "train"), data_fingerprint(data, "test")
    data.train_x[0, 0, 0, 0] ^= 1                        # one pixel of one training image
    assert data_fingerprint(data, "train") != train and data_fingerprint(data, "test") == test


KEYS_SCRIPT = """
import json, torch
from robprune.compose import compose
from robprune.data import build_data
from robprune.graph import config_slice, data_fingerprint, plan, stage_keys
from robprune.stages import STAGES
cfg = compose({overrides!r})
data = build_data(cfg.dataset)
prints = {{p: data_fingerprint(data, p) for p in ("meta", "train", "test")}}
keys, sem = {{}}, {{}}
for p in plan(STAGES, cfg):
    inputs = {{role: (keys[up], sem[up]) for role, up in p.inputs.items()}}
    keys[p.stage.name], sem[p.stage.name] = stage_keys(p.stage, config_slice(cfg, p.stage.reads, p.stage.ignores), inputs, prints, "cpu")
print(json.dumps(keys))
"""


def _keys_with_package(root: Path) -> dict:
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HOME": str(root)}
    out = subprocess.run([sys.executable, "-c", KEYS_SCRIPT.format(overrides=FULL)], cwd=root, env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_editing_a_source_file_changes_every_key(tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(REPO / "robprune", copy / "robprune", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "conf", copy / "conf")
    before = _keys_with_package(copy)
    with open(copy / "robprune" / "measure.py", "a") as fh:   # a file no stage's builder imports directly
        fh.write("\n# an edit\n")
    after = _keys_with_package(copy)
    assert set(before) == {s.name for s in STAGES} - set(RUNS_UNDER)
    assert all(before[name] != after[name] for name in before), (before, after)


def _tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_directory_is_never_touched_by_a_later_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    shrink = [o for o in SHRINK if not o.startswith(("eval", "finetune"))]
    args = ["run", *shrink, "train.epochs=1", "prune=none", "finetune=none", "eval=clean", "quiet=true",
            f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]
    assert cli_main(args) == 0
    assert (run_dir / "metrics.json").exists() and (run_dir / ".hydra" / "config.yaml").exists()
    assert capsys.readouterr().out.strip().splitlines() == [str(run_dir)]   # quiet: only the run path
    before = _tree_digest(run_dir)
    assert cli_main(args) == 2                                                 # the same run again
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "choose another directory" in err[0] and f"hydra.run.dir={run_dir}-2" in err[0]
    assert _tree_digest(run_dir) == before
    sweep = ["run", "-m", *args[1:-1], "seed=0,1", f"hydra.sweep.dir={tmp_path}"]   # a sweep over it as well
    assert cli_main(sweep) == 2 and "finished run" in capsys.readouterr().err
    assert _tree_digest(run_dir) == before


def test_metrics_list_the_graph_and_provenance(tmp_path):
    from robprune.pipeline import run

    cfg = compose([*SHRINK, "train.epochs=1", f"cache_dir={tmp_path / 'cache'}"])
    m = run(cfg, tmp_path / "a")
    assert list(m["stages"]) == ["train", "prune", "finetune", "eval"]
    assert m["stages"]["prune"]["inputs"] == {MODEL: m["stages"]["train"]["key"]}
    assert m["stages"]["eval"]["inputs"] == {MODEL: m["stages"]["finetune"]["key"]}
    assert all(s["device"] == "cpu" for s in m["stages"].values())
    # the eval stage's work folder is where evaluation keeps per-attack results for a resume after a kill
    assert (Path(m["stages"]["eval"]["path"]) / "flags" / "pgd20" / "block0.safetensors").is_file()
    prov = m["provenance"]
    assert prov["device"] == "cpu" and prov["libraries"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert len(prov["code"]) == 16 and prov["python"]
    other = run(compose([*SHRINK, "train.epochs=1", f"cache_dir={tmp_path / 'cache'}", "dataset.test_split='test[:100]'"]),
                tmp_path / "b")
    assert other["stages"]["train"]["reused"] and other["stages"]["finetune"]["reused"]   # test split: eval only
    assert not other["stages"]["eval"]["reused"]


def test_a_stage_whose_inputs_the_config_does_not_provide_is_a_declaration_error():
    cfg = compose([])
    orphan = Stage("orphan", reads=("seed",), inputs=("scores",), build=lambda ctx: None)
    with pytest.raises(RuntimeError, match="needs stage scores"):
        plan([orphan], cfg)
    modelless = Stage("modelless", reads=("seed",), inputs=(MODEL,), build=lambda ctx: None)
    with pytest.raises(RuntimeError, match="needs a model"):
        plan([modelless], cfg)
    optional = Stage("optional", reads=("seed",), inputs=("scores?",), build=lambda ctx: None)
    assert plan([optional], cfg)[0].inputs == {}


def test_a_family_expands_per_entry_and_adding_an_entry_keeps_the_other_keys():
    """Stage.instances: one stage per entry of a config node (weight-averaging ingredients); a consumer
    declares ``member*``; adding an entry changes no other member's key."""
    def members(cfg):
        return [Stage(f"member_{k}", reads=("seed", f"study.members.{k}"), build=lambda ctx: None)
                for k in cfg.study.members]

    family = Stage("member", reads=("seed",), build=lambda ctx: None, instances=members)
    consumer = Stage("mix", reads=("seed",), inputs=("member*",), build=lambda ctx: None, produces_model=False)

    def keys(entries):
        cfg = compose([])
        OmegaConf.set_struct(cfg, False)
        cfg = OmegaConf.merge(cfg, {"study": {"members": entries}})
        placed, out = plan([family, consumer], cfg), {}
        for p in placed:
            sliced = config_slice(cfg, p.stage.reads)
            inputs = {role: (out[up], out[up]) for role, up in p.inputs.items()}
            out[p.stage.name] = stage_keys(p.stage, sliced, inputs, PRINTS, "cpu")[0]
        return placed, out

    placed, two = keys({"a": {"lr": 1}, "b": {"lr": 2}})
    assert [p.stage.name for p in placed] == ["member_a", "member_b", "mix"]
    assert placed[-1].inputs == {"member_a": "member_a", "member_b": "member_b"}
    _, three = keys({"a": {"lr": 1}, "b": {"lr": 2}, "c": {"lr": 3}})
    assert three["member_a"] == two["member_a"] and three["member_b"] == two["member_b"]
    assert three["mix"] != two["mix"]
    _, changed = keys({"a": {"lr": 1}, "b": {"lr": 5}})
    assert changed["member_a"] == two["member_a"] and changed["member_b"] != two["member_b"]
    with pytest.raises(RuntimeError, match="none of which"):
        plan([consumer], compose([]))
