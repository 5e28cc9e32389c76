"""Streamed image datasets (robprune.data.stream, robprune.data.imagenet): ImageNet's distributed layouts on
generated trees of real JPEGs, seeded draws independent of the workers, data-parallel shards, the manifest
fingerprint, the streamed pipeline end to end, and the bad-input lines."""
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from robprune.data import build_data
from robprune.data.stream import Transforms, resized_crop_box
from robprune.errors import ConfigError, DataError
from robprune.graph import data_fingerprint
from tests.data_fixtures import dataset_cfg
from tests.helpers import read_metrics, robprune
from tests.test_validation import assert_one_line, finished, no_cache_entry, run_main  # noqa: F401 (fixture)
from tests.tiny_roots import WNIDS, imagenet_c_root, imagenet_root, imagenet_v2_root, shared_folder, write_jpeg

SMALL = {"num_classes": 4, "image_size": 32, "resize": 36}


@pytest.fixture(scope="module")
def roots(tmp_path_factory, worker_id):
    """One ImageNet tree with val in class folders, one as released (flat val + devkit), ImageNet-V2, -C."""
    def make(folder: Path) -> None:
        imagenet_root(folder / "folders")
        imagenet_root(folder / "flat", flat_val=True)
        imagenet_v2_root(folder / "v2")
        imagenet_c_root(folder / "c")
    return shared_folder(tmp_path_factory, worker_id, "imagenet_roots", make)


def _bundle(root: Path, cache: Path | None = None, name: str = "imagenet", loading=None, **overrides):
    cfg = dataset_cfg(name, root, **{**SMALL, **overrides})
    return build_data(cfg, cache_dir=None if cache is None else str(cache), loading=loading)


def test_val_in_class_folders_and_flat_with_devkit_label_alike(roots, tmp_path):
    folders, flat = _bundle(roots / "folders"), _bundle(roots / "flat")
    assert (len(folders.train_y), len(folders.test_y)) == (24, 12) and folders.num_classes == 4
    assert torch.equal(folders.train_y, flat.train_y)  # the same train tree, wnids sorted
    # flat val: each file's label comes from the devkit (IDs mapped through meta.mat), not from its name order
    for rel, label in zip(flat.test_x.files.rels, flat.test_y.tolist()):
        folder_rel = next(r.decode() for r in folders.test_x.files.rels if r.endswith(rel.rsplit(b"/", 1)[-1]))
        assert WNIDS[label] == folder_rel.split("/")[1]
    # Kaggle's LOC_val_solution.csv labels the same files the same way
    kaggle = tmp_path / "kaggle"
    shutil.copytree(roots / "flat", kaggle, ignore=shutil.ignore_patterns("ILSVRC2012_devkit_t12"))
    rows = ["ImageId,PredictionString"] + [f"{Path(r.decode()).stem},{WNIDS[y]} 1 2 3 4"
                                           for r, y in zip(flat.test_x.files.rels, flat.test_y.tolist())]
    (kaggle / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    assert torch.equal(_bundle(kaggle).test_y, flat.test_y)


def test_evaluation_view_is_resize_then_centre_crop(roots):
    bundle = _bundle(roots / "folders")
    x = bundle.test_x[torch.tensor([0, 5])]
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.uint8
    from torchvision.io import decode_image
    from torchvision.transforms.v2 import functional as F

    raw = decode_image(bundle.test_x.files.path(5))
    assert torch.equal(x[1], F.center_crop(F.resize(raw, [36], antialias=True), [32, 32]))
    pixels = bundle.test_x.pixels()[[0]]
    assert pixels.dtype == torch.float32 and torch.allclose(pixels[0], x[0].float() / 255)


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y, *_ in loader]


def test_draws_are_seeded_and_independent_of_the_workers(roots):
    bundle = _bundle(roots / "folders", loading={"num_workers": 0})
    augment = OmegaConf.create({"crop_padding": 0, "hflip": True, "resized_crop": [0.08, 1.0]})

    def run(workers: int, seed: int):
        bundle.loading = type(bundle.loading)(num_workers=workers)
        loader = bundle.loader(bundle.train_x, bundle.train_y, 8, shuffle=True, augment=augment,
                               generator=torch.Generator().manual_seed(seed))
        return _epoch(loader), _epoch(loader)

    (a1, a2), (b1, _), (c1, _) = run(0, 3), run(2, 3), run(0, 4)
    assert all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a1, b1))  # 0 vs 2 workers
    assert not all(torch.equal(x, y) for (x, _), (y, _) in zip(a1, a2))  # the next epoch draws anew
    assert not all(torch.equal(x, y) for (x, _), (y, _) in zip(a1, c1))  # another seed, other batches
    # resume at an epoch boundary: a generator restored to its state after epoch 1 gives epoch 2 again
    gen = torch.Generator().manual_seed(3)
    loader = bundle.loader(bundle.train_x, bundle.train_y, 8, shuffle=True, augment=augment, generator=gen)
    _epoch(loader)
    state = gen.get_state()
    again = torch.Generator()
    again.set_state(state)
    resumed = bundle.loader(bundle.train_x, bundle.train_y, 8, shuffle=True, augment=augment, generator=again)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(_epoch(resumed), a2))


