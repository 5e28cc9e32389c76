"""Reading finished results back: one helper per file the runner writes, with errors naming the file."""
from __future__ import annotations

import json
from pathlib import Path

from robprune.errors import DataError


def read_metrics(path: str | Path) -> dict:
    """The metrics dict of a run's ``metrics.json``. Raises DataError naming the file (and the fix)
    when it cannot be read, is not UTF-8 JSON (random bytes, truncated) or holds no JSON object."""
    path = Path(path)
    try:
        metrics = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise DataError(f"{path}: cannot read metrics.json ({err.strerror or err}); check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else f"invalid JSON: {err.msg} at line {err.lineno}"
        raise DataError(f"{path}: not a valid metrics.json ({reason}); delete it or re-run that run") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: not a valid metrics.json (a JSON {type(metrics).__name__}, not an object); "
                        "delete it or re-run that run")
    return metrics
