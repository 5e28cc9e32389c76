"""model.init / model.head (robprune.start, docs/how-to/start-from-a-model.md): every kind of starting
point loads with the logits of the model it came from, prunes and evaluates through the command, is keyed
by content, and every bad input is one line before any work."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from robprune.cli import main
from robprune.compose import compose
from robprune.data import build_data
from robprune.measure import dense_model
from robprune.stages.common import architecture
from robprune.start import file_digest, load_start
from tests.test_validation import assert_one_line, no_cache_entry
from tests.tiny_roots import ZOO_MODEL, image_root, zoo_root

TINY = ["logger=none", "threads=1", "model.width=8", "model.hidden=16", "eval=pgd", "eval.attacks.pgd20.steps=2",
        "eval.n_examples.pgd20=32", "eval.latency.repeats=1", "eval.latency.warmup=0", "eval.latency.batch_size=8"]
PRUNE = ["prune=l1_filter", "finetune.epochs=1"]


def run(args: list[str], tmp: Path, name: str, capsys=None) -> tuple[int, Path]:
    out = tmp / name
    code = main(["run", *args, f"hydra.run.dir={out}", f"cache_dir={tmp / 'cache'}"])
    return code, out


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A robprune run of a tiny cnn8 on the embedded digits (1 epoch, no pruning): the run directory."""
    tmp = tmp_path_factory.mktemp("dense")
    code, out = run([*TINY, "train.epochs=1", "prune=none", "finetune.epochs=0"], tmp, "run")
    assert code == 0
    return out


def model_of(overrides: list[str]):
    """The dense model the train stage builds for ``overrides`` (before training), filled from model.init."""
    cfg = compose(overrides)
    data = build_data(cfg.dataset, cache_dir=cfg.data.cache_dir)
    model = dense_model(architecture(cfg.model, data))
    record = load_start(model, cfg.model, num_classes=data.arch_record()["num_classes"])
    return model.eval(), record, data


def reference(run_dir: Path):
    from robprune.checkpoint import load_checkpoint

    return load_checkpoint(run_dir)[0]


def sources(dense: Path, tmp: Path) -> dict[str, Path]:
    """The run itself and the same weights as a safetensors file and a DataParallel training checkpoint."""
    state = reference(dense).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "weights.safetensors"))
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}, "model_state_dict": {f"module.{k}": v for k, v in state.items()}},
               tmp / "dataparallel.pt")
    return {"robprune run": dense, "safetensors": tmp / "weights.safetensors", "DataParallel .pt": tmp / "dataparallel.pt"}


@pytest.mark.parametrize("kind", ["robprune run", "safetensors", "DataParallel .pt"])
def test_a_source_loads_with_the_logits_of_its_model(kind, dense, tmp_path):
    source = sources(dense, tmp_path)[kind]
    model, record, data = model_of([*TINY, f"model.init={source}"])
    x = data.test_x[:64].float() / (255 if data.test_x.dtype == torch.uint8 else 1)
    with torch.no_grad():
        diff = (model(x) - reference(dense)(x)).abs().max().item()
    assert diff == 0.0, (kind, diff)
    assert record["kind"] == ("robprune" if kind == "robprune run" else "file") and record["head"] == "keep"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zoo")
    return {"zoo": zoo_root(tmp / "models"), "data": image_root(tmp / "data")}


def zoo_args(zoo, *more) -> list[str]:
    _, threat, name = ZOO_MODEL
    return ["logger=none", "threads=1", "dataset=cifar10", f"data.root={zoo['data']}", "model=robustbench",
            f"model.name={name}", f"model.threat={threat}", f"model.dir={zoo['zoo']}", "eval=pgd",
            "eval.attacks.pgd20.steps=1", "eval.n_examples.pgd20=8", "dataset.train_split='train[:32]'",
            "dataset.test_split='test[:16]'", "data.batch_size=16", "eval.latency.repeats=1", "eval.latency.warmup=0",
            "eval.latency.batch_size=4", *more]


