"""Resumable training: a side file of training state, and stop signals turned into a save.

Snakemake deletes a job's declared outputs before it reruns the job, so the state a
rerun resumes from lives beside them, in ``results/_resume/`` (see ``plan.PATHS``).
A :class:`ResumeStore` holds that state for one run, stamped with a fingerprint of
everything the run's numbers depend on (settings, input files, library code): a
state written for other settings or data is ignored, never resumed from.

SLURM announces preemption with SIGTERM and an approaching time limit with the
signal the profile asks for (SIGUSR1). :class:`StopSignals` turns either into a
flag that the training loop checks after each step; the loop then saves its state
and raises :class:`TrainingInterrupted`, so the job exits non-zero and a requeue or
a rerun resumes at that step. A ``kill -9`` gives no warning: the rerun resumes
from the last periodic save, losing at most one save interval.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
from pathlib import Path
from typing import Iterable

from randlabels.errors import RandlabelsError
from randlabels.io import load_torch, save_torch

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

log = logging.getLogger("randlabels")


class TrainingInterrupted(RandlabelsError):
    """Training stopped on a signal after saving its state; a rerun resumes it."""

    def __init__(self, signal_name: str, epoch: int, step: int, path: str | None):
        self.signal_name, self.epoch, self.step, self.path = signal_name, epoch, step, path
        where = f"resume state saved to {path}" if path else "no resume state kept"
        super().__init__(
            f"interrupted by {signal_name} in epoch {epoch} at step {step}; {where}; "
            "rerun the workflow to resume"
        )


def fingerprint(settings: dict, files: Iterable[str | os.PathLike] = ()) -> str:
    """A digest of the settings (JSON, sorted keys) and the contents of ``files``."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in files:
        digest.update(str(Path(name).name).encode())
        with open(name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class ResumeStore:
    """The resume state of one training run, kept in one file outside the outputs."""

    def __init__(self, path: str | os.PathLike, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint

    def load(self) -> dict | None:
        """The saved state, or None when there is none or it belongs to another run.

        A state that cannot be read (a crash during an earlier save cannot cause this,
        since saves are atomic, but a damaged disk can) is reported and ignored: the
        run starts over rather than failing.
        """
        if not self.path.exists():
            return None
        try:
            state = load_torch(self.path)
        except ValueError as err:
            log.warning("ignoring unreadable resume state: %s", err)
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.warning(
                "ignoring resume state %s: written for other settings, data or code", self.path
            )
            return None
        return state

    def save(self, state: dict) -> None:
        """Write ``state`` atomically (a kill during the write keeps the previous one)."""
        save_torch({**state, "fingerprint": self.fingerprint}, self.path)

    def clear(self) -> None:
        """Remove the state once the run's outputs are written."""
        self.path.unlink(missing_ok=True)


class StopSignals:
    """While active, SIGTERM and SIGUSR1 set :attr:`received` instead of killing.

    Use as a context manager around training; the previous handlers come back on exit.
    A second signal of the same kind while a save is pending is ignored, so the save
    completes.
    """

    def __init__(self, signals: Iterable[signal.Signals] = STOP_SIGNALS):
        self.signals = tuple(signals)
        self.received: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):  # noqa: ARG002 (signal handler signature)
        name = signal.Signals(signum).name
        if self.received is None:
            log.warning("received %s: saving training state at the next step", name)
            self.received = name

    def __enter__(self) -> "StopSignals":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
