"""Robustness of a text classifier under word- and character-level attacks (docs/methods/kr.md#step-3):
clean accuracy Acc on the whole test set, and per attack the accuracy under attack Aua (examples still
correct after the attack / all examples of its subset), the attack success rate Asr (successes /
examples correct before the attack), the average number of queries and the fraction of words changed.

Structure mirrors :mod:`robprune.evaluate.adversarial`: each attack with ``n_examples.<name>`` set sees
the first n texts of one seeded permutation, so subsets nest and ``robust_acc/worst`` (robust only
when every attack failed on the text) is computed on the common prefix. Every example of a subset is
given to the attack; misclassified ones come back "skipped" after the clean query, as in TextAttack.

Persistence (``work`` given): finished examples are appended to ``work/text_attacks/<name>.jsonl``
as they finish, each line sealed with its content's sha256, so a rerun after a kill resumes (a torn
last line is dropped; a damaged line sets the file aside, logged, and its example is attacked
again); every attacked example is written to ``work/adversarial.jsonl`` at the end, atomically.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import math
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from robprune.attacks.common import check_min, preserved_modes
from robprune.attacks.text import TextAttackResult, Victim, count_changed
from robprune.attacks.text.counterfit import COUNTER_FITTED, CounterFitting
from robprune.attacks.text.pos import tagger_package
from robprune.config import instantiate, to_container
from robprune.data.tensors import seeded_indices
from robprune.errors import DataError
from robprune.evaluate import checks
from robprune.evaluate.adversarial import _subset_size
from robprune.io import SEAL, as_json, atomic_write_text, json_digest, set_aside
from robprune.registry import ATTACKS, target_entry
from robprune.ui import track

RESULTS_DIR = "text_attacks"  # work/<RESULTS_DIR>/<name>.jsonl: finished examples, for resuming
ADVERSARIAL_FILE = "adversarial.jsonl"  # work/<ADVERSARIAL_FILE>: every attacked example of every attack

log = logging.getLogger("robprune")
Rows = list[tuple[int, TextAttackResult]]  # (index in the test set, result), in subset order


def evaluate_text_robustness(model, texts: list[str], y: torch.Tensor, tokenizer, eval_cfg, *, max_length: int,
                             device: torch.device | str, seed: int, progress: bool = False,
                             work: Path | None = None) -> dict[str, Any]:
    """Clean accuracy and accuracy under ``eval_cfg.attacks`` of ``model`` (already on ``device``).

    model: ``forward(ids (B, L) int64 right-padded with tokenizer.pad_token_id) -> logits (B, C)``;
    texts: N sentences; y: (N,) int64 labels; eval_cfg: a ``conf/eval`` node (attacks, n_examples,
    batch_size); max_length: tokens per text. Returns a flat dict of fractions in [0, 1] (see
    :func:`text_metrics`) plus ``text_constraints`` (:func:`effective_constraints` per attack) and ``checks``
    (``text_attack_flips``, ``text_attack_budget``). Deterministic
    for a given seed (each example's attack seed derives from (seed, index)). The model runs in eval
    mode; its modes are restored afterwards.
    """
    texts, y = list(texts), torch.as_tensor(y).long().cpu()
    if not texts or len(texts) != y.numel():
        raise DataError(f"text evaluation: {len(texts)} texts and {y.numel()} labels; need as many, at least one")
    batch_size = check_min(int(eval_cfg.get("batch_size", 64)), "eval.batch_size", 1)
    attacks_cfg = eval_cfg.get("attacks") or {}
    attacks = {name: build_attack(attacks_cfg[name], f"eval.attacks.{name}") for name in attacks_cfg}
    perm = seeded_indices(len(texts), None, seed)
    with preserved_modes(model, eval_mode=True):
        victim = Victim(model, tokenizer, max_length=max_length, batch_size=batch_size, device=device)
        predicted = victim.predict(texts).argmax(1).cpu()
        correct = predicted == y
        results: dict[str, Rows] = {}
        for name, attack in attacks.items():
            idx = perm[:_subset_size(eval_cfg, name, len(texts))].tolist()
            store = None if work is None else ResultStore(Path(work) / RESULTS_DIR / f"{name}.jsonl",
                                                          _tag(name, attacks_cfg[name], seed, max_length))
            results[name] = run_attack(name, attack, victim, texts, y, idx, seed, progress, store)
        parts = [checks.prediction_collapse_check(predicted, y)]
        for name, rows in results.items():
            parts.append(flips_check(victim, name, rows, correct))
            parts.append(budget_check(name, rows, _param(attacks[name], "query_budget"),
                                      _param(attacks[name], "max_words_changed")))
    metrics = text_metrics(correct, results)
    metrics["text_constraints"] = {name: effective_constraints(attack) for name, attack in attacks.items()}
    metrics["checks"] = checks.finish(parts)
    if work is not None:
        write_adversarial(Path(work) / ADVERSARIAL_FILE, results)
    return metrics


def build_attack(cfg, key: str):
    """The configured attack (a partial) after its ``check_params`` accepted the bound parameters."""
    attack = instantiate(cfg, key)
    check = getattr(getattr(attack, "func", attack), "check_params", None)
    if check is not None:
        check(where=key, **getattr(attack, "keywords", {}))
    return attack


def _param(attack, key: str):
    """The value the attack runs with for ``key``: the config's, else the function's default (None if neither)."""
    keywords = getattr(attack, "keywords", {})
    if key in keywords:
        return keywords[key]
    param = inspect.signature(getattr(attack, "func", attack)).parameters.get(key)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def effective_constraints(attack) -> dict[str, Any]:
    """What a candidate of ``attack`` had to pass, as it ran (its bound parameters over its declared
    defaults): ``pos_match`` and the ``pos_tagger`` package (``name==version``, null when off), ``antonyms``,
    the ``encoder`` with ``min_similarity``, ``similarity_metric`` and ``window`` (null: whole texts; all four
    null when no encoder check runs), ``vectors`` (null for an attack that takes none) and, for the
    counter-fitted vectors, their ``counter_fitting`` hyperparameters (null otherwise)."""
    get = functools.partial(_param, attack)
    pos_match = bool(get("pos_match"))
    encoder = get("encoder") if get("min_similarity") is not None else None
    return {"pos_match": pos_match, "pos_tagger": tagger_package() if pos_match else None,
            "antonyms": get("antonyms"), "encoder": encoder,
            **{key: get(key) if encoder is not None else None for key in ("min_similarity", "similarity_metric", "window")},
            "vectors": get("vectors"),
            "counter_fitting": (asdict(CounterFitting(**dict(get("counter_fitting") or {})))
                                if get("vectors") == COUNTER_FITTED else None)}


def example_seed(seed: int, index: int) -> int:
    """The attack seed of test example ``index``: independent of the subset and of resuming."""
    return int(hashlib.sha256(f"{int(seed)}/{int(index)}".encode()).hexdigest()[:8], 16)


def run_attack(name: str, attack, victim: Victim, texts: list[str], y: torch.Tensor, idx: list[int], seed: int,
               progress: bool, store: "ResultStore | None") -> Rows:
    """attack on texts[idx] in order (results found in ``store`` are reused), with a progress bar counting
    succeeded / failed / skipped as TextAttack does."""
    done = store.load(texts, y, set(idx)) if store is not None else {}
    counts: Counter = Counter()
    status = lambda: f"[succeeded {counts['succeeded']} / failed {counts['failed']} / skipped {counts['skipped']}]"  # noqa: E731
    rows: Rows = []
    for index in track(idx, f"eval {name}", enabled=progress, status=status):
        result = done.get(index)
        if result is None:
            result = attack(victim, texts[index], int(y[index]), seed=example_seed(seed, index))
            if store is not None:
                store.append(index, result)
        counts[result.status] += 1
        rows.append((index, result))
    return rows


def text_metrics(correct: torch.Tensor, results: dict[str, Rows]) -> dict[str, Any]:
    """``clean_acc``; per attack ``text_attack/<name>/{aua,asr,avg_queries,words_changed,succeeded,failed,
    skipped}``, ``robust_acc/<name>`` (= aua), ``clean_acc/<name>``, ``n_eval/<name>``; and
    ``robust_acc/worst``, ``n_eval/worst`` over the common prefix. Robust = correct on the clean text
    and the attack failed. Fractions in [0, 1]; NaN where undefined (no attacked or no successful text)."""
    metrics: dict[str, Any] = {"clean_acc": _mean(correct.float().tolist())}
    robust: dict[str, list[bool]] = {}
    for name, rows in results.items():
        clean = [bool(correct[i]) for i, _ in rows]
        robust[name] = [c and r.status == "failed" for c, (_, r) in zip(clean, rows)]
        counts = Counter(r.status for _, r in rows)
        attacked = [r for _, r in rows if r.status != "skipped"]
        prefix = f"text_attack/{name}"
        metrics.update({
            f"{prefix}/aua": _mean(robust[name]),
            f"{prefix}/asr": counts["succeeded"] / len(attacked) if attacked else math.nan,
            f"{prefix}/avg_queries": _mean([r.queries for r in attacked]),
            f"{prefix}/words_changed": _mean([r.words_changed for r in attacked if r.status == "succeeded"]),
            **{f"{prefix}/{s}": counts[s] for s in ("succeeded", "failed", "skipped")},
            f"robust_acc/{name}": _mean(robust[name]), f"clean_acc/{name}": _mean(clean), f"n_eval/{name}": len(rows)})
    if robust:
        m = min(len(flags) for flags in robust.values())
        metrics["robust_acc/worst"] = _mean([all(flags[j] for flags in robust.values()) for j in range(m)])
        metrics["n_eval/worst"] = m
    return metrics


def _mean(values: list) -> float:
    return float(sum(values)) / len(values) if values else math.nan


def flips_check(victim: Victim, name: str, rows: Rows, correct: torch.Tensor):
    """Replay every attacked text in a fresh batch (a new Victim, so other batch neighbours and padding):
    a "succeeded" one must be misclassified, a "failed" one still correct, and "skipped" must agree with
    the evaluation's clean prediction (correct: (N,) bool per test index)."""
    fresh = Victim(victim.model, victim.tokenizer, max_length=victim.max_length, batch_size=victim.batch_size,
                   device=victim.device)
    attacked = [(i, r) for i, r in rows if r.status != "skipped"]
    preds = fresh.predict([r.perturbed for _, r in attacked]).argmax(1).tolist() if attacked else []
    problems = []
    for (i, r), pred in zip(attacked, preds):
        if (r.status == "succeeded") == (pred == r.label):
            problems.append(f"test text {i} is {r.status!r} but the model predicts {pred} (label {r.label}) "
                            f"on {r.perturbed[:80]!r}")
    for i, r in rows:
        if (r.status == "skipped") == bool(correct[i]):
            problems.append(f"test text {i}: the attack's clean prediction {r.pred_before} (label {r.label}, "
                            f"{r.status}) disagrees with the evaluation's")
    return checks.text_flips_check(name, problems, len(attacked))


def budget_check(name: str, rows: Rows, query_budget: int | None, max_words_changed: float | None):
    """Most queries any example spent, and the largest fraction of words changed, recounted from the texts."""
    max_queries = max((r.queries for _, r in rows), default=0)
    max_words = max((max(r.words_changed, count_changed(r.original, r.perturbed) / r.n_words if r.n_words else 0.0)
                     for _, r in rows), default=0.0)
    return checks.text_budget_check(name, max_queries, query_budget, max_words, max_words_changed)


def _tag(name: str, cfg, seed: int, max_length: int) -> str:
    """What a saved example was attacked with: the attack's resolved config, the seed and max_length."""
    blob = json.dumps({"attack": name, "config": to_container(cfg), "seed": int(seed), "max_length": int(max_length)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ResultStore:
    """``<work>/text_attacks/<name>.jsonl``: one finished example per line, ``{"tag", "index", **result,
    "sha256"}``, each line sealed with the digest of the rest (robprune.io.json_digest)."""

    def __init__(self, path: Path, tag: str):
        self.path, self.tag = Path(path), tag

    def load(self, texts: list[str], y: torch.Tensor, wanted: set[int]) -> dict[int, TextAttackResult]:
        """Saved results for indices in ``wanted`` made with the same tag, text and label; the file is
        rewritten with only those before new lines are appended. A torn last line (killed mid-write) is
        dropped; any other line that fails its seal means damage: the file is set aside as
        ``*.corrupt-<time>`` (logged once) and those examples are attacked again."""
        if not self.path.is_file():
            return {}
        lines = self.path.read_bytes().decode("utf-8", errors="replace").split("\n")  # bad bytes fail their line's seal
        valid: dict[int, TextAttackResult] = {}
        damaged = 0
        for n, line in enumerate(lines):
            record = _unseal_line(line)
            if record is None:
                damaged += bool(line) and n < len(lines) - 1  # the last piece, without its "\n", is a torn write
                continue
            index, result = record["index"], record["result"]
            if (record["tag"] == self.tag and index in wanted
                    and result.original == texts[index] and result.label == int(y[index])):
                valid[index] = result
        if damaged:
            log.warning("saved text-attack results %s: %d damaged line(s); moved to %s, attacking those examples again",
                        self.path, damaged, set_aside(self.path).name)
        atomic_write_text(self.path, "".join(self._line(i, r) for i, r in valid.items()))
        return valid

    def append(self, index: int, result: TextAttackResult) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(self._line(index, result))
            fh.flush()
            os.fsync(fh.fileno())

    def _line(self, index: int, result: TextAttackResult) -> str:
        record = as_json({"tag": self.tag, "index": index, **result.to_json()})
        return json.dumps({**record, SEAL: json_digest(record)}, ensure_ascii=False) + "\n"


def _unseal_line(line: str) -> dict | None:
    """{"tag", "index", "result"} of a sealed line, or None when it is not one (torn, damaged or unsealed)."""
    try:
        record = json.loads(line)
        seal = record.pop(SEAL, None) if isinstance(record, dict) else None
        if seal is None or seal != json_digest(record) or not isinstance(record.get("index"), int):
            return None
        return {"tag": record.get("tag"), "index": record["index"], "result": TextAttackResult.from_json(record)}
    except (json.JSONDecodeError, DataError, AttributeError, TypeError, KeyError, ValueError):
        return None


def write_adversarial(path: Path, results: dict[str, Rows]) -> None:
    """One JSON line per attacked example: attack, index (in the test set) and the result's fields."""
    lines = [json.dumps({"attack": name, "index": i, **r.to_json()}, ensure_ascii=False) + "\n"
             for name, rows in results.items() for i, r in rows]
    atomic_write_text(path, "".join(lines))


# --- before any work: the attacks' external resources ---------------------------------------------------

RESOURCE_KEYS = ("vectors", "encoder", "mlm", "antonyms")  # attack parameters naming a file or folder


def is_text_attack(node) -> bool:
    """Whether an eval.attacks node builds a registered text attack (robprune.registry.ATTACKS)."""
    entry = target_entry(ATTACKS, node.get("_target_"))
    return entry is not None and entry.meta.get("modality") == "text"


def check_inputs(eval_cfg) -> None:
    """Load every word-vector table, sentence encoder, WordNet and tagger the text attacks of ``eval_cfg``
    name (they are cached for the evaluation), so a malformed vectors file or a missing folder is one
    line before training. No-op for an eval config without text attacks."""
    from robprune.attacks.text.encoder import load_encoder
    from robprune.attacks.text.vectors import load_vectors

    for name in (eval_cfg.get("attacks") or {}):
        node = eval_cfg.attacks[name]
        if not is_text_attack(node):
            continue
        if node.get("vectors") is not None:
            load_vectors(str(node.vectors), node.get("vocab_size"), node.get("counter_fitting"))
        if node.get("encoder") is not None:
            load_encoder(str(node.encoder))
        if node.get("antonyms") is not None:
            from robprune.attacks.text.antonyms import load_antonyms

            load_antonyms(str(node.antonyms))
        if node.get("pos_match"):
            from robprune.attacks.text.pos import load_tagger

            load_tagger()


def input_stats(eval_cfg) -> list:
    """[path, size, mtime_ns] of the local files the text attacks read (a user's vectors file, encoder or
    masked-LM folder; the packaged GloVe and MiniLM are keyed by their packages' versions), for the eval
    stage's key; the counter-fitted vectors add [name, sha256 of the constraint files robprune ships]."""
    from robprune.attacks.text.counterfit import constraints_digest
    from robprune.corruptions.files import file_stats

    paths: list[Path] = []
    packaged: list[list] = []
    for name in (eval_cfg.get("attacks") or {}):
        node = eval_cfg.attacks[name]
        if is_text_attack(node) and node.get("vectors") == COUNTER_FITTED and not packaged:
            packaged.append([COUNTER_FITTED, constraints_digest()])
        for key in RESOURCE_KEYS:
            value = node.get(key) if is_text_attack(node) else None
            path = Path(str(value)).expanduser() if value is not None else None
            if path is not None and path.is_file():
                paths.append(path)
            elif path is not None and path.is_dir():
                paths += sorted(p for p in path.rglob("*") if p.is_file())
    return file_stats(paths) + packaged
