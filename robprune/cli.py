"""``robprune`` command: thin dispatch to Hydra (run), a re-evaluation (eval) or the report (table, plot).

Every user error ends as one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from robprune.errors import ConfigError, RobpruneError

log = logging.getLogger("robprune")
USAGE = """usage: robprune run [-m] [group=option ...] [key=value ...]
       robprune plan [group=option ...] [key=value ...]   (= robprune run --dry-run: checks, stage keys, what is cached)
       robprune eval <run dir | checkpoint dir | model.safetensors | weights file> [group=option ...] [key=value ...]
       robprune eval model=robustbench model.name=NAME dataset=cifar10 [key=value ...]   (any model.init, no path)
       robprune export <run dir | checkpoint dir | model.safetensors> --format onnx|torchscript [--out DIR] [--opset N] [--n-check N] [key=value ...]
       robprune table <results dir> [--rows KEY ...] [--cols METRIC ...] [--out DIR]
       robprune table +table=NAME <results dir> [--out DIR]   (layout conf/table/NAME.yaml, e.g. adverfine)
       robprune plot <results dir> --x KEY --y METRIC [METRIC ...] [--hue KEY ...] [--out DIR]
       robprune plot <results dir> --pareto macs|latency|storage|params --y METRIC [--hue KEY ...]
       robprune cache list [--stage NAME] | verify | clean [--older-than 30d] [--dry-run]   [--cache-dir DIR]"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]
    command, rest = argv[0], argv[1:]
    commands = {"run": run_command, "plan": plan_command, "eval": eval_command, "export": export_command, "table": table_command,
                "plot": plot_command, "cache": cache_command}
    if command in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if command not in commands:
        print(f"ConfigError: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return commands[command](rest) or 0
    except RobpruneError as err:
        print(str(err), file=sys.stderr)
        return 2


def quote_splits(args: list[str]) -> list[str]:
    """``dataset.train_split=test[:8000]`` (the shell ate the quotes) -> ``dataset.train_split='test[:8000]'``,
    since Hydra's override grammar would read the brackets as a list."""
    return [re.sub(r"^([+~]?[\w.]*_split)=([^'\"].*\[.*)$", r"\1='\2'", a) for a in args]


def run_command(args: list[str]) -> int:
    if "--dry-run" in args:  # check the job and show its stage plan, run nothing (robprune.plan)
        return plan_command([a for a in args if a != "--dry-run"])
    from robprune.train.trainer import launched, serve, stop_serving

    where = launched()  # under torchrun: rank 0 runs the job, the other ranks train what it sends them
    if where and where[0] > 0:
        return serve()
    try:
        return _run(args)
    finally:
        stop_serving()


def _run(args: list[str]) -> int:
    from robprune.compose import check_overrides, overrides_of

    args = quote_splits(args)
    check_overrides(overrides_of(args))
    from robprune.app import hydra_main

    sys.argv = ["robprune", *args]
    try:
        hydra_main()
    except SystemExit as exit_:  # a job's user error exits 2 from inside Hydra; main() returns the code
        return int(exit_.code or 0)
    return 0


def plan_command(args: list[str]) -> int:
    from robprune.plan import plan_command as show

    show(quote_splits(args))
    return 0


def eval_command(args: list[str]) -> int:
    if not args or args[0].startswith("-"):
        raise ConfigError("robprune eval needs a run directory, checkpoint or weights file first, or model.init=...; "
                          "e.g. robprune eval outputs/runs/<run> eval=autoattack")
    from robprune.reeval import reevaluate

    if "=" in args[0]:  # no path: the overrides name the model (model.init=..., model=robustbench)
        reevaluate(None, quote_splits(args))
    else:
        reevaluate(Path(args[0]), quote_splits(args[1:]))
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line ConfigErrors (exit 2 through main) instead of a usage block."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}; see robprune --help")


