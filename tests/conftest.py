import os

import pytest
import torch

os.environ.setdefault("ROBPRUNE_QUIET", "1")
# Test models are tiny: one thread is faster than two on a busy 2-core machine, and the same thread
# count in-process and in subprocesses keeps CPU results bit-comparable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")
    parser.addoption("--fuzz-long", action="store_true", default=False,
                     help="fuzz for long: 10,000 drawn configs, the whole experiment x option product, drawn data "
                          "and file faults, random kills (docs/development.md#fuzzing)")


FUZZ_SHORT, FUZZ_LONG = 30, 1000  # Hypothesis examples per property test: default run, --fuzz-long


@pytest.fixture(scope="session")
def fuzz_examples(request) -> int:
    """How many examples a property test draws (Hypothesis max_examples): FUZZ_LONG with --fuzz-long."""
    return FUZZ_LONG if request.config.getoption("--fuzz-long") else FUZZ_SHORT


def pytest_configure(config):
    # for budgets fixed where a test module is imported (@settings decorators): tests/test_file_faults.py
    if config.getoption("--fuzz-long", default=False):
        os.environ["ROBPRUNE_FUZZ_LONG"] = "1"


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