def test_a_robustbench_layout_checkpoint_loads_with_the_logits_of_its_model(zoo):
    """RobustBench's file layout (state_dict + module. prefix) for a real robustbench architecture."""
    from robprune.models.robustbench import entries

    dataset, threat, name = ZOO_MODEL
    model, record, _ = model_of(zoo_args(zoo))
    original = entries(dataset, threat)[name]["model"]()
    saved = torch.load(Path(zoo["zoo"]) / dataset / threat / f"{name}.pt", weights_only=True)["state_dict"]
    original.load_state_dict({k.removeprefix("module."): v for k, v in saved.items()})
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - original.eval()(x)).abs().max().item() == 0.0
    assert record["kind"] == "pretrained" and record["published"]["clean_acc"] == pytest.approx(0.8334)


def test_a_zoo_model_prunes_and_evaluates_through_the_command(zoo, tmp_path):
    code, out = run(zoo_args(zoo, "train.epochs=0", "prune=l1_filter", "prune.channel_ratio=0.5", "finetune.epochs=0"),
                    tmp_path, "run")
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sparsity"] > 0.3 and metrics["start"]["published"]["robust_acc"] == pytest.approx(0.4321)
    assert metrics["start"]["sha256"] == file_digest(Path(zoo["zoo"]) / "cifar10" / "Linf" / "Wong2020Fast.pt")
    evals = tmp_path / "eval"
    assert main(["eval", *zoo_args(zoo, f"eval_out={evals}")]) == 0  # no path: the zoo model as published
    evaluated = json.loads((evals / "metrics.json").read_text())
    assert evaluated["start"]["published"]["clean_acc"] == pytest.approx(0.8334) and 0 <= evaluated["clean_acc"] <= 1


@pytest.mark.parametrize("kind", ["robprune run", "safetensors", "DataParallel .pt"])
def test_prune_and_evaluate_from_a_source_through_the_command(kind, dense, tmp_path):
    source = sources(dense, tmp_path)[kind]
    code, out = run([*TINY, f"model.init={source}", "train.epochs=0", *PRUNE], tmp_path, "run")
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sparsity"] > 0.2 and metrics["start"]["kind"] in ("robprune", "file")
    # train.epochs=0: the train stage's checkpoint is the source's weights, unchanged
    train = tmp_path / "cache" / "train" / metrics["stages"]["train"]["key"]
    weights = dense / "model.safetensors" if kind == "robprune run" else source
    assert metrics["start"]["sha256"] == file_digest(weights)
    assert all(torch.equal(v, reference(dense).state_dict()[k]) for k, v in reference(train).state_dict().items())
    evals = tmp_path / "eval"
    assert main(["eval", str(source), *TINY, f"eval_out={evals}"]) == 0  # any source, evaluated as it is
    dense_metrics = json.loads((dense / "metrics.json").read_text())
    assert json.loads((evals / "metrics.json").read_text())["clean_acc"] == dense_metrics["clean_acc"]


def test_the_starting_weights_are_keyed_by_content_not_path(dense, tmp_path):
    source = sources(dense, tmp_path)["safetensors"]
    args = [*TINY, "train.epochs=1", "prune=none", "finetune.epochs=0"]
    assert run([*args, f"model.init={source}"], tmp_path, "a")[0] == 0
    moved = tmp_path / "elsewhere" / "renamed.safetensors"
    moved.parent.mkdir()
    shutil.copy(source, moved)
    code, out = run([*args, f"model.init={moved}"], tmp_path, "b")
    b = json.loads((out / "metrics.json").read_text())
    assert code == 0 and b["stages"]["train"]["reused"]  # same bytes, another path: the same stage
    state = reference(dense).state_dict()
    state["classifier.3.bias"] = state["classifier.3.bias"] + 1  # other bytes at the same path: rebuilt
    save_file({k: v.contiguous() for k, v in state.items()}, str(moved))
    code, out = run([*args, f"model.init={moved}"], tmp_path, "c")
    c = json.loads((out / "metrics.json").read_text())
    assert code == 0 and not c["stages"]["train"]["reused"] and c["stages"]["train"]["key"] != b["stages"]["train"]["key"]