def test_ranks_decode_only_their_rows_of_each_global_batch(roots):
    bundle = _bundle(roots / "folders")
    augment = OmegaConf.create({"hflip": True, "resized_crop": [0.5, 1.0]})
    one = _epoch(bundle.loader(bundle.train_x, bundle.train_y, 10, shuffle=True, augment=augment,
                               generator=torch.Generator().manual_seed(0)))
    shards = [list(bundle.loader(bundle.train_x, bundle.train_y, 10, shuffle=True, augment=augment,
                                 generator=torch.Generator().manual_seed(0)).shard(r, 2)) for r in (0, 1)]
    assert len(one) == 3 and [n for *_, n in shards[0]] == [10, 10, 4]
    for (x, y), (x0, y0, _), (x1, y1, _) in zip(one, *shards):
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1) and torch.equal(y[0::2], y0)


def test_resized_crop_box_stays_inside_and_follows_the_scale():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = resized_crop_box(60, 90, (0.3, 0.6), gen)
        assert 0 <= top <= 60 - h and 0 <= left <= 90 - w and h > 0 and w > 0
        assert 0.25 <= h * w / (60 * 90) <= 0.65
    img = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    out = Transforms(image_size=24, resized_crop=(0.08, 1.0), hflip=True).train(img, seed=7)
    assert out.shape == (3, 24, 24)
    assert torch.equal(out, Transforms(image_size=24, resized_crop=(0.08, 1.0), hflip=True).train(img, seed=7))


def test_streamed_imagefolder_matches_the_in_memory_one(roots, tmp_path):
    """Same files, same order, same labels; PNG pixels decode identically (lossless, no resize)."""
    from tests.tiny_roots import imagefolder

    imagefolder(tmp_path / "tree", classes=3, per_class={"train": 4, "test": 2}, size=16)
    memory = build_data(dataset_cfg("imagefolder", tmp_path / "tree"))
    stream = build_data(dataset_cfg("imagefolder", tmp_path / "tree", storage="stream"))
    assert type(stream).__name__ == "StreamBundle"
    assert torch.equal(memory.train_y, stream.train_y) and torch.equal(memory.test_y, stream.test_y)
    assert torch.equal(memory.test_x, stream.test_x[torch.arange(len(stream.test_y))])
    assert memory.arch_record() == stream.arch_record()


def test_manifest_keys_the_data_and_is_reused(roots, tmp_path):
    root = tmp_path / "inet"
    shutil.copytree(roots / "folders", root)
    cache = tmp_path / "cache"
    first = _bundle(root, cache)
    assert len(list((cache / "manifests").glob("*.json.gz"))) == 1
    again = _bundle(root, cache)
    assert data_fingerprint(first, "train") == data_fingerprint(again, "train")
    assert data_fingerprint(first, "test") != data_fingerprint(first, "train")
    assert data_fingerprint(_bundle(root, cache, version="v2"), "train") != data_fingerprint(first, "train")
    assert data_fingerprint(_bundle(root, cache, resize=40), "test") != data_fingerprint(first, "test")
    cpu_decoded = _bundle(root, cache, loading={"gpu_decode": False})  # nvJPEG's pixels may differ: a training key
    assert data_fingerprint(cpu_decoded, "train") != data_fingerprint(first, "train")
    assert data_fingerprint(cpu_decoded, "test") == data_fingerprint(first, "test")  # evaluation decodes on the CPU
    # a new image in a class folder changes the folder's mtime: the manifest is rescanned, the key moves
    write_jpeg(root / "train" / WNIDS[0] / "extra.JPEG", (torch.rand(40, 40, 3) * 255).byte().numpy())
    grown = _bundle(root, cache)
    assert len(grown.train_y) == 25 and data_fingerprint(grown, "train") != data_fingerprint(first, "train")
    assert data_fingerprint(grown, "test") == data_fingerprint(first, "test")
    # a damaged manifest is rescanned with a warning, never fatal
    next((cache / "manifests").glob("*.json.gz")).write_bytes(b"not gzip")
    with pytest.warns(UserWarning, match="unreadable manifest"):
        assert data_fingerprint(_bundle(root, cache), "train") == data_fingerprint(grown, "train")


