"""What a person sees: the end-of-run table shows a failed check in red with its reason, progress bars
stay out of redirected logs, and no config names a path of our machines."""
from robprune.config import config_dir
from robprune.summary import print_summary, summary_rows
from robprune.ui import track

FAILED = {"clean_acc": 0.9, "checks": {"passed": False, "failed": ["zero_grad_fraction: 1.000 of 64 inputs > 0.1"]}}


def test_a_failed_check_is_shown_in_red_with_its_reason(capsys, monkeypatch):
    assert dict(summary_rows(FAILED))["sanity checks"] == "FAILED: zero_grad_fraction: 1.000 of 64 inputs > 0.1"
    assert dict(summary_rows({"checks": {"passed": True, "failed": []}}))["sanity checks"] == "passed"
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich colours a non-terminal when asked to
    monkeypatch.setenv("COLUMNS", "200")
    print_summary(FAILED, title="run")
    out = capsys.readouterr().out
    red_line = next(line for line in out.splitlines() if "FAILED" in line)
    assert "\x1b[31m" in red_line and "zero_grad_fraction" in red_line


def test_progress_bars_print_nothing_into_a_redirected_log(capsys):
    assert list(track(range(3), "epoch", enabled=True)) == [0, 1, 2]   # stderr is captured, not a terminal
    assert capsys.readouterr().err == ""


def test_no_config_names_a_path_of_our_machines():
    offenders = [str(p) for p in config_dir().rglob("*.yaml") if "shared/data" in p.read_text()]
    assert offenders == []
