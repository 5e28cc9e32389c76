"""The long mode of the kill fuzzing (scripts/fuzz_kills.py): SIGKILL a shrunk train → prune → fine-tune →
AutoAttack run at seeded random moments, rerun it after each kill, and require the uninterrupted run's
metrics every time with nothing finished touched. Minutes, so it runs only with ``--fuzz-long``
(``ROBPRUNE_FUZZ_KILLS`` kills, default 10); the default suite keeps the fixed-point SIGKILL tests
(tests/test_cli.py, tests/test_autoattack.py)."""
import importlib.util
import os

import pytest

from tests.helpers import REPO


def _script():
    spec = importlib.util.spec_from_file_location("fuzz_kills", REPO / "scripts" / "fuzz_kills.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reruns_after_random_kills_match_the_uninterrupted_run(request, tmp_path):
    if not request.config.getoption("--fuzz-long"):
        pytest.skip("long: pass --fuzz-long")
    kills = int(os.environ.get("ROBPRUNE_FUZZ_KILLS", "10"))
    result = _script().fuzz(kills, seed=int(os.environ.get("ROBPRUNE_FUZZ_SEED", "0")), work=tmp_path / "fuzz")
    rows = [f"{r['delay_s']} s ({r['landed']}): {'identical' if r['identical'] else 'DIFFERS'}" for r in result["rows"]]
    assert len(rows) == kills and result["differing"] == 0, rows
    assert not result["touched"] and not any(r["touched"] for r in result["rows"]), result["touched"]
