"""Fuzz the configuration space for long and count what happens (issue 27 item 1's long mode).

Draws ``--examples`` configs with the strategy of tests/test_config_space.py (an experiment or none, options per
group, valid and invalid values of the declared options, missing interpolations, unknown and deleted keys), composes
and validates each in-process as ``robprune run`` does before any job, and does not stop at a failure: every
traceback, multi-line refusal and accepted invalid value is counted and listed with its overrides. Then, with
``--product``, every experiment × every option of prune, finetune, train and eval. Prints a table, writes JSON.
A Hydra composition takes ~0.25 s on 2 cores, so 10,000 examples take ~45-60 min on one core.

    python scripts/fuzz_config.py --examples 10000 --product --out outputs/fuzz/config_long.json
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.config_space import METHOD_GROUPS, experiments, one_line, options, outcome  # noqa: E402
from tests.test_config_space import configs  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--product", action="store_true", help="also every experiment x every prune/finetune/train/eval option")
    p.add_argument("--out", type=Path, default=Path("outputs/fuzz/config_long.json"))
    args = p.parse_args()
    counts, failures = collections.Counter(), collections.defaultdict(list)
    started = time.perf_counter()

    def record(overrides: list[str], invalid: bool) -> None:
        try:
            result = outcome(overrides)
        except Exception as err:  # noqa: BLE001  the thing looked for: a traceback
            counts["traceback"] += 1
            failures[f"traceback {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"].append(overrides)
            return
        if result.accepted:
            counts["accepted"] += 1
            counts["accepted with notes"] += bool(result.notes)
        else:
            counts["refused (data root)" if result.needs_data else "refused"] += 1
            if not one_line(result.message):
                counts["refusal not one line"] += 1
                failures[f"not one line: {result.message[:160]}"].append(overrides)
        if invalid:
            counts["invalid value drawn"] += 1
            if result.accepted:
                counts["invalid value accepted (silent)"] += 1
                failures["invalid value accepted"].append(overrides)

    @seed(args.seed)
    @settings(max_examples=args.examples, deadline=None, database=None, phases=(Phase.generate,),
              suppress_health_check=list(HealthCheck))
    @given(configs())
    def drawn(case):
        overrides, invalid = case
        counts["drawn configs"] += 1
        record(overrides, invalid)

    drawn()
    drawn_s = time.perf_counter() - started
    if args.product:
        for experiment in experiments():
            for group in METHOD_GROUPS:
                for option in options(group):
                    counts["product compositions"] += 1
                    record([f"+experiment={experiment}", f"{group}={option}", "data.download=false"], False)
    table = Table(title=f"config space fuzzed: {args.examples} drawn (seed {args.seed}) in {drawn_s / 60:.1f} min"
                        f"{', + the experiment x option product' if args.product else ''}; 0 is the goal for the last rows")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    for key in ("drawn configs", "product compositions", "accepted", "accepted with notes", "refused",
                "refused (data root)", "invalid value drawn", "traceback", "refusal not one line",
                "invalid value accepted (silent)"):
        table.add_row(key, str(counts.get(key, 0)))
    Console().print(table)
    for kind, cases in failures.items():
        Console().print(f"[red]{len(cases)}x {kind}[/red]\n    e.g. {cases[0]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "counts": dict(counts),
                                    "seconds": round(time.perf_counter() - started, 1),
                                    "failures": {k: v[:5] for k, v in failures.items()}}, indent=2))
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
