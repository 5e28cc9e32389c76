"""Tiny data roots in the real on-disk formats, so that every dataset option and every shipped
experiment runs offline with ``data.root=<folder>``: ``image_root`` (every file-based image dataset but
Tiny-ImageNet, side by side), ``tiny_imagenet_root`` and ``text_root`` (SST-2, AG News and IMDB files of
one synthetic corpus, a randomly initialised tiny BERT whose tokenizer was trained on it, a head-less
encoder and a masked LM on that tokenizer).
Writers come from tests/data_fixtures.py, tests/text_fixtures.py and tests/test_tiny_imagenet.py;
``shared_folder`` makes one copy per pytest session that every xdist worker reuses."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from tests.data_fixtures import make_cifar10, make_mnist, write_cifar_batch, write_png, write_svhn
from tests.text_fixtures import held_out, sentences, tiny_bert, write_sst2


def shared_folder(tmp_path_factory, worker_id: str, name: str, make) -> Path:
    """``make(folder)`` once per test session: under pytest-xdist every worker's base temp folder sits in
    one session folder, so the first worker to get the lock builds ``name`` there and the others reuse it."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    base = base.parent if worker_id != "master" else base
    folder = base / name
    with FileLock(str(base / f"{name}.lock")):
        if not (folder / ".done").exists():
            folder.mkdir(parents=True, exist_ok=True)
            make(folder)
            (folder / ".done").write_text("")
    return folder


def image_root(root: Path) -> Path:
    """Every file-based image dataset but Tiny-ImageNet in one root, so that one ``data.root`` serves a
    multirun over experiments on different datasets: MNIST's IDX files in the root itself (where
    fashion_mnist, which looks there first too, reads them: same format, same random pixels), the CIFAR-10
    and CIFAR-100 batch folders, the SVHN .mat files, and an image tree ``{train,test}/<class>/<n>.png``
    (imagefolder takes every folder under its root as a split; the CIFAR folders hold no class folders,
    so they add no class). Training splits hold 64+ examples, test splits 32+ (MNIST's 128: the MNIST
    experiments carve both from it)."""
    make_mnist(root, 96, 128, seed=0)
    make_cifar10(root / "cifar-10-batches-py", per_batch=20, n_test=64, seed=2)
    rng = np.random.default_rng(3)
    for split, n in (("train", 96), ("test", 64)):
        write_cifar_batch(root / "cifar-100-python" / split, rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                          rng.integers(0, 100, n).tolist(), "fine_labels")
        write_svhn(root / f"{split}_32x32.mat", rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
                   rng.integers(1, 11, n))
    imagefolder(root, classes=4, per_class={"train": 16, "test": 8})
    return root


ZOO_MODEL = ("cifar10", "Linf", "Wong2020Fast")  # a small zoo architecture (PreActResNet-18)


def zoo_root(root: Path) -> Path:
    """A RobustBench model folder (``<dir>/<dataset>/<threat>/<name>.pt``) holding :data:`ZOO_MODEL` with
    seeded random weights, saved as RobustBench's checkpoints are: a ``state_dict`` entry whose keys carry
    DataParallel's ``module.`` prefix, beside other entries."""
    import torch

    from robprune.models.robustbench import entries

    dataset, threat, name = ZOO_MODEL
    torch.manual_seed(0)
    model = entries(dataset, threat)[name]["model"]()
    path = root / dataset / threat / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 15}, path)
    return root


