"""Accuracy under attack of pruned language models, pooled over seeds and compared sentence by sentence.

A 100-sentence Aua has a standard error of several points, so "method A keeps more than method B" needs
more than the per-seed means that ``robprune table`` prints. This script reads finished text runs (their
``config.yaml``, ``metrics.json`` and ``adversarial.jsonl``, where every attacked sentence's outcome is
recorded), groups them by pruning method and sparsity, and for each attack reports:

- Acc on the whole test split, the largest share of predictions in one class (a model that answers one
  class cannot be flipped on it: docs/concepts/checks.md#prediction-collapse), and Aua / Asr per seed, and pooled over the seeds (Aua = sentences the
  attack failed on / sentences attacked; Asr = successes / sentences correct before the attack);
- a paired comparison of every method with ``--reference`` (default ``kr_obs``) at the same sparsity:
  runs with the same seed attack the same sentences (the subset is drawn from ``seed``), so each sentence
  is robust (the attack failed) or not under both models; ``b`` counts sentences robust only under the
  reference, ``c`` only under the other method, and the two-sided exact McNemar test gives p;
- the same paired comparison of every pruned group with the dense runs (``prune=none``) of the same seeds.

    python scripts/kr_robustness.py outputs/kr_robustness --out outputs/kr_robustness/robustness.json

Numbers depend on the CPU's floating-point results in the last digits (a near-tie in the attack's search
can go the other way on another machine), so compare runs made on one machine.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from robprune.io import atomic_write_json

ATTACKS = ("textfooler", "textbugger")
DENSE = "none"  # prune.method of the dense runs


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="+", type=Path, help="finished text runs, or folders holding them (searched recursively)")
    p.add_argument("--reference", default="kr_obs", help="the method the others are compared with, sentence by sentence")
    p.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    return p.parse_args()


def read_runs(roots: list[Path]) -> list[dict]:
    """One record per run folder under the roots (a folder with config.yaml and metrics.json; hidden folders
    skipped): method, sparsity, N:M pattern, seed, Acc and per-attack outcomes {index: status}."""
    runs = []
    found = sorted({m.parent for root in roots for m in [*root.glob("metrics.json"), *root.rglob("*/metrics.json")]
                    if not any(part.startswith(".") for part in m.relative_to(root).parts)})
    for folder in found:
        metrics_file = folder / "metrics.json"
        if not (folder / "config.yaml").exists():
            continue
        cfg = OmegaConf.load(folder / "config.yaml")
        metrics = json.loads(metrics_file.read_text())
        outcomes: dict[str, dict[int, str]] = defaultdict(dict)
        predicted: dict[int, int] = {}
        adversarial = folder / "adversarial.jsonl"
        for line in adversarial.read_text().splitlines() if adversarial.exists() else []:
            row = json.loads(line)
            outcomes[row["attack"]][int(row["index"])] = row["status"]
            predicted[int(row["index"])] = int(row["pred_before"])
        share = metrics.get("checks", {}).get("majority_prediction_share")  # on the whole test split, where recorded
        if share is None and predicted:  # runs from before the check: on the attacked sentences
            share = max(Counter(predicted.values()).values()) / len(predicted)
        n_m = cfg.prune.get("n_m")
        runs.append({"dir": str(folder), "method": str(cfg.prune.method), "n_m": str(n_m) if n_m else None,
                     "sparsity": cfg.prune.get("sparsity"), "seed": int(cfg.seed),
                     "acc": float(metrics["clean_acc"]), "majority_share": share, "outcomes": dict(outcomes)})
    if not runs:
        raise SystemExit(f"no finished run (config.yaml + metrics.json) under {', '.join(map(str, roots))}")
    return runs


def rates(outcomes: dict[int, str]) -> tuple[int, int, int]:
    """(attacked, robust, succeeded): sentences attacked, the attack failed (still correct), it flipped."""
    statuses = list(outcomes.values())
    return len(statuses), statuses.count("failed"), statuses.count("succeeded")


def mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired(members: list[dict], partners: list[dict], attack: str, name: str) -> dict | None:
    """Sentence-by-sentence comparison of ``members`` with the ``partners`` run of the same seed (the same
    attacked sentences; nested subsets compare on the smaller): robust (the attack failed) under the
    partner only, under this run only, sentences compared, and p; None when no seed has a partner."""
    by_seed = {r["seed"]: r for r in partners}
    if not by_seed.keys() & {r["seed"] for r in members}:
        return None
    b = c = n = 0
    for run in members:
        other = by_seed.get(run["seed"])
        if other is None:
            continue
        mine, theirs = run["outcomes"].get(attack, {}), other["outcomes"].get(attack, {})
        for index in mine.keys() & theirs.keys():
            n += 1
            b += theirs[index] == "failed" and mine[index] != "failed"
            c += mine[index] == "failed" and theirs[index] != "failed"
    return {f"robust_only_{name}": b, "robust_only_this": c, "compared": n, "p": mcnemar(b, c)}


def summarise(runs: list[dict], reference: str) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["method"], run["sparsity"], run["n_m"])].append(run)
    dense = [run for key, members in groups.items() if key[0] == DENSE for run in members]
    rows = []
    order = lambda kv: (kv[0][1] or 0, kv[0][2] or "", kv[0][0] != reference, kv[0][0])  # noqa: E731
    for (method, sparsity, n_m), members in sorted(groups.items(), key=order):
        members.sort(key=lambda r: r["seed"])
        accs = [r["acc"] for r in members]
        row = {"method": method, "sparsity": sparsity, "n_m": n_m, "seeds": [r["seed"] for r in members],
               "majority_prediction_share": max((r["majority_share"] or 0.0) for r in members),
               "acc": accs, "acc_mean": statistics.fmean(accs), "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0}
        for attack in ATTACKS:
            per_seed = [rates(r["outcomes"].get(attack, {})) for r in members]
            n, robust, won = (sum(x[i] for x in per_seed) for i in range(3))
            row[attack] = {"aua_per_seed": [x[1] / x[0] if x[0] else None for x in per_seed],
                           "aua_pooled": robust / n if n else None, "attacked": n, "robust": robust,
                           "asr_pooled": won / (won + robust) if won + robust else None}
            if method not in (reference, DENSE):
                row[attack]["vs_reference"] = paired(members, groups.get((reference, sparsity, n_m), []), attack, "reference")
            if method != DENSE and dense:
                row[attack]["vs_dense"] = paired(members, dense, attack, "dense")
        rows.append(row)
    return rows


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def show(rows: list[dict], reference: str) -> None:
    table = Table(title=f"Accuracy under attack, pooled over seeds; paired against {reference} (same sentences per seed)")
    table.add_column("method")
    table.add_column("sparsity", justify="right")
    table.add_column("Acc % (mean ± std)", justify="right")
    table.add_column("one class %", justify="right")
    for attack in ATTACKS:
        table.add_column(f"{attack} Aua % per seed", justify="right")
        table.add_column(f"{attack} Aua % pooled (n)", justify="right")
        table.add_column(f"{attack} vs {reference}: b / c, p", justify="right")
        table.add_column(f"{attack} vs dense: b / c, p", justify="right")
    for row in rows:
        cells = [row["method"] + (f" {row['n_m']}" if row["n_m"] else ""),
                 "—" if row["sparsity"] is None else f"{row['sparsity']:g}",
                 f"{100 * row['acc_mean']:.2f} ± {100 * row['acc_std']:.2f}", pct(row["majority_prediction_share"])]
        for attack in ATTACKS:
            a = row[attack]
            cells += [" / ".join(pct(x) for x in a["aua_per_seed"]), f"{pct(a['aua_pooled'])} ({a['attacked']})"]
            for name in ("reference", "dense"):
                v = a.get(f"vs_{name}")
                cells.append("—" if v is None else f"{v[f'robust_only_{name}']} / {v['robust_only_this']}, {v['p']:.2g}")
        table.add_row(*cells)
    console = Console()
    if not console.is_terminal:  # a pipe or a file: one line per row
        console = Console(width=220)
    console.print(table)
    print("one class: the largest share of sentences predicted as one class (checks.majority_prediction_share, or on "
          "the attacked sentences for runs without it; above 98% the model answers one class and its Aua is that "
          "class's share). b: sentences robust under the reference (or the dense model) only; c: under this method "
          "only; p: exact McNemar, two-sided. "
          "Floating-point results differ slightly from one CPU to another.")


def main() -> None:
    args = parse_args()
    rows = summarise(read_runs(args.roots), args.reference)
    show(rows, args.reference)
    if args.out is not None:
        atomic_write_json(args.out, {"reference": args.reference, "rows": rows})


if __name__ == "__main__":
    main()
