"""What counter-fitting and the antonym filter do to TextFooler's word vectors, measured.

  simlex     Spearman ρ between SimLex-999's similarity scores and the cosine of the two words, over the
             pairs whose words are both in the counter-fitting vocabulary (how many is reported): GloVe
             6B 50-d restricted to that vocabulary (before) against ``counter-fitted-glove-50d`` (after).
  held-out   the unordered PPDB synonym pairs (both words in the vocabulary, not an antonym pair) are split
             by a seeded permutation; ``--held-out`` of them are kept aside and GloVe is counter-fitted on
             the rest (all antonyms). Over every word of a held-out pair: the share of its 10 nearest
             neighbours that are its held-out synonyms (precision@10), and the share of its held-out
             synonyms found among those 10 (recall@10), before and after.
  antonyms   TextFooler's candidates (50 nearest neighbours with cosine >= 0.5, letters only, stop words
             left alone) for every word of the SST-2 dev sentences, from both tables; how many the WordNet
             antonym filter removes when it compares the two words' own lemmas (before) and their senses
             (after: any lemma of any synset of one against any lemma of any synset of the other).

Prints a table and writes JSON (``--out``). Cosines are float32 BLAS products: the last digits differ
from one CPU to another, so a neighbour at a tie may too.

    python scripts/eval_counterfit.py --simlex path/to/SimLex-999.txt --sst2 path/to/sst2/dev.tsv
"""
from __future__ import annotations

import argparse
import subprocess
import time
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.stats import spearmanr

from robprune.attacks.text import Sentence, is_stop_word, load_vectors
from robprune.attacks.text.antonyms import load_antonyms
from robprune.attacks.text.counterfit import (COUNTER_FITTED, CounterFitting, code_digest, counter_fit, normalise,
                                              pair_rows, read_constraints, restrict)
from robprune.attacks.text.vectors import GLOVE
from robprune.io import atomic_write_json

TEXTFOOLER = dict(k=50, min_cos=0.5)  # the recipe's neighbours: conf/attack/textfooler.yaml


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--simlex", type=Path, required=True, help="SimLex-999.txt (tab-separated, header, column SimLex999)")
    p.add_argument("--sst2", type=Path, required=True, help="SST-2 dev.tsv (header; columns label and sentence/content)")
    p.add_argument("--held-out", type=float, default=0.1, help="fraction of the synonym pairs kept aside")
    p.add_argument("--k", type=int, default=10, help="neighbours compared with the held-out synonyms")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    p.add_argument("--out", type=Path, default=Path("outputs/eval/counterfit.json"))
    return p.parse_args()


def simlex(path: Path, tables: dict[str, tuple[dict, np.ndarray]]) -> dict:
    """Spearman ρ of SimLex-999 scores against cosines, per table, over the pairs every table covers."""
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    header = path.read_text(encoding="utf-8").splitlines()[0].split("\t")
    col = header.index("SimLex999")
    pairs = [(r[0].lower(), r[1].lower(), float(r[col])) for r in rows]
    covered = [(a, b, s) for a, b, s in pairs if all(a in idx and b in idx for idx, _ in tables.values())]
    out = {"pairs": len(pairs), "covered": len(covered)}
    for name, (idx, unit) in tables.items():
        cos = [float(unit[idx[a]] @ unit[idx[b]]) for a, b, _ in covered]
        out[name] = float(spearmanr([s for _, _, s in covered], cos).correlation)
    return out


def split_synonyms(words: list[str], constraints, fraction: float, seed: int) -> tuple[list, list]:
    """(training, held-out) unordered synonym pairs of words in the table, antonym pairs left out."""
    known = set(words)
    antonyms = {tuple(sorted(p)) for p in constraints.antonyms}
    pairs = sorted({tuple(sorted(p)) for p in constraints.synonyms
                    if p[0] != p[1] and p[0] in known and p[1] in known} - antonyms)
    order = np.random.default_rng(seed).permutation(len(pairs))
    cut = int(round(fraction * len(pairs)))
    return [pairs[i] for i in order[cut:]], [pairs[i] for i in order[:cut]]


def neighbour_scores(unit: np.ndarray, index: dict, held: list, k: int) -> dict:
    """precision@k and recall@k of the held-out synonyms among each held-out word's k nearest neighbours."""
    synonyms: dict[str, set[str]] = {}
    for a, b in held:
        synonyms.setdefault(a, set()).add(b)
        synonyms.setdefault(b, set()).add(a)
    queries = sorted(synonyms)
    rows = np.array([index[w] for w in queries])
    words = list(index)
    hits = []
    for start in range(0, len(rows), 2048):
        block = rows[start:start + 2048]
        cos = unit[block] @ unit.T
        cos[np.arange(len(block)), block] = -np.inf  # never the word itself
        top = np.argpartition(-cos, k, axis=1)[:, :k]
        hits += [len({words[j] for j in top[i]} & synonyms[queries[start + i]]) for i in range(len(block))]
    hits = np.array(hits)
    sizes = np.array([len(synonyms[w]) for w in queries])
    return {"words": len(queries), f"precision@{k}": float((hits / k).mean()), f"recall@{k}": float((hits / sizes).mean()),
            "hit_rate": float((hits > 0).mean())}


