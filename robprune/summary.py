"""The end-of-run summary table (rich), computed from the metrics dict (the same data as metrics.json)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def _num(v, fmt: str) -> str:
    return "—" if v is None or v != v else format(v, fmt)


def checks_text(checks: dict) -> str:
    """'passed', or 'FAILED: <reason>; <reason>' from checks.failed (older results: see metrics.json)."""
    if checks.get("passed"):
        return "passed"
    return "FAILED: " + ("; ".join(checks.get("failed") or []) or "see metrics.json 'checks'")


def summary_rows(metrics: dict) -> list[tuple[str, str]]:
    rows = [("clean accuracy", _pct(metrics.get("clean_acc")))]
    published = (metrics.get("start") or {}).get("published") or {}
    if published.get("clean_acc") is not None:  # a zoo model's own numbers, beside ours (robprune.models.robustbench)
        rows.append((f"published ({published.get('zoo')}): clean / {published.get('robust_metric', 'robust')}",
                     f"{_pct(published['clean_acc'])} / {_pct(published.get('robust_acc'))}"))
    for key in sorted(k for k in metrics if k.startswith("robust_acc/") and k.count("/") == 1):  # not per sub-attack
        name = key.split("/", 1)[1]
        n = metrics.get(f"n_eval/{name}")
        rows.append((f"robust accuracy, {name}" + (f" (n={n})" if n else ""), _pct(metrics[key])))
    for key in sorted(k for k in metrics if k.startswith("text_attack/") and k.endswith("/asr")):
        name = key.split("/")[1]
        queries, words = metrics.get(f"text_attack/{name}/avg_queries"), metrics.get(f"text_attack/{name}/words_changed")
        rows.append((f"attack success rate, {name}", _pct(metrics[key])))
        rows.append((f"  avg queries / words changed, {name}",
                     f"{_num(queries, '.1f')} / {_pct(words) if words == words else '—'}"))  # NaN: no success
    if "corruption_acc/mean" in metrics:
        cells = [key.split("/")[1:] for key in metrics if key.startswith("corruption_acc/") and key.count("/") == 2]
        shape = f"{len({c[0] for c in cells})} corruptions × {len({c[1] for c in cells})} severities"
        rows.append((f"corruption accuracy ({shape}, n={metrics.get('n_eval/corruptions')})",
                     _pct(metrics["corruption_acc/mean"])))
        rc = metrics.get("corruption_rc")
        rows.append(("R_C (corruption / clean accuracy)", "—" if rc is None else f"{rc:.3f}"))
    if "params" in metrics:
        rows.append(("params (dense → now)", f"{metrics.get('params_dense', 0):,} → {metrics['params']:,}"))
    if "macs" in metrics:
        rows.append(("MACs (dense → now)", f"{metrics.get('macs_dense', 0):,} → {metrics['macs']:,}"))
    if "sparsity" in metrics:
        rows.append(("parameter sparsity", _pct(metrics["sparsity"])))
    if "latency_ms" in metrics:
        engine = f", {metrics['latency_engine']} INT8" if metrics.get("latency_engine") else ""
        value = metrics["latency_ms"]
        rows.append((f"CPU latency (batch {metrics.get('latency_batch_size')}{engine})",
                     f"{value:.2f} ms" if value is not None else f"— ({metrics.get('latency_note')})"))
    if "storage_bytes" in metrics:
        quant = metrics.get("quant") or {}
        where = f"{quant['method']} {quant['bits']}-bit" if quant.get("method", "none") != "none" else "FP32"
        rows.append((f"storage (dense FP32 → now, {where})",
                     f"{metrics.get('dense_storage_bytes', 0) / 1024:.1f} → {metrics['storage_bytes'] / 1024:.1f} KiB"))
    if "compression_ratio" in metrics:
        rows.append(("compression ratio", f"{metrics['compression_ratio']:.2f}×"))
    if "size_bytes" in metrics:
        rows.append(("checkpoint size", f"{metrics['size_bytes'] / 1024:.1f} KiB"))
    checks = metrics.get("checks") or {}
    if checks:
        rows.append(("sanity checks", checks_text(checks)))
    stages = metrics.get("stages") or {}
    if stages:
        rows.append(("stages reused from cache", ", ".join(k for k, v in stages.items() if v.get("reused")) or "none"))
    if "seconds" in metrics:
        rows.append(("wall time", f"{metrics['seconds']:.1f} s"))
    return rows


def print_summary(metrics: dict, *, title: str) -> None:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in summary_rows(metrics):
        table.add_row(name, Text(value, style="red") if value.startswith("FAILED") else value)
    Console().print(table)
