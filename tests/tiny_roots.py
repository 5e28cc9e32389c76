"""Tiny data roots in the real on-disk formats, one folder per modality, so that every dataset option
and every shipped experiment can run offline with ``data.root=<folder>``:

- ``image_root``: MNIST and Fashion-MNIST IDX files (torchvision's ``<root>/<Name>/raw`` layout), the
  CIFAR-10 and CIFAR-100 pickle batches, SVHN ``.mat`` files and a Tiny-ImageNet tree, side by side;
- ``imagefolder_root``: ``<root>/<split>/<class>/<image>.png`` (an image folder takes every folder under
  its root as a split, so it cannot share the other image files' root);
- ``text_root``: SST-2 TSVs, the AG News CSVs and the aclImdb tree of the same synthetic sentences, a tiny
  BERT classifier whose WordPiece vocabulary was trained on them (``bert``), a tiny encoder without a head on
  that tokenizer (``encoder``, as a hub checkpoint like bert-base-uncased is) and a tiny masked LM on it
  (BERT-Attack's ``mlm``).

Writers come from tests/data_fixtures.py, tests/text_fixtures.py and tests/test_tiny_imagenet.py.
``shared_folder`` makes one copy per pytest session that every xdist worker reuses."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from tests.data_fixtures import make_cifar10, make_mnist, write_cifar_batch, write_png, write_svhn
from tests.text_fixtures import sentences, tiny_bert, write_sst2


TINY_IMAGENET_PER_CLASS, TINY_IMAGENET_VAL = 32, 40


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
    """Every file-based image dataset except imagefolder in one root (train splits of 96, test of 128)."""
    from tests.test_tiny_imagenet import WNIDS, _jpeg, make_tiny_imagenet

    make_mnist(root / "MNIST" / "raw", 96, 128, seed=0)
    make_mnist(root / "FashionMNIST" / "raw", 96, 128, seed=1)
    make_cifar10(root / "cifar-10-batches-py", per_batch=20, n_test=64, seed=2)
    rng = np.random.default_rng(3)
    for split, n in (("train", 96), ("test", 64)):
        write_cifar_batch(root / "cifar-100-python" / split, rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                          rng.integers(0, 100, n).tolist(), "fine_labels")
        write_svhn(root / f"{split}_32x32.mat", rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
                   rng.integers(1, 11, n))
    base = make_tiny_imagenet(root, n_train=TINY_IMAGENET_PER_CLASS)  # 3 classes: dataset.num_classes=null reads wnids.txt
    rows = []
    for n in range(6, TINY_IMAGENET_VAL):  # the writer's 6 val images and more, annotated alike
        wnid = WNIDS[n % len(WNIDS)]
        _jpeg(base / "val" / "images" / f"val_{n}.JPEG", wnid, 100 + n)
        rows.append(f"val_{n}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    with open(base / "val" / "val_annotations.txt", "a") as fh:
        fh.write("".join(rows))
    return root


def imagefolder_root(root: Path, *, classes: int = 4, per_class: dict | None = None, size: int = 32) -> Path:
    """root/{train,test}/<class>/<n>.png, RGB, ``size`` pixels square."""
    rng = np.random.default_rng(4)
    for split, n in (per_class or {"train": 16, "test": 8}).items():
        for c in range(classes):
            for i in range(n):
                pixels = np.clip(rng.normal(60 * c + 40, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                write_png(root / split / f"class{c}" / f"{i}.png", pixels)
    return root


def text_root(root: Path) -> Path:
    """SST-2, AG News and IMDB files of the synthetic sentiment corpus, root/bert (a tiny BERT whose
    tokenizer knows every word of it) and root/mlm (a tiny masked LM on that tokenizer)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

    write_sst2(root, n_train=160, n_dev=64)
    with open(root / "train.csv", "w", newline="") as train, open(root / "test.csv", "w", newline="") as test:
        for fh, rows in ((train, sentences(160, seed=0)), (test, sentences(64, seed=1))):
            writer = csv.writer(fh, quoting=csv.QUOTE_ALL)
            for i, (label, text) in enumerate(rows):  # AG News: "class 1-4","title","description"
                words = text.split()
                writer.writerow([str(2 * (i % 2) + label + 1), " ".join(words[:2]), " ".join(words[2:])])
    for split, n, seed in (("train", 160, 0), ("test", 64, 1)):  # aclImdb/<split>/{neg,pos}/<id>_<rating>.txt
        for i, (label, text) in enumerate(sentences(n, seed=seed)):
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
