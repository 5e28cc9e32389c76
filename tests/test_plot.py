"""robprune plot: mean ± std curves over seeds and Pareto fronts, from run directories' files."""
from __future__ import annotations

import itertools
import json
import random

import pytest
from omegaconf import OmegaConf

from robprune.cli import main as cli_main
from robprune.report.curves import curve_figure, pareto_figure, pareto_front, settings
from robprune.report.table import load_runs


def _run(root, name, *, method, ratio, seed, acc, robust, macs):
    folder = root / name
    folder.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": seed, "prune": {"method": method, "channel_ratio": ratio},
                                     "data": {"root": f"/data/{seed}"}}), folder / "config.yaml")
    metrics = {"seed": seed, "clean_acc": acc, "robust_acc/pgd20": robust, "macs": macs,
               "sparsity": ratio + 0.001 * seed, "choices": {"prune": method}}
    (folder / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweep(tmp_path):
    """2 methods × 2 ratios × 2 seeds; l1 is more robust than random; seed 1 adds 0.02 to robust_acc."""
    for i, (method, ratio, seed) in enumerate(itertools.product(["l1_filter", "random"], [0.25, 0.5], [0, 1])):
        robust = (0.5 if method == "l1_filter" else 0.4) - 0.2 * ratio + 0.02 * seed
        _run(tmp_path, str(i), method=method, ratio=ratio, seed=seed, acc=0.9 - 0.1 * ratio, robust=robust,
             macs=int(1e6 * (1 - ratio)))
    return tmp_path


def test_settings_average_over_seeds_only(sweep):
    runs = load_runs(sweep)
    points = settings(runs, "prune.channel_ratio", "robust_acc/pgd20", ["prune.method"])
    assert len(points) == 4 and (points["n"] == 2).all()  # data.root differs per seed: a path, not a factor
    l1 = points[points["hue"] == "prune.method=l1_filter"]
    assert l1["x"].tolist() == [0.25, 0.5]
    assert l1["y"].tolist() == pytest.approx([0.45 + 0.01, 0.4 + 0.01])
    assert l1["y_std"].tolist() == pytest.approx([0.02 / 2**0.5] * 2)  # ddof 1 of two values 0.02 apart
    # x may be a metric: measured sparsity, averaged over the setting's seeds
    measured = settings(runs, "sparsity", "robust_acc/pgd20", ["prune.method"])
    assert measured["x"].tolist()[:2] == pytest.approx([0.2505, 0.5005])


def test_curve_figure_draws_the_means_in_percent(sweep):
    points = settings(load_runs(sweep), "prune.channel_ratio", "robust_acc/pgd20", ["prune.method"])
    fig = curve_figure(points, "prune.channel_ratio", "robust_acc/pgd20", "t")
    lines = {c.get_label(): c.lines[0].get_ydata().tolist() for c in fig.axes[0].containers}  # errorbar: data line
    assert lines["prune.method=l1_filter"] == pytest.approx([46.0, 41.0])
    assert lines["prune.method=random"] == pytest.approx([36.0, 31.0])


def test_pareto_front_matches_brute_force():
    rng = random.Random(0)
    for _ in range(50):
        cost = [rng.choice([1, 2, 3, 4]) for _ in range(8)]
        value = [rng.choice([0.1, 0.2, 0.3]) for _ in range(8)]
        front = pareto_front(cost, value)
        dominated = {i for i in range(8) for j in range(8)
                     if cost[j] <= cost[i] and value[j] >= value[i] and (cost[j], value[j]) != (cost[i], value[i])}
        assert set(front) <= set(range(8)) - dominated
        # every non-dominated (cost, value) pair is represented once
        assert {(cost[i], value[i]) for i in front} == {(cost[i], value[i]) for i in set(range(8)) - dominated}


def test_pareto_figure_rings_the_front(sweep):
    points = settings(load_runs(sweep), "macs", "robust_acc/pgd20", ["prune.method"])
    fig = pareto_figure(points, "macs", "robust_acc/pgd20", "t")
    front = [line for line in fig.axes[0].get_lines() if line.get_label() == "Pareto front"][0]
    # l1 dominates random at both sizes: the front is l1's two settings, cheapest first (MACs in M)
    assert front.get_xdata().tolist() == pytest.approx([0.5, 0.75])
    assert front.get_ydata().tolist() == pytest.approx([41.0, 46.0])


def test_plot_cli_writes_png_and_svg(sweep, tmp_path, capsys):
    out = tmp_path / "figs"
    assert cli_main(["plot", str(sweep), "--x", "prune.channel_ratio", "--y", "clean_acc", "robust_acc/pgd20",
                     "--hue", "prune.method", "--out", str(out), "--quiet"]) == 0
    assert cli_main(["plot", str(sweep), "--pareto", "macs", "--y", "robust_acc/pgd20", "--hue", "prune.method",
                     "--out", str(out), "--quiet"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["pareto_robust_acc-pgd20_macs.png", "pareto_robust_acc-pgd20_macs.svg",
                     "plot_clean_acc_prune-channel_ratio.png", "plot_clean_acc_prune-channel_ratio.svg",
                     "plot_robust_acc-pgd20_prune-channel_ratio.png", "plot_robust_acc-pgd20_prune-channel_ratio.svg"]
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    for p in out.glob("*.svg"):
        assert "<svg" in p.read_text()[:2000]


@pytest.mark.parametrize("args, message", [
    (["--x", "prune.channel_ratio", "--y", "robust_acc/pgd99"], "unknown key 'robust_acc/pgd99'"),
    (["--x", "prune.channel_ratio", "--pareto", "macs", "--y", "clean_acc"], "exactly one of --x"),
    (["--y", "clean_acc"], "exactly one of --x"),
    (["--x", "prune.channel_ratio", "--y", "clean_acc", "--hue", "macs"], "--hue macs is a metric"),
    (["--x", "clean_acc", "--y", "prune.channel_ratio"], "is a config key"),
])
def test_plot_bad_input_is_one_line(sweep, capsys, args, message):
    assert cli_main(["plot", str(sweep), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not list(sweep.glob("*.png"))
