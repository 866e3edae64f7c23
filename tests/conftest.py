"""Test-session set-up: the longest test files start first, each pytest-xdist worker
gets its share of the cores for its threads, and the tiny workflow run is made once
for the whole session.

`make test` runs each file on one of two pytest-xdist workers (``--dist loadfile
--no-loadscope-reorder``), in collection order. A long end-to-end file that starts
last keeps one worker busy long after the other has finished, so files are collected
longest first: a slow test may declare its expected minutes, ``@pytest.mark.slow(minutes=9)``
(a plain ``slow`` counts as 1), and a file weighs its longest test.

Two workers with two threads each on two cores contend in the tests that compute in
the worker's own process (the fast tier; workflow jobs set their own threads), so each
worker's torch and numpy get ``cores // workers`` threads (docs/PERFORMANCE.md, Test
suite, gives the measured effect).

The full run of tests/configs/tiny.yaml (``finished_tiny_run``) is what the workflow
tests and the damaged-input fault tests start from; it is made once and shared by
both workers (``workflow_helpers.made_once``), and each test copies it before
changing anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from workflow_helpers import ROOT, copy_project, made_once, snakemake

#: The variables torch's OpenMP pool and numpy's BLAS read for their thread count.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def thread_share(workers: int, cores: int) -> int | None:
    """Threads for each of ``workers`` test processes on ``cores`` cores (at least
    one); None for a single process, which keeps the libraries' defaults."""
    return max(1, cores // workers) if workers > 1 else None


# In each pytest-xdist worker, before torch or numpy is imported (both read these at
# start-up), unless the user set any of them (torch lets MKL_NUM_THREADS override
# OMP_NUM_THREADS, so one set alone must not be joined by the others). Subprocesses
# (Snakemake runs, scripts) inherit them.
_SHARE = thread_share(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), len(os.sched_getaffinity(0)))
if _SHARE is not None and not any(name in os.environ for name in THREAD_VARIABLES):
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(_SHARE)))


def _minutes(item) -> float:
    marker = item.get_closest_marker("slow")
    return float(marker.kwargs.get("minutes", 1)) if marker is not None else 0.0


def pytest_collection_modifyitems(items) -> None:
    weight: dict = {}
    for item in items:
        weight[item.path] = max(weight.get(item.path, 0.0), _minutes(item))
    items.sort(key=lambda item: -weight[item.path])  # stable: a file's tests stay in order


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory) -> Path:
    """A full run of tests/configs/tiny.yaml, made once per session; copy it to change it.

    Training jobs ask for a GPU each, on a machine faked to have two: every one is
    bound to a device, and at most two run at once. TensorBoard event files are
    written too (tensorboard is in the test extra).
    """
    def make(folder: Path) -> None:
        project = copy_project(folder / "project")
        config = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
        config["resources"] = {"training": {"gpu": 1}}
        config["tensorboard"] = True
        (project / "config.yaml").write_text(yaml.safe_dump(config))
        fake_gpus = {"RANDLABELS_FAKE_GPUS": "0,1", "RANDLABELS_GPU_LOCK_DIR": str(folder / "locks")}
        snakemake(project, "--cores", "2", "--resources", "gpu=2", env=fake_gpus)

    return made_once(tmp_path_factory, "tiny", make) / "project"