def test_imagenet_v2_labels_are_its_folder_names(roots):
    bundle = _bundle(roots / "v2", name="imagenet_v2")
    assert len(bundle.test_y) == 8 and sorted(set(bundle.test_y.tolist())) == [0, 1, 2, 3]
    assert all(int(Path(r.decode()).parent.name) == y for r, y in zip(bundle.test_x.files.rels, bundle.test_y.tolist()))


def test_truncated_jpeg_is_named_and_skipped_only_when_asked(roots, tmp_path):
    root = tmp_path / "inet"
    shutil.copytree(roots / "folders", root)
    bad = root / "train" / WNIDS[1] / f"{WNIDS[1]}_2.JPEG"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(DataError, match=r"1 of 24 images are unreadable or truncated: .*_2\.JPEG \(truncated JPEG"):
        _bundle(root)
    bundle = _bundle(root, loading={"skip_bad": True})
    assert len(bundle.train_y) == 23  # the warning is the run's to log and record in metrics.json
    assert any("leaving out 1 unreadable or truncated" in note for note in bundle.audit.warnings)


@pytest.mark.parametrize("case,named", [
    ("no_layout", "has no train/ or val/ folder"),
    ("no_val_labels", "the val labels are missing"),
    ("class_count", "dataset.num_classes=1000 but 4 class folders"),
    ("workers", "data.num_workers"),
    ("download", "cannot be downloaded by robprune"),
    ("corruptions", "/fog/3 is missing"),
])
def test_streamed_bad_input_is_one_line_before_any_stage(case, named, roots, finished, tmp_path, capsys):  # noqa: F811
    run, snapshot = finished
    before = snapshot()
    root = tmp_path / "inet"
    shutil.copytree(roots / ("flat" if case == "no_val_labels" else "folders"), root)
    extra = {"dataset.num_classes": "4"}
    if case == "no_layout":
        (root / "train").rename(root / "training")
        (root / "val").rename(root / "validation")
    elif case == "no_val_labels":
        shutil.rmtree(root / "ILSVRC2012_devkit_t12")
    elif case == "class_count":
        extra = {}
    elif case == "workers":
        extra["data.num_workers"] = "-1"
    elif case == "download":
        extra["data.download"] = "true"
    elif case == "corruptions":
        c = tmp_path / "c"
        shutil.copytree(roots / "c", c)
        shutil.rmtree(c / "fog" / "3")
        extra.update({"+eval/corruptions@eval.corruptions": "imagenet_c", "eval.corruptions.root": str(c),
                      "eval.corruptions.names": "[gaussian_noise,fog]"})
    args = ["dataset=imagenet", f"data.root={root}", "dataset.image_size=32", "dataset.resize=36", "model=cnn8",
            *(f"{k}={v}" for k, v in extra.items()), f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'new_run'}"]
    code, err = run_main(args, capsys)
    assert_one_line(code, err, named)
    assert no_cache_entry(tmp_path / "cache") and snapshot() == before and not (tmp_path / "new_run" / "metrics.json").exists()