def test_training_continues_from_the_start_and_head_new_replaces_the_classifier(dense, tmp_path):
    from robprune.models import build_model

    cfg = compose(TINY)
    three = build_model(cfg.model, in_channels=1, image_size=8, num_classes=3, mean=[0.5], std=[0.5])
    body = {k: v for k, v in reference(dense).state_dict().items()}
    body.update({k: v for k, v in three.state_dict().items() if k.startswith("classifier.3.")})  # a 3-class head
    save_file({k: v.contiguous() for k, v in body.items()}, str(tmp_path / "three.safetensors"))
    model, record, _ = model_of([*TINY, f"model.init={tmp_path / 'three.safetensors'}", "model.head=new"])
    assert record["head"] == "new" and torch.equal(model.state_dict()["features.0.weight"], body["features.0.weight"])
    code, out = run([*TINY, f"model.init={tmp_path / 'three.safetensors'}", "model.head=new", "train.epochs=1",
                     "prune=none", "finetune.epochs=0"], tmp_path, "run")
    assert code == 0
    trained = reference(out).state_dict()
    assert trained["classifier.3.weight"].shape[0] == 10
    assert not torch.equal(trained["features.0.weight"], body["features.0.weight"])  # trained on from the start


def bad_inputs(dense: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    from robprune.models import build_model

    cfg = compose(TINY)
    torch.save(build_model(cfg.model, in_channels=1, image_size=8, num_classes=10, mean=[0.5], std=[0.5]), tmp / "whole.pt")
    (tmp / "notes.pt").write_text("not a checkpoint\n")
    resnet = build_model(compose(["model=resnet18", "model.width=4"]).model, in_channels=1, image_size=8, num_classes=10,
                         mean=[0.5], std=[0.5])
    torch.save(resnet.state_dict(), tmp / "resnet.pt")
    state = reference(dense).state_dict()
    state["classifier.3.weight"], state["classifier.3.bias"] = state["classifier.3.weight"][:3], state["classifier.3.bias"][:3]
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "three.safetensors"))
    pruned = tmp / "pruned"
    assert run([*TINY, "train.epochs=0", f"model.init={dense}", *PRUNE], tmp, "pruned")[0] == 0
    return {
        "a pickled model": ([f"model.init={tmp / 'whole.pt'}"], "weights_only"),
        "not a checkpoint": ([f"model.init={tmp / 'notes.pt'}"], "not a PyTorch checkpoint"),
        "missing and unexpected keys": ([f"model.init={tmp / 'resnet.pt'}"], "missing, first"),
        "class count with head=keep": ([f"model.init={tmp / 'three.safetensors'}"], "model.head=new"),
        "a pruned run": ([f"model.init={pruned}"], "pruned model"),
        "no such file": ([f"model.init={tmp / 'nowhere.pt'}"], "no such file"),
        "no published weights": (["model.init=pretrained"], "publishes no weights"),
    }


BAD = ["a pickled model", "not a checkpoint", "missing and unexpected keys", "class count with head=keep", "a pruned run",
       "no such file", "no published weights"]


