"""Test-wide settings: the tiny models gain nothing from several threads, and on a busy 2-core machine
threads that wait on each other made the suite up to 10x slower. Subprocesses inherit the variable."""

import os

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402  (after the variable, so the thread pool reads it)

torch.set_num_threads(1)
