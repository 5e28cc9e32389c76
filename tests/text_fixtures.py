"""Tiny text data and a tiny BERT for tests, in the real formats: GLUE-style TSV files with a header,
a WordPiece tokenizer trained with the ``tokenizers`` library on the training file, and a randomly
initialised ``BertForSequenceClassification`` saved with ``save_pretrained`` (safetensors). Nothing
is downloaded."""
from __future__ import annotations

import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

POSITIVE = ["good", "great", "wonderful", "charming", "funny", "moving", "brilliant", "fine", "lovely", "smart"]
NEGATIVE = ["bad", "dull", "awful", "boring", "weak", "tedious", "poor", "stupid", "flat", "messy"]
NOUNS = ["film", "movie", "story", "cast", "script", "plot", "performance", "picture", "ending", "director"]
FILLER = ["the", "a", "this", "is", "was", "and", "very", "quite", "really", "an", "of", "its", "with"]


def sentences(n: int, *, seed: int = 0) -> list[tuple[int, str]]:
    """n (label, sentence) pairs of a synthetic sentiment corpus: the label is the polarity of the
    adjective, so a tiny model can learn it in one epoch."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        adjective = rng.choice(POSITIVE if label else NEGATIVE)
        words = [rng.choice(FILLER[:3]), rng.choice(NOUNS), rng.choice(FILLER[3:5]), rng.choice(FILLER[6:9]), adjective]
        if rng.random() < 0.5:
            words += ["and", rng.choice(FILLER[9:]), rng.choice(NOUNS)]
        rows.append((label, " ".join(words)))
    return rows


def held_out(n: int, train: list[tuple[int, str]], *, seed: int = 1) -> list[tuple[int, str]]:
    """sentences(n, seed=seed) with each sentence that is also in ``train`` replaced by the next fresh one of the
    same label (from seed + 100): a test split that repeats training sentences fails the run's
    checks.train_test_overlap, and real SST-2 has no such sentence."""
    seen = {text for _, text in train}
    spare = (row for row in sentences(100 * n + 100, seed=seed + 100) if row[1] not in seen)
    rows = []
    for label, text in sentences(n, seed=seed):
        if text in seen:
            label, text = next(row for row in spare if row[0] == label)
        rows.append((label, text))
    return rows


def write_tsv(path: Path, rows: list[tuple[int, str]], *, header: tuple[str, str] = ("label", "sentence")) -> Path:
    """A GLUE-style TSV: a header line, then one row per example, columns in ``header``'s order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    label_first = header[0] == "label"
    lines = ["\t".join(header)]
    for label, text in rows:
        lines.append(f"{label}\t{text}" if label_first else f"{text}\t{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_sst2(root: Path, n_train: int = 200, n_dev: int = 60, *, header=("label", "sentence")) -> Path:
    """``root/train.tsv`` and ``root/dev.tsv`` in the SST-2 layout; returns root."""
    train = sentences(n_train, seed=0)
    write_tsv(root / "train.tsv", train, header=header)
    write_tsv(root / "dev.tsv", held_out(n_dev, train), header=header)
    return root


def tiny_bert(folder: Path, corpus: Path, *, hidden: int = 32, layers: int = 2, heads: int = 2,
              vocab_size: int = 400, seed: int = 0) -> Path:
    """A tiny randomly initialised BERT in a local folder as ``from_pretrained`` reads it: a WordPiece
    tokenizer trained on the sentences of ``corpus`` (a TSV with a header), ``config.json`` and
    ``model.safetensors``. Returns ``folder``."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    lines = corpus.read_text().splitlines()
    column = lines[0].split("\t").index("sentence") if "sentence" in lines[0].split("\t") else 1
    texts = [line.split("\t")[column] for line in lines[1:] if line]
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1)
    # the trainer breaks ties between equally frequent merges differently from one process to the next, so
    # its intermediate sub-words (and every id) vary: keep the deterministic part of what it learned — the
    # whole words of the corpus and the single characters — in a fixed order, specials first
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = {w for text in texts for w in text.lower().split()}
    tokens = specials + sorted(t for t in trainer.get_vocab() if t not in specials and
                               (t in words or len(t.removeprefix("##")) == 1))
    trained = BertWordPieceTokenizer(vocab={t: i for i, t in enumerate(tokens)}, lowercase=True)
    tokenizer = BertTokenizerFast(tokenizer_object=trained._tokenizer, do_lower_case=True, unk_token="[UNK]",
                                  sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    tokenizer.save_pretrained(str(folder))  # tokenizer.json + tokenizer_config.json
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=128,
                        num_labels=2)
    BertForSequenceClassification(config).save_pretrained(str(folder), safe_serialization=True)
    return folder