@pytest.fixture(scope="module")
def bad(dense, tmp_path_factory):
    return bad_inputs(dense, tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", BAD)
def test_a_bad_start_is_one_line_before_any_work(case, bad, tmp_path, capsys):
    args, named = bad[case]
    capsys.readouterr()
    code = main(["run", *TINY, *args, f"hydra.run.dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    line = assert_one_line(code, err, "model.init")
    assert named in line, line
    assert no_cache_entry(tmp_path / "cache") and not (tmp_path / "run" / "metrics.json").exists()


ZOO_BAD = {
    "a zoo name that does not exist": (["model.name=Wong2020Fsat"], "closest: Wong2020Fast", "model.name"),
    "a threat model the dataset has not": (["model.threat=L2", "dataset=cifar100"], "no L2 models for cifar100", "model.threat"),
    "weights not here, offline": (["model.name=Carmon2019Unlabeled"], "offline", "model.init"),
    "a dataset outside the zoo": (["dataset=svhn"], "cifar10, cifar100, imagenet", "model.dataset"),
}


@pytest.mark.parametrize("case", list(ZOO_BAD))
def test_a_bad_zoo_model_is_one_line_before_any_work(case, zoo, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    more, named, key = ZOO_BAD[case]
    capsys.readouterr()
    code = main(["run", *zoo_args(zoo, *more), f"hydra.run.dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    line = assert_one_line(code, err, key)
    assert named in line, line
    assert no_cache_entry(tmp_path / "cache") and not (tmp_path / "run" / "metrics.json").exists()


def test_a_replaced_option_names_its_replacement(tmp_path, capsys):
    code = main(["run", "model=timm", "model.pretrained=true", f"hydra.run.dir={tmp_path / 'run'}"])
    line = assert_one_line(code, capsys.readouterr().err, "model.pretrained")
    assert "model.init=pretrained" in line and not (tmp_path / "run").exists()


def test_the_summary_shows_a_zoo_model_published_numbers_beside_ours():
    from robprune.summary import summary_rows

    published = {"zoo": "cifar10/Linf/Wong2020Fast", "clean_acc": 0.8334, "robust_acc": 0.4321, "robust_metric": "autoattack"}
    rows = dict(summary_rows({"clean_acc": 0.5, "start": {"published": published}}))
    assert rows["published (cifar10/Linf/Wong2020Fast): clean / autoattack"] == "83.34% / 43.21%"
    assert not any(k.startswith("published") for k in dict(summary_rows({"clean_acc": 0.5, "start": None})))


def unit_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Files that are no usable state dict, for the loader itself (no run needed)."""
    torch.save({"epoch": 3, "notes": "best"}, tmp / "no_state.pt")
    torch.save([torch.zeros(2)], tmp / "a_list.pt")
    (tmp / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (tmp / "empty_folder").mkdir()
    return {"a dict without a state dict": (tmp / "no_state.pt", "without a state dict"),
            "a list of tensors": (tmp / "a_list.pt", "not a state dict (list)"),
            "an unreadable safetensors file": (tmp / "junk.safetensors", "not a readable safetensors file"),
            "a folder without model.safetensors": (tmp / "empty_folder", "holds no model.safetensors")}


@pytest.mark.parametrize("case", ["a dict without a state dict", "a list of tensors", "an unreadable safetensors file",
                                  "a folder without model.safetensors"])
def test_a_file_without_a_usable_state_dict_is_named_with_the_fix(case, tmp_path):
    from robprune.errors import ConfigError

    path, named = unit_cases(tmp_path)[case]
    cfg = compose([*TINY, f"model.init={path}"])
    model = dense_model({"model": dict(cfg.model), "in_channels": 1, "image_size": 8, "num_classes": 10,
                         "mean": [0.5], "std": [0.5]})
    with pytest.raises(ConfigError, match="model.init=") as err:
        load_start(model, cfg.model)
    assert named in str(err.value) and "; pass" in str(err.value)


def test_zoo_weights_the_loader_cannot_read_are_refused_by_name(zoo):
    from robprune.errors import ConfigError
    from robprune.models.robustbench import entries, zoo_weights

    assert isinstance(entries("cifar10", "Linf")["Chen2020Adversarial"]["gdrive_id"], list)  # an ensemble: 3 files
    with pytest.raises(ConfigError, match="model.name=Chen2020Adversarial: RobustBench publishes these weights"):
        zoo_weights({"name": "Chen2020Adversarial", "threat": "Linf", "dataset": "cifar10", "dir": str(zoo["zoo"])})


def test_a_zoo_model_for_another_dataset_shape_is_one_line(zoo, tmp_path, capsys):
    code = main(["run", *zoo_args(zoo, "model.dataset=cifar100", "model.name=Gowal2020Uncovering"),
                 f"hydra.run.dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}"])
    line = assert_one_line(code, capsys.readouterr().err, "model=robustbench")
    assert "100 classes" in line and "use dataset=cifar100" in line
    assert no_cache_entry(tmp_path / "cache") and not (tmp_path / "run" / "metrics.json").exists()


def test_eval_refuses_a_new_head(dense, tmp_path, capsys):
    source = sources(dense, tmp_path)["safetensors"]
    assert main(["eval", str(source), *TINY, "model.head=new", f"eval_out={tmp_path / 'eval'}"]) == 2
    line = assert_one_line(2, capsys.readouterr().err, "model.head=new")
    assert "untrained classifier" in line and not (tmp_path / "eval").exists()
