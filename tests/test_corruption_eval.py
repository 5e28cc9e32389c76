"""Corruption robustness in a run: the released-file reader (CIFAR-10-C .npy format, written small in
tmp_path) and the image-folder layout (Tiny-ImageNet-C), the metrics of evaluate_corruptions, the
whole pipeline with ``+eval/corruptions@eval.corruptions=...`` on the embedded digits, the eval
stage's key, and the comparison table and plot."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from robprune.compose import compose
from robprune.corruptions import corrupt
from robprune.corruptions.files import check_folders, open_files
from robprune.errors import DataError
from robprune.evaluate.corruption import corruption_metrics, evaluate_corruptions
from robprune.graph import _covered
from robprune.pipeline import run
from robprune.stages import STAGES
from tests.test_graph import changed, key_of, leaves, resolved, with_leaf

FAST = ["train=standard", "train.epochs=3", "train.optimizer.lr=0.01", "model.width=8", "model.hidden=32",
        "prune=none", "finetune=none", "eval=pgd", "eval.attacks.pgd20.steps=3", "eval.n_examples.pgd20=60",
        "eval.large_eps_n=16", "eval.latency.repeats=2", "eval.latency.warmup=1", "eval.latency.batch_size=8"]
CORRUPTIONS = ["+eval/corruptions@eval.corruptions=default", "eval.corruptions.names=[gaussian_noise,contrast,fog]",
               "eval.corruptions.n_examples=null"]


@pytest.fixture(scope="module")
def digits_test():
    """The digits test split (355 grey 8x8 images) as the pipeline loads it."""
    from robprune.data import build_data

    data = build_data(compose([]).dataset)
    return data.test_x, data.test_y


def write_files(root, test_x, test_y, names=("contrast",), *, dtype=np.uint8, shape=None, labels=None):
    """CIFAR-10-C layout: <name>.npy = 5 severity blocks of the test images (N, H, W, C) uint8, labels.npy."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        blocks = [corrupt(test_x, name, s, seed=s) for s in range(1, 6)]
        arr = np.round(torch.cat(blocks).permute(0, 2, 3, 1).numpy() * 255).astype(dtype)
        np.save(root / f"{name}.npy", arr if shape is None else arr.reshape(shape))
    np.save(root / "labels.npy", np.tile(test_y.numpy(), 5).astype(np.uint8) if labels is None else labels)
    return root


def test_files_reader_maps_severity_blocks_and_slices(tmp_path, digits_test):
    x, y = digits_test
    root = write_files(tmp_path / "c", x, y)
    reader = open_files(root, ["contrast"], [1, 2, 3, 4, 5], y, (1, 8, 8), "test")
    assert reader.per_severity == len(y)
    points = np.array([5, 0, 300])
    for s in (1, 5):  # row (s-1)·M + i is test point i at severity s
        assert torch.equal(reader.images("contrast", s, points), torch.round(corrupt(x[points], "contrast", s) * 255).to(torch.uint8))
    head = open_files(root, ["contrast"], [1, 3], y[100:200], (1, 8, 8), "test[100:200]")  # a slice of the split
    assert torch.equal(head.images("contrast", 3, np.arange(3)), torch.round(corrupt(x[100:103], "contrast", 3) * 255).to(torch.uint8))
    np.save(root / "labels.npy", y.numpy())  # labels once, not per severity: accepted
    open_files(root, ["contrast"], [2], y, (1, 8, 8), "test")