def held_out(words, table, constraints, args) -> dict:
    train, held = split_synonyms(words, constraints, args.held_out, args.seed)
    index = {w: i for i, w in enumerate(words)}
    started = time.perf_counter()
    fitted, stats = counter_fit(table, pair_rows(words, train), pair_rows(words, constraints.antonyms), CounterFitting())
    out = {"train_pairs": len(train), "held_out_pairs": len(held), "fit_seconds": time.perf_counter() - started,
           "fit": stats}
    for name, unit in (("before", normalise(table)), ("after", fitted)):
        out[name] = neighbour_scores(unit, index, held, args.k)
    return out


def read_sentences(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    col = next(i for i, h in enumerate(header) if h in ("sentence", "content", "text"))
    return [line.split("\t")[col] for line in lines[1:] if line.strip()]


def antonym_filter(sentences: list[str]) -> dict:
    """Per table: TextFooler's candidate (word, candidate) occurrences over the sentences, and how many the
    lemma-level and the sense-level antonym check remove; the sense-level check's commonest new refusals."""
    wordnet = load_antonyms("wordnet")
    slots = []
    for text in sentences:
        sentence = Sentence.parse(text)
        slots += [sentence.words[i].lower() for i in sentence.attackable() if not is_stop_word(sentence.words[i])]
    out = {"sentences": len(sentences), "words": len(slots)}
    for name in (GLOVE, COUNTER_FITTED):
        vectors = load_vectors(name)
        unique = sorted(set(slots))
        found = {}
        for start in range(0, len(unique), 256):  # (256, V) cosines at a time
            chunk = unique[start:start + 256]
            found.update(zip(chunk, vectors.neighbours_many(chunk, TEXTFOOLER["k"], TEXTFOOLER["min_cos"], alphabetic=True)))
        counts = Counter(slots)
        row = {"candidates": 0, "lemma_level": 0, "sense_level": 0}
        new = Counter()
        for word, nbrs in found.items():
            for cand, _ in nbrs:
                lemma, sense = wordnet.lemma_antonyms(word, cand), wordnet.are_antonyms(word, cand)
                row["candidates"] += counts[word]
                row["lemma_level"] += counts[word] * lemma
                row["sense_level"] += counts[word] * sense
                if sense and not lemma:
                    new[f"{word} -> {cand}"] += counts[word]
        row["new_refusals"] = new.most_common(12)
        out[name] = row
    return out


def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return f"{commit} (counterfit.py sha256 {code_digest()[:12]})"


def main() -> None:
    args = parse_args()
    console = Console()
    constraints = read_constraints()
    glove = load_vectors(GLOVE)
    words, table = restrict(glove.words, glove.matrix.numpy(), constraints.vocabulary)
    fitted = load_vectors(COUNTER_FITTED)
    tables = {"before": ({w: i for i, w in enumerate(words)}, normalise(table)),
              "after": (fitted.index, fitted.matrix.numpy())}
    result = {"date": date.today().isoformat(), "code": code_version(), "vocabulary": len(words),
              "simlex": simlex(args.simlex, tables), "held_out": held_out(words, table, constraints, args),
              "antonyms": antonym_filter(read_sentences(args.sst2))}
    report(console, result, args)
    atomic_write_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, **result})
    console.print(f"wrote {args.out}")


def report(console: Console, r: dict, args) -> None:
    k = args.k
    table = Table(title=f"Counter-fitting GloVe 6B 50-d ({r['vocabulary']} words), {r['code']}")
    for col in ("measure", "before", "after", "ratio"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    s, h = r["simlex"], r["held_out"]
    rows = [(f"SimLex-999 Spearman ρ ({s['covered']}/{s['pairs']} pairs)", s["before"], s["after"]),
            (f"held-out precision@{k} ({h['before']['words']} words, {h['held_out_pairs']} pairs)",
             h["before"][f"precision@{k}"], h["after"][f"precision@{k}"]),
            (f"held-out recall@{k}", h["before"][f"recall@{k}"], h["after"][f"recall@{k}"]),
            ("held-out words with a synonym in their top 10", h["before"]["hit_rate"], h["after"]["hit_rate"])]
    for name, before, after in rows:
        table.add_row(name, f"{before:.3f}", f"{after:.3f}", f"{after / before:.2f}x" if before else "-")
    a = r["antonyms"]
    for name in (GLOVE, COUNTER_FITTED):
        row = a[name]
        table.add_row(f"{name}: candidates removed of {row['candidates']} (lemmas -> senses)", str(row["lemma_level"]),
                      str(row["sense_level"]), f"{row['sense_level'] / max(row['lemma_level'], 1):.2f}x")
    console.print(table)
    for name in (GLOVE, COUNTER_FITTED):
        console.print(f"{name}: commonest refusals only the sense-level check makes: "
                      + ", ".join(f"{pair} ({n})" for pair, n in a[name]["new_refusals"]))


if __name__ == "__main__":
    main()