def tiny_imagenet_root(root: Path) -> Path:
    """root/tiny-imagenet-200 with 3 classes x 32 training images and 40 annotated val images (its
    train/ and val/ folders would be an image folder's splits: a root of its own)."""
    from tests.test_tiny_imagenet import WNIDS, _jpeg, make_tiny_imagenet

    base = make_tiny_imagenet(root, n_train=32)  # dataset.num_classes=null reads the 3 classes from wnids.txt
    rows = []
    for n in range(6, 40):  # the writer's 6 val images and more, annotated alike
        wnid = WNIDS[n % len(WNIDS)]
        _jpeg(base / "val" / "images" / f"val_{n}.JPEG", wnid, 100 + n)
        rows.append(f"val_{n}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    with open(base / "val" / "val_annotations.txt", "a") as fh:
        fh.write("".join(rows))
    return root


def imagefolder(root: Path, *, classes: int, per_class: dict, size: int = 32) -> None:
    """root/<split>/class<c>/<n>.png, RGB noise around a per-class grey level, ``size`` pixels square."""
    rng = np.random.default_rng(4)
    for split, n in per_class.items():
        for c in range(classes):
            for i in range(n):
                pixels = np.clip(rng.normal(60 * c + 40, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                write_png(root / split / f"class{c}" / f"{i}.png", pixels)


def text_root(root: Path) -> Path:
    """SST-2, AG News and IMDB files of the synthetic sentiment corpus, root/bert (a tiny BERT whose
    tokenizer knows every word of it) and root/mlm (a tiny masked LM on that tokenizer)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

    write_sst2(root, n_train=160, n_dev=64)
    corpus = {"train": sentences(160, seed=0)}
    corpus["test"] = held_out(64, corpus["train"])  # no test sentence repeats a training one (checks.train_test_overlap)
    with open(root / "train.csv", "w", newline="") as train, open(root / "test.csv", "w", newline="") as test:
        for fh, rows in ((train, corpus["train"]), (test, corpus["test"])):
            writer = csv.writer(fh, quoting=csv.QUOTE_ALL)
            for i, (label, text) in enumerate(rows):  # AG News: "class 1-4","title","description"
                words = text.split()
                writer.writerow([str(2 * (i % 2) + label + 1), " ".join(words[:2]), " ".join(words[2:])])
    for split, rows in corpus.items():  # aclImdb/<split>/{neg,pos}/<id>_<rating>.txt
        for i, (label, text) in enumerate(rows):
            folder = root / "aclImdb" / split / ("pos" if label else "neg")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}_{8 if label else 2}.txt").write_text(text)
    bert = tiny_bert(root / "bert", root / "train.tsv")
    tokenizer = AutoTokenizer.from_pretrained(str(bert))
    # a pretrained checkpoint as the hub's bert-base-uncased is one: an encoder with no classification head
    # (the head is new for any number of classes) and 512 positions (IMDB's max_length is 256)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512)).save_pretrained(str(root / "encoder"),
                                                                                               safe_serialization=True)
    tokenizer.save_pretrained(str(root / "encoder"))
    torch.manual_seed(1)
    mlm = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128))
    mlm.save_pretrained(str(root / "mlm"), safe_serialization=True)
    tokenizer.save_pretrained(str(root / "mlm"))
    (root / "made.json").write_text(json.dumps({"sst2": 160, "ag_news": 160, "imdb": 160}))
    return root


# --- ImageNet in its distributed layouts (streamed datasets) ------------------------------------------

WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")  # the first four ILSVRC-2012 classes


def write_jpeg(path: Path, pixels: np.ndarray, quality: int = 90) -> None:
    """(H, W, 3) uint8 as a baseline JPEG (PIL)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=quality)


def _class_pixels(label: int, n: int, rng, size: tuple[int, int]) -> np.ndarray:
    """Learnable images: a class colour plus noise, varied sizes around ``size`` (H, W)."""
    colour = np.array([(label * 67) % 256, (label * 131 + 60) % 256, (label * 29 + 120) % 256])
    height, width = size
    out = []
    for i in range(n):
        h, w = height + (i % 3) * 4, width + (i % 2) * 6
        out.append(np.clip(colour + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


def write_devkit(root: Path, wnids: list[str], val_wnids: list[str]) -> None:
    """ILSVRC2012_devkit_t12/data/meta.mat (the synsets struct array, leaf synsets first as in the real file,
    their ILSVRC2012_IDs in a shuffled order so that IDs are not label indices) and the ground truth."""
    from scipy.io import savemat

    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True, exist_ok=True)
    ids = {w: i + 1 for i, w in enumerate(sorted(wnids, reverse=True))}  # real IDs follow another order than the wnids
    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O"),
              ("children", "O"), ("wordnet_height", "O"), ("num_train_images", "O")]
    synsets = np.zeros((len(wnids) + 1, 1), dtype=fields)
    for row, wnid in enumerate(wnids):
        synsets[row, 0] = (ids[wnid], wnid, f"class {wnid}", "a gloss", 0, np.zeros((1, 0)), 0, 1300)
    synsets[len(wnids), 0] = (len(wnids) + 1, "n00001740", "entity", "the root", len(wnids),
                              np.arange(1, len(wnids) + 1, dtype=np.float64)[None], 19, 0)
    savemat(str(data / "meta.mat"), {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[w]}\n" for w in val_wnids))


def imagenet_root(root: Path, *, per_class: int = 6, val_per_class: int = 3, flat_val: bool = False,
                  size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """ILSVRC-2012 as distributed: train/<wnid>/<wnid>_<n>.JPEG, val/ either in class folders or flat
    (ILSVRC2012_val_<8 digits>.JPEG labelled by the devkit), images of varied sizes."""
    rng = np.random.default_rng(seed)
    val_wnids = []
    for label, wnid in enumerate(WNIDS):
        for i, img in enumerate(_class_pixels(label, per_class, rng, size)):
            write_jpeg(root / "train" / wnid / f"{wnid}_{i + 1}.JPEG", img)
        val_wnids += [wnid] * val_per_class
    order = rng.permutation(len(val_wnids))  # the released val files are not sorted by class
    val_wnids = [val_wnids[i] for i in order]
    counts: dict[str, int] = {}
    for n, wnid in enumerate(val_wnids, start=1):
        label = WNIDS.index(wnid)
        img = _class_pixels(label, counts.get(wnid, 0) + 1, rng, size)[-1]
        counts[wnid] = counts.get(wnid, 0) + 1
        name = f"ILSVRC2012_val_{n:08d}.JPEG"
        write_jpeg(root / "val" / name if flat_val else root / "val" / wnid / name, img)
    if flat_val:
        write_devkit(root, list(WNIDS), val_wnids)
    return root


def imagenet_v2_root(root: Path, *, per_class: int = 2, size: tuple[int, int] = (40, 48), seed: int = 1) -> Path:
    """imagenetv2-matched-frequency-format-val/<label>/<hash>.jpeg, labels in ImageNet's order."""
    rng = np.random.default_rng(seed)
    base = root / "imagenetv2-matched-frequency-format-val"
    for label in range(len(WNIDS)):
        for i, img in enumerate(_class_pixels(label, per_class, rng, size)):
            write_jpeg(base / str(label) / f"{rng.integers(1 << 60):x}.jpeg", img)
    return root


def imagenet_c_root(root: Path, names=("gaussian_noise", "fog"), severities=(1, 2, 3, 4, 5), *, per_class: int = 2,
                    size: int = 32, seed: int = 2) -> Path:
    """ImageNet-C: <corruption>/<severity>/<wnid>/<val name>.JPEG, images already at the crop size."""
    rng = np.random.default_rng(seed)
    for name in names:
        for severity in severities:
            for label, wnid in enumerate(WNIDS):
                for i, img in enumerate(_class_pixels(label, per_class, rng, (size, size))):
                    noisy = np.clip(img.astype(int) + rng.normal(0, 8 * severity, img.shape), 0, 255).astype(np.uint8)
                    write_jpeg(root / name / str(severity) / wnid / f"ILSVRC2012_val_{label * 100 + i + 1:08d}.JPEG", noisy)
    return root


C_NAMES = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
           "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")


def imagenet_every_root(root: Path) -> Path:
    """Every streamed dataset and ImageNet evaluation in one data.root, large enough for test_every_option's
    slices (64 train, 32 test): ILSVRC-2012 with flat val + devkit, ImageNet-V2 (96 images), ImageNet-C
    (the 15 corruptions at severity 1) and WebDataset shards of the train and val images."""
    import io
    import tarfile

    imagenet_root(root, per_class=16, val_per_class=8, flat_val=True, size=(20, 24))
    imagenet_v2_root(root, per_class=24, size=(20, 24))
    imagenet_c_root(root / "imagenet-c", names=C_NAMES, severities=(1,), per_class=1, size=16)
    truth = [int(line) for line in (root / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").read_text().split()]
    ids = {w: i + 1 for i, w in enumerate(sorted(WNIDS, reverse=True))}
    label_of_id = {ids[w]: WNIDS.index(w) for w in WNIDS}
    items = {"train": [(p, WNIDS.index(p.parent.name)) for p in sorted((root / "train").rglob("*.JPEG"))],
             "val": [(p, label_of_id[truth[int(p.stem.rsplit("_", 1)[1]) - 1]]) for p in sorted((root / "val").glob("*.JPEG"))]}
    for split, samples in items.items():
        for s in range(0, len(samples), 32):
            with tarfile.open(root / f"{split}-{s // 32:06d}.tar", "w") as tar:
                for image, label in samples[s:s + 32]:
                    for name, data in ((f"{image.stem}.jpg", image.read_bytes()), (f"{image.stem}.cls", str(label).encode())):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
    return root
