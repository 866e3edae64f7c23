"""Killed, signalled and concurrent workflow runs, for real: Snakemake, scripts, files.

One pre-training (tests/configs/resume.yaml) is interrupted in the middle: by
``kill -9`` of the whole process group (no warning, as when a node dies), by SIGUSR1
to the training process (SLURM's warning before the time limit) and by SIGTERM to
every process of the run (SLURM's preemption). Each time a plain rerun resumes from
the saved state and ends with the numbers of an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from randlabels.io import read_table
from workflow_helpers import BIN, NO_CLUSTER, copy_project, killable_env, snakemake

pytestmark = pytest.mark.slow

CONFIG = "tests/configs/resume.yaml"
RUN_DIR = "results/resume/pretrain/random/scale0.5/seed0"
TARGET = f"{RUN_DIR}/checkpoints.pt"
RESUME_STATE = "results/_resume/resume/pretrain/random/scale0.5/seed0.pt"
LOG = "results/logs/pretrain/resume/random/scale0.5/seed0.log"


def _project(root: Path, epochs: int = 40) -> Path:
    project = copy_project(root)
    (project / "tests/configs").mkdir(parents=True, exist_ok=True)
    text = (Path(__file__).parent / "configs/resume.yaml").read_text()
    (project / CONFIG).write_text(text.replace("epochs: 40", f"epochs: {epochs}"))
    return project


def _start(project: Path) -> subprocess.Popen:
    """Snakemake (targets first: --configfile takes all words after it) in its own session, so that the whole run can be signalled at once."""
    return subprocess.Popen(
        [str(BIN / "snakemake"), TARGET, "--cores", "1", "--configfile", CONFIG],
        cwd=project, env={**os.environ, **NO_CLUSTER, **killable_env(project)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def _saved_epoch(project: Path) -> int:
    """The epoch the resume state would restart at (0 while there is none)."""
    try:
        return torch.load(project / RESUME_STATE, weights_only=True)["progress"]["epoch"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0  # not written yet (saves are atomic: never half-written)


def _wait_for_save(project: Path, run: subprocess.Popen, epoch: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert run.poll() is None, f"run ended before it could be interrupted:\n{run.stdout.read()}"
        saved = _saved_epoch(project)
        if saved >= epoch:
            return saved
        time.sleep(0.05)
    raise AssertionError(f"no resume state for epoch {epoch} within {timeout} s")


def _training_pid(run: subprocess.Popen) -> int:
    """The pid of the rule's Python script, a descendant in the run's session."""
    found = subprocess.run(["pgrep", "-s", str(run.pid), "-f", "pretrain.py"], capture_output=True, text=True)
    pids = [int(p) for p in found.stdout.split()]
    assert pids, "training process not found"
    return pids[-1]


def _trained_epoch(log_text: str) -> int:
    """The last epoch the training log reports as finished."""
    epochs = [int(line.split("epoch ")[1].split("/")[0]) for line in log_text.splitlines() if "  step " in line]
    return max(epochs, default=0)


def _rerun(project: Path) -> subprocess.CompletedProcess:
    snakemake(project, TARGET, "--unlock", "--configfile", CONFIG)
    return snakemake(project, TARGET, "--cores", "1", "--configfile", CONFIG)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    project = _project(tmp_path_factory.mktemp("uninterrupted"))
    snakemake(project, TARGET, "--cores", "1", "--configfile", CONFIG)
    return project


def _assert_same_results(project: Path, reference: Path) -> None:
    metrics = read_table(project / RUN_DIR / "metrics.tsv").drop(columns="seconds")
    expected = read_table(reference / RUN_DIR / "metrics.tsv").drop(columns="seconds")
    pd.testing.assert_frame_equal(metrics, expected)
    got = torch.load(project / TARGET, weights_only=True)["states"]
    want = torch.load(reference / TARGET, weights_only=True)["states"]
    assert got.keys() == want.keys()
    for epoch in want:
        for name in want[epoch]:
            assert torch.equal(got[epoch][name], want[epoch][name]), (epoch, name)
    assert not (project / RESUME_STATE).exists(), "resume state is removed once the outputs exist"


def test_kill_9_of_the_whole_run_resumes_losing_at_most_one_epoch(tmp_path, uninterrupted):
    project = _project(tmp_path)
    run = _start(project)
    _wait_for_save(project, run, epoch=4)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    finished_before_kill = _trained_epoch((project / LOG).read_text())
    saved = _saved_epoch(project)
    assert not (project / TARGET).exists()  # the kill came before the outputs

    _rerun(project)
    log_text = (project / LOG).read_text()
    assert f"epoch {saved}, step" in log_text and "resuming from" in log_text
    # The save after each epoch is the interval: the rerun redoes at most one epoch.
    assert finished_before_kill - (saved - 1) <= 1
    _assert_same_results(project, uninterrupted)


def test_sigusr1_to_training_saves_mid_epoch_and_rerun_resumes(tmp_path, uninterrupted):
    project = _project(tmp_path)
    run = _start(project)
    _wait_for_save(project, run, epoch=3)
    os.kill(_training_pid(run), signal.SIGUSR1)
    output, _ = run.communicate(timeout=120)
    assert run.returncode != 0  # the job stops so that the scheduler can retry it
    log_text = (project / LOG).read_text()
    assert "interrupted by SIGUSR1" in log_text and "rerun the workflow to resume" in log_text
    assert not (project / TARGET).exists()
    assert (project / RESUME_STATE).exists()

    _rerun(project)
    _assert_same_results(project, uninterrupted)


def test_sigterm_to_every_process_of_the_run_resumes(tmp_path, uninterrupted):
    """SLURM preempts a job by sending SIGTERM to all of its processes."""
    project = _project(tmp_path)
    run = _start(project)
    _wait_for_save(project, run, epoch=3)
    os.killpg(run.pid, signal.SIGTERM)
    run.communicate(timeout=120)
    deadline = time.monotonic() + 60  # the script may outlive snakemake by its save
    while subprocess.run(["pgrep", "-s", str(run.pid)], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "training process did not exit after SIGTERM"
        time.sleep(0.1)
    assert "interrupted by SIGTERM" in (project / LOG).read_text()
    assert not (project / TARGET).exists()

    _rerun(project)
    _assert_same_results(project, uninterrupted)


def test_a_second_invocation_on_the_same_results_is_refused(tmp_path):
    project = _project(tmp_path, epochs=4000)  # still running when the second one starts
    run = _start(project)
    try:
        _wait_for_save(project, run, epoch=1)
        second = snakemake(project, TARGET, "--cores", "1", "--configfile", CONFIG, check=False)
        assert second.returncode != 0
        assert "Directory cannot be locked" in second.stdout + second.stderr
        assert run.poll() is None  # the first run goes on untouched
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
