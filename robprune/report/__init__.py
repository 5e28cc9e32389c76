"""Tables and plots computed from run directories (config.yaml + metrics.json), never from console output."""
from robprune.report.plot import bar_chart, line_plot
from robprune.report.table import (
    Table,
    default_cols,
    default_rows,
    load_runs,
    make_table,
    pooled_keys,
    print_table,
    table_command,
    write_table,
)

__all__ = [
    "Table",
    "bar_chart",
    "line_plot",
    "default_cols",
    "default_rows",
    "load_runs",
    "make_table",
    "pooled_keys",
    "print_table",
    "table_command",
    "write_table",
]