@pytest.mark.parametrize("damage,match", [
    ("dtype", r"contrast\.npy holds float32 \(1775, 8, 8, 1\) but this run needs uint8 \(5·M, 8, 8, 1\)"),
    ("shape", r"contrast\.npy holds uint8 \(1775, 4, 16, 1\)"),
    ("rows", r"contrast\.npy holds uint8 \(1774, 8, 8, 1\)"),
    ("labels", r"labels\.npy does not match the run's test labels: \d+ of 355 differ at severity 1"),
    ("label_count", r"labels\.npy holds int64 \(100,\) but the corruption files hold 5 x 355 images"),
    ("missing", r"fog\.npy is missing"),
    ("split", r"hold 355 images per severity but the run's test split dataset\.test_split='test\[:100\]' has 50"),
])
def test_files_reader_rejects(damage, match, tmp_path, digits_test):
    x, y = digits_test
    kwargs = {"dtype": {"dtype": np.float32}, "shape": {"shape": (1775, 4, 16, 1)},
              "labels": {"labels": np.tile(np.roll(y.numpy(), 1), 5)}, "label_count": {"labels": y.numpy()[:100]}}
    root = write_files(tmp_path / "c", x, y, **kwargs.get(damage, {}))
    if damage == "rows":
        np.save(root / "contrast.npy", np.load(root / "contrast.npy")[:-1])
    names = ["contrast", "fog"] if damage == "missing" else ["contrast"]
    test_y, split = (y[:50], "test[:100]") if damage == "split" else (y, "test")
    with pytest.raises(DataError, match=match) as err:
        open_files(root, names, [1, 2, 3, 4, 5], test_y, (1, 8, 8), split)
    assert "\n" not in str(err.value) and "e.g." in str(err.value)