def test_streamed_run_end_to_end_with_imagenet_c_and_workers(roots, tmp_path):
    """A whole run on the released-layout tree: DataLoader workers, ImageNet-C through eval.corruptions."""
    res = robprune(["run", "dataset=imagenet", f"data.root={roots / 'flat'}", "dataset.num_classes=4",
                    "dataset.image_size=32", "dataset.resize=36", "model=cnn8", "model.width=8", "model.hidden=32",
                    "train.epochs=2", "data.batch_size=8", "data.num_workers=2", "eval=pgd",
                    "eval.attacks.pgd20.steps=2", "+eval/corruptions@eval.corruptions=imagenet_c",
                    f"eval.corruptions.root={roots / 'c'}", "eval.corruptions.names=[gaussian_noise,fog]",
                    "eval.corruptions.severities=[1,5]", "eval.latency.repeats=2", "eval.latency.warmup=1",
                    "eval.latency.batch_size=4", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
                   cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = read_metrics(tmp_path / "run")
    assert metrics["dataset"] == {"name": "imagenet", "n_train": 24, "n_test": 12}
    assert 0 <= metrics["clean_acc"] <= 1 and metrics["n_eval/corruptions"] == 12
    assert {"corruption_acc/fog/5", "corruption_acc/gaussian_noise/1", "corruption_acc/mean"} <= set(metrics)


RSS_SCRIPT = """
import sys, torch
from omegaconf import OmegaConf
from robprune.data import build_data
def epoch(root):
    cfg = OmegaConf.create({"name": "imagefolder", "root": root, "storage": "stream", "image_size": 16,
                            "train_split": "train[10:]", "test_split": "train[:10]", "num_classes": None})
    data = build_data(cfg, cache_dir=sys.argv[3], loading={"num_workers": 0})
    loader = data.loader(data.train_x, data.train_y, 256, shuffle=True, generator=torch.Generator().manual_seed(0),
                         augment={"hflip": True, "crop_padding": 2})
    seen = sum(len(y) for x, y in loader)
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))  # KiB
    print(seen, peak)
epoch(sys.argv[1])  # the small tree first: the high-water mark after it is the baseline the large one may not pass
epoch(sys.argv[2])
"""


def flat_tree(root: Path, n: int, classes: int = 10) -> Path:
    """n tiny JPEGs (one encoded image, copied) in ``classes`` class folders."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="JPEG")
    data = buf.getvalue()
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"c{i % classes}" / f"{i:06d}.jpg").write_bytes(data)
    return root


def test_peak_memory_is_flat_in_the_dataset_size_and_keys_are_fast(tmp_path):
    """One epoch over 2,000 and then over 20,000 JPEGs in one fresh process: the peak RSS after the second is
    within a few MB of the first; the second keying of the 20,000-file tree reads its cached manifest in well
    under a second."""
    small, large = flat_tree(tmp_path / "tree2000", 2000), flat_tree(tmp_path / "tree20000", 20000)
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(small), str(large), str(tmp_path / "cache")],
                         capture_output=True, text=True, check=True)
    (seen_small, rss_small), (seen_large, rss_large) = (map(int, line.split()) for line in out.stdout.splitlines())
    assert (seen_small, seen_large) == (1990, 19990)
    print(f"peak RSS (KiB): 2,000 images {rss_small}, then 20,000 images {rss_large}")
    assert rss_large - rss_small < 8 * 1024  # KiB: within 8 MB
    cfg = OmegaConf.create({"name": "imagefolder", "root": str(large), "storage": "stream", "image_size": 16,
                            "train_split": "train[10:]", "test_split": "train[:10]", "num_classes": None})
    start = time.perf_counter()
    bundle = build_data(cfg, cache_dir=str(tmp_path / "cache"))
    data_fingerprint(bundle, "train")
    assert time.perf_counter() - start < 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_decode_gives_the_cpu_batches(roots):
    """nvJPEG and libjpeg-turbo may differ by a grey level on a few pixels; the crops and flips must agree."""
    bundle = _bundle(roots / "folders", loading={"gpu_decode": True})
    augment = {"hflip": True, "resized_crop": [0.5, 1.0]}
    gpu = _epoch(bundle.loader(bundle.train_x, bundle.train_y, 8, shuffle=True, augment=augment, device="cuda",
                               generator=torch.Generator().manual_seed(0)))
    bundle.loading = type(bundle.loading)(gpu_decode=False)
    cpu = _epoch(bundle.loader(bundle.train_x, bundle.train_y, 8, shuffle=True, augment=augment, device="cuda",
                               generator=torch.Generator().manual_seed(0)))
    for (xg, yg), (xc, yc) in zip(gpu, cpu):
        assert torch.equal(yg, yc) and (xg - xc).abs().mean() < 0.02



def write_shards(folder: Path, split_root: Path, prefix: str, per_shard: int = 6) -> list[Path]:
    """The tree's images as WebDataset shards: <prefix>-00000N.tar with <key>.jpg + <key>.cls members."""
    import io
    import tarfile

    from tests.tiny_roots import WNIDS as classes

    items = sorted((p, classes.index(p.parent.name)) for p in split_root.rglob("*.JPEG"))
    out = []
    for s in range(0, len(items), per_shard):
        path = folder / f"{prefix}-{s // per_shard:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for image, label in items[s:s + per_shard]:
                for name, data in ((f"{image.stem}.jpg", image.read_bytes()), (f"{image.stem}.cls", str(label).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        out.append(path)
    return out


def test_webdataset_shards_read_like_the_folders_they_hold(roots, tmp_path):
    from robprune.data.webdataset import expand

    assert expand("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"] and expand("{x,y}{1..2}") == ["x1", "x2", "y1", "y2"]
    write_shards(tmp_path, roots / "folders" / "train", "train")
    write_shards(tmp_path, roots / "folders" / "val", "val")
    shards = _bundle(tmp_path, tmp_path / "cache", name="webdataset", train_shards="train-{000000..000003}.tar",
                     test_shards="val-*.tar")
    folders = _bundle(roots / "folders")
    assert sorted(shards.train_y.tolist()) == sorted(folders.train_y.tolist()) and len(shards.test_y) == 12
    # a sample read from its shard is the file it came from: same bytes, same label, same pixels
    data = bytes(shards.train_x.files.read(5).numpy())
    j = next(j for j in range(len(folders.train_y)) if Path(folders.train_x.files.path(j)).read_bytes() == data)
    assert shards.train_y[5] == folders.train_y[j] and torch.equal(shards.train_x[[5]], folders.train_x[[j]])
    loader = shards.loader(shards.train_x, shards.train_y, 8, shuffle=True, generator=torch.Generator().manual_seed(0),
                           augment={"hflip": True, "resized_crop": [0.5, 1.0]})
    assert [len(y) for _, y in loader] == [8, 8, 8]
    with pytest.raises(ConfigError, match=r"dataset.test_shards='nothing-\*.tar' matches no file"):
        _bundle(tmp_path, name="webdataset", train_shards="train-*.tar", test_shards="nothing-*.tar")


def _stream_rank(rank: int, world: int, port: int, root: str, queue) -> None:
    """fit() on a streamed split as one rank of ``world`` (world 1: the plain loop on the whole batches)."""
    import os

    from torch import nn

    from robprune.train.loop import fit
    from robprune.train.objectives import Standard
    from robprune.train.trainer import Rank, Trainer, wrap_forward

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 4))
    me = None
    if world > 1:
        import torch.distributed as dist

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        me = Rank(rank, world, seed=0)
    data = _bundle(Path(root), loading={"num_workers": 0})
    generator = torch.Generator().manual_seed(5)
    loader = data.loader(data.train_x, data.train_y, 10, shuffle=True, generator=generator,
                         augment={"hflip": True, "resized_crop": [0.3, 1.0]})
    if me is not None:
        loader = loader.shard(rank, world)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    forward = wrap_forward(model, Trainer(), torch.device("cpu"), me) if me else model
    history = fit(model, loader, Standard(), optimizer, epochs=2, lr_factor=lambda e: 1.0, generator=generator,
                  progress=False, forward_model=forward, rank=me)
    if rank == 0:
        queue.put(([p.detach().tolist() for p in model.parameters()], history))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def test_two_gloo_ranks_on_a_streamed_split_train_like_one_process(roots):
    """Each rank decodes only its rows of every global batch (24 images, batch 10: rows 5+5, 5+5, 2+2)."""
    import torch.multiprocessing as mp

    from robprune.train.trainer import free_port

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    _stream_rank(0, 1, 0, str(roots / "folders"), queue)
    single, single_log = queue.get()
    mp.start_processes(_stream_rank, args=(2, free_port(), str(roots / "folders"), queue), nprocs=2, start_method="spawn")
    ddp, ddp_log = queue.get()
    for a, b in zip(single, ddp):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=0)
    assert [round(r["loss"], 4) for r in ddp_log] == [round(r["loss"], 4) for r in single_log]


def test_the_other_layout_errors_fire(roots, tmp_path):
    """Each refusal of the streamed sources, one line naming the file or key and the fix."""
    import io
    import tarfile

    from robprune.evaluate.shift import build_set

    # a val class folder that train/ does not have
    odd = tmp_path / "odd"
    shutil.copytree(roots / "folders", odd)
    (odd / "val" / WNIDS[0]).rename(odd / "val" / "n99999999")
    with pytest.raises(DataError, match=r"n99999999 is not a class folder of .*train; the val folders must be"):
        _bundle(odd)
    # the devkit's meta.mat missing next to its ground truth
    nometa = tmp_path / "nometa"
    shutil.copytree(roots / "flat", nometa)
    (nometa / "ILSVRC2012_devkit_t12" / "data" / "meta.mat").unlink()
    with pytest.raises(DataError, match=r"meta.mat is missing: it maps the ground truth"):
        _bundle(nometa)
    # ImageNet-V2 without its numbered folders
    with pytest.raises(DataError, match=r"no class folders 0 … 999 under .*imagenetv2-matched-frequency"):
        _bundle(roots / "folders", name="imagenet_v2")
    # images of different sizes without image_size: named at the first that differs
    from tests.tiny_roots import imagefolder

    imagefolder(tmp_path / "mixed", classes=2, per_class={"train": 2, "test": 2}, size=16)
    write_jpeg(tmp_path / "mixed" / "test" / "class0" / "zz.jpg", (torch.rand(20, 12, 3) * 255).byte().numpy())
    mixed = build_data(dataset_cfg("imagefolder", tmp_path / "mixed", storage="stream"))
    with pytest.raises(DataError, match=r"zz.jpg gives a \(3, 20, 12\) image but the split's images are \(3, 16, 16\)"):
        mixed.test_x[torch.arange(len(mixed.test_y))]
    # a WebDataset sample without its label
    with tarfile.open(tmp_path / "train-000000.tar", "w") as tar:
        data = (roots / "folders" / "train" / WNIDS[0] / f"{WNIDS[0]}_1.JPEG").read_bytes()
        info = tarfile.TarInfo("a.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match=r"sample 'a' has no a .cls label"):
        _bundle(tmp_path, name="webdataset", train_shards="train-000000.tar", test_shards="train-000000.tar")
    # a shifted test set with other classes than the run's
    node = dataset_cfg("imagenet_v2", roots / "v2", num_classes=4, image_size=32, resize=36)
    with pytest.raises(ConfigError, match=r"eval.sets.v2 has 4 classes but the run's dataset has 10"):
        build_set("v2", node, 10)


def test_file_and_option_refusals_fire(roots, tmp_path):
    """The remaining one-line refusals of streamed reading, each named: augmentation options, images that
    are not images, label files and shards that cannot be read, a split with no image."""
    import tarfile

    from robprune.data.loader import BatchLoader
    from robprune.data.manifest import check_image

    bundle = _bundle(roots / "folders")
    with pytest.raises(ConfigError, match=r"dataset.augment.resized_crop must be \[min, max\] area fractions"):
        bundle.loader(bundle.train_x, bundle.train_y, 8, shuffle=True, augment={"resized_crop": [0.9, 0.1]})
    with pytest.raises(ConfigError, match=r"resized_crop needs a streamed dataset"):
        BatchLoader(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 2, shuffle=True,
                    augment={"resized_crop": [0.5, 1.0]})
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_bytes(b"hello, not an image")
    assert check_image(str(tmp_path / "empty.jpg"), 0) == "empty file"
    assert check_image(str(tmp_path / "text.jpg"), 19) == "not a JPEG (no SOI marker)"
    # Kaggle's csv with another header
    kaggle = tmp_path / "kaggle"
    shutil.copytree(roots / "flat", kaggle, ignore=shutil.ignore_patterns("ILSVRC2012_devkit_t12"))
    (kaggle / "LOC_val_solution.csv").write_text("id,label\nx,y\n")
    with pytest.raises(DataError, match=r"is not Kaggle's LOC_val_solution.csv \(header ImageId,PredictionString\)"):
        _bundle(kaggle)
    # a shard that is not a tar, and a .cls that is not a number
    (tmp_path / "broken-000000.tar").write_bytes(b"\x00" * 10 + b"not a tar at all" * 40)
    with pytest.raises(DataError, match=r"broken-000000.tar is not a readable tar shard"):
        _bundle(tmp_path, name="webdataset", train_shards="broken-000000.tar", test_shards="broken-000000.tar")
    import io

    with tarfile.open(tmp_path / "words-000000.tar", "w") as tar:
        for name, data in (("a.jpg", (roots / "folders" / "train" / WNIDS[0] / f"{WNIDS[0]}_1.JPEG").read_bytes()),
                           ("a.cls", b"tench")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match=r"a.cls holds 'tench', not a class index"):
        _bundle(tmp_path, name="webdataset", train_shards="words-000000.tar", test_shards="words-000000.tar")
    # a split whose folders hold no image
    hollow = tmp_path / "hollow" / "imagenetv2-matched-frequency-format-val"
    for label in range(2):
        (hollow / str(label)).mkdir(parents=True)
    with pytest.raises(DataError, match=r"split 'test' under .* holds no images"):
        _bundle(tmp_path / "hollow", name="imagenet_v2")