def export_command(args: list[str]) -> int:
    from robprune.export import DEFAULT_N_CHECK, DEFAULT_OPSET, export_run

    parser = _OneLineParser(prog="robprune export", description="A saved model as one ONNX or TorchScript file, "
                            "checked against PyTorch on the run's test points (docs/export.md).")
    parser.add_argument("path", help="a run directory, a checkpoint directory or its model.safetensors")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the run's config, e.g. threads=2")
    parser.add_argument("--format", dest="fmt", default=None, help="onnx | torchscript")
    parser.add_argument("--out", default=None, help="a new folder for the file and export.json (default outputs/exports/<time>)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--n-check", type=int, default=DEFAULT_N_CHECK, help="seeded test points the file is checked on")
    parser.add_argument("--quiet", action="store_true", default=None)
    ns = parser.parse_intermixed_args(args)
    if ns.fmt is None:
        raise ConfigError("robprune export needs --format onnx or --format torchscript")
    export_run(Path(ns.path), ns.fmt, out=ns.out, opset=ns.opset, n_check=ns.n_check,
               overrides=quote_splits(ns.overrides), quiet=ns.quiet)
    return 0


def _layout_name(args: list[str]) -> tuple[str | None, list[str]]:
    """('adverfine', rest) for ``+table=adverfine`` (or ``table=adverfine``) anywhere in args."""
    names = [a.split("=", 1)[1] for a in args if re.match(r"^\+?table=", a)]
    if len(names) > 1 or (names and not names[0]):
        raise ConfigError("robprune table takes one +table=NAME (a layout in conf/table/, e.g. +table=adverfine)")
    return (names[0] if names else None), [a for a in args if not re.match(r"^\+?table=", a)]


def table_command(args: list[str]) -> int:
    layout, args = _layout_name(args)
    parser = argparse.ArgumentParser(prog="robprune table", description="Aggregate metrics.json files into a table.")
    parser.add_argument("root", help="a run directory or a sweep directory (searched recursively)")
    parser.add_argument("--rows", nargs="+", default=None, help="config keys forming the rows, e.g. prune.channel_ratio")
    parser.add_argument("--cols", nargs="+", default=None, help="metrics forming the columns, e.g. clean_acc robust_acc/pgd20")
    parser.add_argument("--out", default=None, help="where table.md and table.csv go (default: the results dir)")
    parser.add_argument("--quiet", action="store_true")
    ns = parser.parse_args(args)
    if layout is not None:
        if ns.rows or ns.cols:
            raise ConfigError(f"+table={layout} lays out rows and columns itself; drop --rows/--cols")
        from robprune.report.layout import layout_command

        layout_command(ns.root, layout, out=ns.out, quiet=ns.quiet)
        return 0
    from robprune.report import table_command as make

    make(ns.root, ns.rows, ns.cols, out=ns.out, quiet=ns.quiet)
    return 0


def plot_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="robprune plot", description="Mean ± std curves or a Pareto front from "
                                     "metrics.json files (PNG and SVG).")
    parser.add_argument("root", help="a run directory or a sweep directory (searched recursively)")
    parser.add_argument("--x", default=None, help="x axis: a metric or config key, e.g. sparsity or prune.sparsity")
    parser.add_argument("--y", nargs="+", required=True, help="metrics on the y axis, one figure each, e.g. robust_acc/autoattack")
    parser.add_argument("--hue", nargs="+", default=None, help="config keys whose values make separate curves, e.g. prune.method")
    parser.add_argument("--pareto", default=None, help="plot y against this cost metric with the Pareto front "
                        "(macs, latency, storage, params or any metric key) instead of --x")
    parser.add_argument("--out", default=None, help="where the figures go (default: the results dir)")
    parser.add_argument("--quiet", action="store_true")
    ns = parser.parse_args(args)
    from robprune.report.curves import plot_command as draw

    draw(ns.root, x=ns.x, ys=ns.y, hue=ns.hue, pareto=ns.pareto, out=ns.out, quiet=ns.quiet)
    return 0


def cache_command(args: list[str]) -> int:
    from robprune.cache_cli import cache_command as run_cache

    return run_cache(args)


if __name__ == "__main__":
    sys.exit(main())
