"""tests/conftest.py: each pytest-xdist worker runs torch and numpy on its share of the cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import conftest


def test_the_cores_are_shared_among_the_workers():
    assert conftest.thread_share(2, 2) == 1
    assert conftest.thread_share(2, 16) == 8
    assert conftest.thread_share(3, 16) == 5
    assert conftest.thread_share(4, 2) == 1  # never none
    assert conftest.thread_share(1, 16) is None  # one process keeps the libraries' defaults


def _threads_after_conftest(**env: str) -> tuple[int, str]:
    """torch's thread count and OPENBLAS_NUM_THREADS in a fresh process that imports
    conftest first, as a worker does."""
    clean = {k: v for k, v in os.environ.items() if k not in conftest.THREAD_VARIABLES and not k.startswith("PYTEST_XDIST")}
    code = ("import conftest, os, torch; "
            "print(torch.get_num_threads(), os.environ.get('OPENBLAS_NUM_THREADS', '-'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env={**clean, **env},
                            capture_output=True, text=True, check=True)
    threads, blas = result.stdout.split()
    return int(threads), blas


def test_a_worker_sets_its_share_before_torch_starts_unless_the_user_set_threads():
    cores = len(os.sched_getaffinity(0))
    share = conftest.thread_share(2, cores)
    assert _threads_after_conftest(PYTEST_XDIST_WORKER_COUNT="2") == (share, str(share))
    # A user's value other than the share is kept: torch runs what it runs for that value
    # outside a worker (it caps a request at the machine's cores, so on a one-core machine
    # only the untouched OPENBLAS_NUM_THREADS tells the two apart).
    own = "1" if share > 1 else "2"
    assert _threads_after_conftest(PYTEST_XDIST_WORKER_COUNT="2", OMP_NUM_THREADS=own) == (
        _threads_after_conftest(OMP_NUM_THREADS=own)[0], "-")
    # Not a worker: nothing is set.
    assert _threads_after_conftest()[1] == "-"