def _folders(root, classes: int, per_class: int = 2, names=("fog",), severities=(1,)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in names:
        for s in severities:
            for c in range(classes):
                folder = root / name / str(s) / f"class{c:02d}"
                folder.mkdir(parents=True)
                for i in range(per_class):
                    Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_folders_layout(tmp_path):
    """Tiny-ImageNet-C style <root>/<name>/<severity>/<class>/<image>, read by the image-folder reader,
    resized to the run's images; the class count must be the dataset's."""
    root = _folders(tmp_path / "tic", classes=10)
    check_folders(root, ["fog"], [1], 10)
    with pytest.raises(DataError, match="has 10 class folders but the dataset has 200 classes"):
        check_folders(root, ["fog"], [1], 200)
    with pytest.raises(DataError, match=r"fog/2 is missing"):
        check_folders(root, ["fog"], [1, 2], 10)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    node = OmegaConf.create({"source": "folders", "root": str(root), "names": ["fog"], "severities": [1], "n_examples": 15})
    x, y = torch.zeros(40, 1, 8, 8, dtype=torch.uint8), torch.zeros(40, dtype=torch.long)
    m = evaluate_corruptions(model, x, y, node, device="cpu", seed=0, batch_size=7, test_split="test", num_classes=10)
    assert 0 <= m["corruption_acc/fog/1"] <= 1 and m["n_eval/corruptions"] == 15


def test_metrics_from_accuracies():
    m = corruption_metrics({("fog", 1): 0.8, ("fog", 2): 0.6, ("snow", 1): 0.5, ("snow", 2): 0.3}, 0.9, 100)
    assert m["corruption_acc/fog"] == pytest.approx(0.7) and m["corruption_acc/snow"] == pytest.approx(0.4)
    assert m["corruption_acc/mean"] == pytest.approx(0.55) and m["corruption_error/mean"] == pytest.approx(0.45)
    assert m["corruption_rc"] == pytest.approx(0.55 / 0.9) and m["n_eval/corruptions"] == 100
    assert corruption_metrics({("fog", 1): 0.0}, 0.0, 5)["corruption_rc"] is None


def test_pipeline_with_corruptions(tmp_path):
    """+eval/corruptions@eval.corruptions on a shrunk digits run: every key, in [0, 1], R_C consistent,
    robust_acc/worst untouched (the same as the run without corruptions, whose stages it reuses), the
    PNG in the run directory, and the table and plot comparing the two runs."""
    from robprune.report.table import table_command

    def one(name, *extra):
        cfg = compose([*FAST, f"cache_dir={tmp_path / 'cache'}", *extra])
        return run(cfg, tmp_path / "runs" / name, choices={"prune": "none"})

    m = one("with", *CORRUPTIONS)
    plain = one("without")
    for name in ("gaussian_noise", "contrast", "fog"):
        for s in range(1, 6):
            assert 0 <= m[f"corruption_acc/{name}/{s}"] <= 1
        assert m[f"corruption_acc/{name}"] == pytest.approx(np.mean([m[f"corruption_acc/{name}/{s}"] for s in range(1, 6)]))
    assert 0 <= m["corruption_acc/mean"] <= 1 and m["corruption_error/mean"] == pytest.approx(1 - m["corruption_acc/mean"])
    assert m["n_eval/corruptions"] == 355 and m["clean_acc/corruptions"] == pytest.approx(m["clean_acc"])  # null = all
    assert m["corruption_rc"] == pytest.approx(m["corruption_acc/mean"] / m["clean_acc"])
    assert m["clean_acc"] > 0.5 and m["corruption_acc/contrast/5"] < m["clean_acc"]
    assert m["robust_acc/worst"] == plain["robust_acc/worst"] == m["robust_acc/pgd20"]
    assert not any(k.startswith("corruption") for k in plain)
    assert m["stages"]["train"]["key"] == plain["stages"]["train"]["key"]
    assert m["stages"]["eval"]["key"] != plain["stages"]["eval"]["key"]
    assert (tmp_path / "runs" / "with" / "corruptions.png").stat().st_size > 1000
    assert not (tmp_path / "runs" / "without" / "corruptions.png").exists()
    display = table_command(str(tmp_path / "runs"), rows=["run_dir"], quiet=True)
    assert {"corruption_acc/mean (%)", "corruption_rc"} <= set(display.columns)
    assert (tmp_path / "runs" / "corruptions.png").stat().st_size > 1000


def test_files_source_matches_generated(tmp_path, digits_test):
    """source=files on files made from the test split (contrast: deterministic) gives the numbers of
    source=generate, on the whole split and on a slice of it."""
    x, y = digits_test
    root = write_files(tmp_path / "c10c", x, y)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.nn.init.normal_(model[1].weight, generator=torch.Generator().manual_seed(0))
    for split, part in (("test", slice(None)), ("test[100:300]", slice(100, 300))):
        numbers = []
        for source in ("files", "generate"):
            node = OmegaConf.create({"source": source, "root": str(root), "names": ["contrast"],
                                     "severities": [1, 3, 5], "n_examples": 90})
            numbers.append(evaluate_corruptions(model, x[part], y[part], node, device="cpu", seed=3, batch_size=64,
                                                test_split=split, num_classes=10))
        assert numbers[0] == numbers[1]


def test_eval_key_covers_every_corruption_key_and_the_files(tmp_path, digits_test):
    """The graph's property test for the eval stage with eval.corruptions: each leaf it reads changes the
    key; the files' (size, mtime) change the key but not the seeds."""
    from robprune.graph import ConfigView, config_slice, stage_keys
    from robprune.stages.evaluate import externals

    stage = next(s for s in STAGES if s.name == "eval")
    cfg = resolved(["eval=corruptions", "eval.corruptions.frost_textures=null"])
    base = key_of(stage, cfg)
    paths = [p for p in leaves(OmegaConf.to_container(cfg)) if p.startswith("eval.corruptions")]
    assert len(paths) == 6 and all(_covered(p, stage.reads) for p in paths)
    for path in paths:
        assert key_of(stage, with_leaf(cfg, path, changed(OmegaConf.select(cfg, path)))) != base, path
    x, y = digits_test
    root = write_files(tmp_path / "c", x, y)
    cfg = resolved(["eval=corruptions", "eval.corruptions.source=files", f"eval.corruptions.root={root}",
                    "eval.corruptions.names=[contrast]"])
    sliced = config_slice(cfg, stage.reads, stage.ignores)

    def keys():
        view = ConfigView(sliced, "eval", stage.reads, stage.ignores)
        return stage_keys(stage, sliced, {"<model>": ("k", "s")}, {"meta": "m", "test": "t"}, "cpu", externals(view))

    before = keys()
    np.save(root / "contrast.npy", np.load(root / "contrast.npy"))  # rewritten: new mtime
    after = keys()
    assert after[0] != before[0] and after[1] == before[1]
