"""robprune.report: tables from run directories (config.yaml + metrics.json) built on disk here."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from robprune.errors import ConfigError, DataError
from robprune.report import (
    bar_chart,
    default_rows,
    load_runs,
    make_table,
    pooled_keys,
    table_command,
    write_table,
)

RATIOS = (0.25, 0.5, 0.75)
SEEDS = (0, 1, 2)


def clean_acc(ratio: float, seed: int) -> float:
    return 0.95 - 0.2 * ratio + 0.011 * seed**2  # seed-dependent so the std is not trivially equal


def robust_acc(ratio: float, seed: int) -> float:
    return 0.6 - 0.3 * ratio - 0.007 * seed


def write_run(run_dir: Path, *, ratio: float, seed: int, method: str = "l1_filter", config: dict | None = None,
              **extra_metrics) -> Path:
    """A run directory as the runner leaves it: resolved config.yaml, metrics.json and a .hydra/ folder.
    ``config`` is merged over the config written (e.g. another dataset); ``extra_metrics`` over the metrics."""
    run_dir.mkdir(parents=True)
    config = OmegaConf.merge({
        "seed": seed,
        "output_dir": str(run_dir),  # differs per run but is no experimental factor
        "dataset": {"name": "digits", "root": "/data", "split_seed": seed},
        "prune": {"_target_": f"robprune.prune.{method}", "method": method, "channel_ratio": ratio,
                  "layers": ["conv1", "conv2"]},
        "train": {"epochs": 2, "lr": 0.1},
    }, config or {})
    OmegaConf.save(config, run_dir / "config.yaml")
    params = int(120_000 * (1 - ratio))
    metrics = {
        "clean_acc": clean_acc(ratio, seed),
        "robust_acc/pgd20": robust_acc(ratio, seed),
        "robust_acc/worst": robust_acc(ratio, seed) - 0.01,
        "params": params, "macs": params * 30, "sparsity": ratio, "latency_ms": 1.0 + 0.1 * seed,
        "size_bytes": params * 4, "seed": seed,
        "choices": {"dataset": "digits", "model": "small_cnn", "prune": method},
        "checks": {"gradient_masking": False}, "stages": {"train": {"seconds": 3.5}},
        **extra_metrics,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(config, run_dir / ".hydra" / "config.yaml")
    return run_dir


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """3 channel ratios x 3 seeds, laid out like a Hydra multirun directory."""
    root = tmp_path / "multirun"
    for i, (ratio, seed) in enumerate((r, s) for r in RATIOS for s in SEEDS):
        write_run(root / str(i), ratio=ratio, seed=seed)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_load_runs_one_row_per_run_with_flat_keys(sweep):
    df = load_runs(sweep)
    assert len(df) == 9  # the .hydra/ copies are not runs
    assert df.columns[0] == "run_dir"
    for key in ("clean_acc", "robust_acc/pgd20", "choices.prune", "checks.gradient_masking",
                "stages.train.seconds", "prune.channel_ratio", "dataset.name", "seed"):
        assert key in df.columns, key
    assert sorted(df["prune.channel_ratio"].unique()) == list(RATIOS)
    assert json.loads(df["prune.layers"].iloc[0]) == ["conv1", "conv2"]  # lists become JSON text
    assert set(df["choices.prune"]) == {"l1_filter"}


def test_numeric_table_matches_numpy(sweep):
    numeric = make_table(load_runs(sweep), ["prune.channel_ratio"], ["clean_acc", "robust_acc/pgd20"]).numeric
    assert numeric["prune.channel_ratio"].tolist() == list(RATIOS)
    assert numeric["n"].tolist() == [3, 3, 3]
    for i, ratio in enumerate(RATIOS):
        for metric, fn in (("clean_acc", clean_acc), ("robust_acc/pgd20", robust_acc)):
            values = np.array([fn(ratio, s) for s in SEEDS])
            assert numeric[metric].iloc[i] == pytest.approx(values.mean(), abs=1e-12)
            assert numeric[f"{metric}/std"].iloc[i] == pytest.approx(values.std(ddof=1), abs=1e-12)
            assert numeric[f"{metric}/n"].iloc[i] == 3


def test_display_is_percent_mean_plus_minus_std(sweep):
    display = make_table(load_runs(sweep), ["prune.channel_ratio"], ["clean_acc", "latency_ms"]).display
    assert list(display.columns) == ["prune.channel_ratio", "n", "clean_acc (%)", "latency_ms"]
    cells = display["clean_acc (%)"].tolist()
    assert all(re.fullmatch(r"\d{2}\.\d{2} ± \d\.\d{2}", c) for c in cells), cells
    values = np.array([clean_acc(0.25, s) for s in SEEDS]) * 100
    assert cells[0] == f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"
    assert display["latency_ms"].iloc[0] == "1.10 ± 0.10"  # not scaled: already in ms
    assert display["prune.channel_ratio"].tolist() == ["0.25", "0.5", "0.75"]


def test_default_cols_and_unit_formatting(sweep):
    table = make_table(load_runs(sweep), ["prune.channel_ratio"])
    assert list(table.display.columns) == [
        "prune.channel_ratio", "n", "clean_acc (%)", "robust_acc/pgd20 (%)", "robust_acc/worst (%)",
        "sparsity (%)", "params", "macs", "latency_ms"]
    first = table.display.iloc[0]
    assert first["sparsity (%)"] == "25.00 ± 0.00"
    assert first["params"] == "90.00K"  # identical across seeds, so no "± 0"
    assert first["macs"] == "2.70M"
    sized = make_table(load_runs(sweep), ["prune.channel_ratio"], ["size_bytes"]).display
    assert sized["size_bytes"].iloc[0] == "351.56 KiB"


def test_write_table_md_and_csv_round_trip(sweep, tmp_path):
    display, numeric = make_table(load_runs(sweep), ["prune.channel_ratio"])
    paths = write_table(display, numeric, tmp_path / "tables", name="ratio")
    assert paths == {"md": tmp_path / "tables" / "ratio.md", "csv": tmp_path / "tables" / "ratio.csv"}
    md = paths["md"].read_text()
    header = md.splitlines()[0]
    assert [h.strip() for h in header.strip("|").split("|")] == list(display.columns)
    assert f" {display['clean_acc (%)'].iloc[0]} |" in md and "| 0.5 " in md  # cells verbatim, not re-parsed
    back = pd.read_csv(paths["csv"])
    assert list(back.columns) == list(numeric.columns)
    pd.testing.assert_frame_equal(back, numeric, check_dtype=False, rtol=0, atol=1e-15)
    assert not list((tmp_path / "tables").glob(".*"))  # no temp files left behind


def test_default_rows_picks_the_swept_key(sweep):
    df = load_runs(sweep)
    # seed, dataset.split_seed and output_dir vary too, but are not experimental factors
    assert default_rows(df) == ["prune.channel_ratio"]
    assert pooled_keys(df, ["prune.channel_ratio"]) == []
    assert pooled_keys(df, ["choices.prune"]) == ["prune.channel_ratio"]


def test_default_rows_prefers_choices_and_drops_redundant_keys(sweep):
    for seed in SEEDS:
        write_run(sweep / f"random{seed}", ratio=0.5, seed=seed, method="random")
    rows = default_rows(load_runs(sweep))
    # prune.method and prune._target_ split the runs exactly like choices.prune, so they add nothing
    assert rows == ["choices.prune", "prune.channel_ratio"]
    numeric = make_table(load_runs(sweep), rows, ["clean_acc"]).numeric
    assert len(numeric) == 4 and numeric["n"].tolist() == [3, 3, 3, 3]


def test_unknown_key_lists_close_matches_first(sweep):
    df = load_runs(sweep)
    with pytest.raises(ConfigError) as err:
        make_table(df, ["prune.chanel_ratio"])
    message = str(err.value)
    assert message.startswith("ConfigError: rows: unknown key 'prune.chanel_ratio'; did you mean prune.channel_ratio?")
    with pytest.raises(ConfigError, match=r"cols: unknown key 'pgd20'; did you mean robust_acc/pgd20\?"):
        make_table(df, ["prune.channel_ratio"], ["pgd20"])
    with pytest.raises(ConfigError, match="holds text"):
        make_table(df, ["prune.channel_ratio"], ["dataset.name"])


def test_missing_directory_and_empty_directory(tmp_path):
    with pytest.raises(DataError, match="no run directory at .*nowhere; pass a run or sweep directory under outputs/"):
        load_runs(tmp_path / "nowhere")
    (tmp_path / "empty" / ".hydra").mkdir(parents=True)
    with pytest.raises(DataError, match="no metrics.json under"):
        load_runs(tmp_path / "empty")


def test_single_run_directory(tmp_path, capsys):
    run = write_run(tmp_path / "run", ratio=0.5, seed=0)
    display = table_command(str(run), rows=None, cols=None)
    assert display["choices.prune"].tolist() == ["l1_filter"]  # nothing varies: one row per prune choice
    assert display["n"].tolist() == ["1"]
    assert display["clean_acc (%)"].iloc[0] == f"{clean_acc(0.5, 0) * 100:.2f}"  # no "±" with one run
    assert (run / "table.md").is_file() and (run / "table.csv").is_file()
    printed = capsys.readouterr()
    assert "clean_acc (%)" in printed.out and "1 runs" in printed.out
    assert "table.md" in printed.err


def test_metric_missing_from_some_runs(sweep):
    # autoattack evaluated for ratio 0.25 (all seeds) and once for ratio 0.5; never for 0.75
    for seed in SEEDS:
        write_run(sweep / f"aa25_{seed}", ratio=0.25, seed=seed + 10, **{"robust_acc/autoattack": 0.4 + 0.01 * seed})
    write_run(sweep / "aa50", ratio=0.5, seed=10, **{"robust_acc/autoattack": 0.3})
    df = load_runs(sweep)
    assert df["robust_acc/autoattack"].isna().sum() == 9
    table = make_table(df, ["prune.channel_ratio"], ["robust_acc/autoattack"])
    assert table.display["robust_acc/autoattack (%)"].tolist() == ["41.00 ± 1.00 (n=3)", "30.00 (n=1)", "—"]
    assert table.numeric["n"].tolist() == [6, 4, 3]
    assert np.isnan(table.numeric["robust_acc/autoattack"].iloc[2])


def test_table_command_writes_into_out_and_is_quiet(sweep, tmp_path, capsys):
    display = table_command(str(sweep), rows=["prune.channel_ratio"], cols=["clean_acc"], out=str(tmp_path / "t"),
                            quiet=True)
    assert capsys.readouterr().out == ""
    assert display.shape == (3, 3)
    assert pd.read_csv(tmp_path / "t" / "table.csv")["n"].tolist() == [3, 3, 3]
    assert not (sweep / "table.md").exists()


def test_bar_chart_writes_png(tmp_path):
    scores = {f"features.{i}.conv": float(i) / 10 for i in range(12)} | {"classifier": float("nan")}
    out = bar_chart(scores, tmp_path / "plots" / "sensitivity.png", title="Layer sensitivity", ylabel="score")
    data = out.read_bytes()
    assert out == tmp_path / "plots" / "sensitivity.png"
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["sensitivity.png"]
    with pytest.raises(ValueError):
        bar_chart({}, tmp_path / "empty.png", title="t", ylabel="y")


def test_line_plot_log_axis_labels_and_notes(tmp_path):
    from robprune.report.plot import line_figure, line_plot

    series = {"pruning": [(8.0, 86.3, "r=0.8"), (1.2, 93.5, "r=0.1"), (2.7, float("nan"), "r=0.5")],
              "PTQ": [(2.0, 92.8, "16 bit"), (4.0, 93.5, "8 bit")]}
    fig = line_figure(series, title="t", xlabel="x", ylabel="y", log_x=True, notes_below=("PTQ",))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.xaxis.get_major_formatter()(4.0, 0) == "4×"
    assert [list(line.get_xdata()) for line in ax.lines] == [[1.2, 8.0], [2.0, 4.0]]  # sorted, NaN dropped
    offsets = {t.get_text(): t.xyann[1] for t in ax.texts}
    assert offsets["r=0.8"] > 0 > offsets["8 bit"] and "r=0.5" not in offsets
    out = line_plot(series, tmp_path / "p.png", title="t", xlabel="x", ylabel="y", log_x=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        line_figure({"a": []}, title="t", xlabel="x", ylabel="y")


def test_rows_must_be_given_and_disjoint_from_cols(sweep):
    df = load_runs(sweep)
    with pytest.raises(ConfigError, match="rows must name at least one key"):
        make_table(df, [], ["clean_acc"])
    with pytest.raises(ConfigError, match="none of cols"):
        make_table(df, ["prune.channel_ratio", "clean_acc"], ["clean_acc"])


def test_checks_column_shows_passed_or_the_failed_reasons(tmp_path, capsys):
    root = tmp_path / "sweep"
    reason = "zero_grad_fraction: 100.0% of 32 evaluated inputs have an exactly zero input gradient (> 10%)"
    for i, seed in enumerate(SEEDS):
        failed = [reason] if (i == 0) else []
        write_run(root / f"a{i}", ratio=0.3, seed=seed, checks={"passed": not failed, "failed": failed})
        write_run(root / f"b{i}", ratio=0.5, seed=seed, checks={"passed": True, "failed": []})
    display, numeric = make_table(load_runs(root), ["prune.channel_ratio"], ["clean_acc", "checks"])
    assert list(display.columns) == ["prune.channel_ratio", "n", "clean_acc (%)", "checks"]
    assert list(display["checks"]) == [f"FAILED 1/3: {reason}", "passed"]
    assert list(numeric["checks"]) == list(display["checks"])
    assert table_command(str(root), rows=["prune.channel_ratio"], cols=["checks"], quiet=True)["checks"].iloc[1] == "passed"


def test_text_attack_fractions_read_as_percent():
    from robprune.report.table import _cell

    assert _cell("text_attack/textfooler/aua", 0.02, float("nan"), 1, 1, "{:.2f}").startswith("2.00")
    assert _cell("text_attack/textfooler/asr", 0.975, float("nan"), 1, 1, "{:.2f}").startswith("97.50")
    assert _cell("text_attack/textfooler/avg_queries", 93.5, float("nan"), 1, 1, "{:.2f}") == "93.50"
