"""Test-wide settings: the tiny models gain nothing from several threads, and on a busy 2-core machine
threads that wait on each other made the suite up to 10x slower. Subprocesses inherit the variable."""

import os

os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402  (after the variable, so the thread pool reads it)

from tiny_run import make_run  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` are skipped where torch sees no CUDA device (`slow` ones are deselected by addopts)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """A tiny run folder of 40 synthetic records (tests/tiny_run.py), shared by the training tests.

    Tests train into their own output folders; the shared folder only gains its baselines file."""
    return make_run(tmp_path_factory.mktemp("data"), n=40)
