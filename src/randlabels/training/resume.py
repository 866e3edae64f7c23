"""Resumable training: a side file of training state, and stop signals turned into a save.

Snakemake deletes a job's declared outputs before it reruns the job, so the state a
rerun resumes from lives beside them, in ``results/_resume/`` (see ``plan.PATHS``).
A :class:`ResumeStore` holds that state for one run, stamped with a fingerprint of
everything the run's numbers depend on (settings, input files, library code): a
state written for other settings or data is ignored, never resumed from. The
checkpoints a run has recorded so far go to side files, each written once, so that a
periodic save writes the training state alone, not every checkpoint again.

SLURM announces preemption with SIGTERM and an approaching time limit with the
signal the profile asks for (SIGUSR1); Ctrl-C in a terminal sends SIGINT.
:class:`StopSignals` turns any of them into a flag that the training loop checks
after each step; the loop then saves its state and raises
:class:`TrainingInterrupted`, so the job exits non-zero and a requeue or a rerun
resumes at that step. A ``kill -9`` gives no warning: the rerun resumes from the
last periodic save, losing at most one save interval.

Two processes never train one run at once: :class:`RunLock` is an exclusive
``flock`` on ``<resume state>.lock``, taken by a training script before it does
anything else (:func:`hold_run`: before it opens, and so truncates, the run's log,
or reads or writes its state) and given back once the run's outputs are written
(:meth:`ResumeStore.clear`). The
kernel drops it when its process ends, however it ends, so a dead job's lock never
blocks a rerun. A second process (a second Snakemake after ``snakemake --unlock``
on a live run, a job submitted twice) is refused with a message naming the run and
the holder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Iterable

from randlabels.errors import RandlabelsError
from randlabels.io import load_torch, save_torch

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

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


class RunLocked(RandlabelsError):
    """Another live process is training this run (it holds the run's :class:`RunLock`)."""

    def __init__(self, resume_path: str | os.PathLike, holder: str):
        self.path, self.holder = str(resume_path), holder
        super().__init__(
            f"{resume_path}: this run is being trained by another process ({holder}); one run is "
            "never trained by two processes at once, so this job stops here and leaves the run to "
            "it. Let that process finish (a second snakemake on this folder, started after "
            "`snakemake --unlock`?), then rerun the workflow"
        )


_HELD: dict[str, object] = {}  # lock path → open, locked file, for locks this process holds


class RunLock:
    """An exclusive lock on the run whose resume state is ``resume_path``.

    An ``flock`` on ``<resume_path>.lock``, which records the holder (pid, host, since
    when) for the message of a refused second process. Held per process: acquiring a
    lock this process already holds does nothing. :meth:`release` removes the file
    while still holding it; an acquirer that opened the removed file notices and
    locks the new one, so two processes never both hold the run.
    """

    def __init__(self, resume_path: str | os.PathLike):
        self.resume_path = Path(resume_path)
        self.path = self.resume_path.with_name(self.resume_path.name + ".lock")
        self._key = os.path.abspath(self.path)

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._key in _HELD

    def acquire(self) -> "RunLock":
        """Take the lock, or raise :class:`RunLocked` naming the live holder."""
        if self.held:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "a process that is just starting"
                handle.close()
                raise RunLocked(self.resume_path, holder) from None
            try:
                current = os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path))
            except FileNotFoundError:
                current = False
            if current:
                break
            handle.close()  # its holder removed it while releasing: lock the file there now
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        _HELD[self._key] = handle
        return self

    def release(self) -> None:
        """Give the lock back (and remove its file); nothing if this process does not hold it."""
        handle = _HELD.pop(self._key, None)
        if handle is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked (see the class docstring)
        handle.close()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def hold_run(resume_path: str | os.PathLike) -> RunLock:
    """For a training script, first thing: take the run's lock, or stop the process
    with the one-line :class:`RunLocked` message (exit status 1) when another process
    trains that run. Before the log is opened, since opening it truncates it. The lock
    is held until :meth:`ResumeStore.clear` or the end of the process."""
    try:
        return RunLock(resume_path).acquire()
    except RunLocked as err:
        raise SystemExit(f"error: {err}") from None


class ResumeStore:
    """The resume state of one training run: one file outside the outputs, and a folder
    beside it (``<path>.checkpoints``) of the checkpoints recorded so far.

    A state is the trainer's snapshot; its ``progress["checkpoints"]`` (one
    ``{epoch: state dict}`` per replica, :func:`randlabels.training.fitloop.fit`) is
    kept as one side file per replica and epoch, written at the first save that holds
    it, and the state file lists their epochs. :attr:`lock` is the run's
    :class:`RunLock`; :meth:`clear` releases it.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.lock = RunLock(self.path)
        self.checkpoint_dir = self.path.with_name(self.path.name + ".checkpoints")
        self._written: set[tuple[int, int]] = set()  # (replica, epoch) side files of this run

    def checkpoint_path(self, replica: int, epoch: int) -> Path:
        """The side file of replica ``replica``'s checkpoint at ``epoch``."""
        return self.checkpoint_dir / f"replica{replica}-epoch{epoch}.pt"

    def load(self) -> dict | None:
        """The saved state, its checkpoints read back, or None when there is none or it
        belongs to another run.

        A state that cannot be read (a crash during an earlier save cannot cause this,
        since saves are atomic, but a damaged disk can), or whose checkpoint files are
        missing, unreadable or another run's, is reported and ignored: the run starts
        over rather than failing.
        """
        if not self.path.exists():
            return None
        try:
            state = load_torch(self.path)
            if state.get("fingerprint") != self.fingerprint:
                log.warning("ignoring resume state %s: written for other settings, data or code", self.path)
                return None
            return self._with_checkpoints(state)
        except ValueError as err:
            self._written.clear()  # the fresh run writes every checkpoint of its own
            log.warning("ignoring unreadable resume state: %s", err)
            return None

    def _with_checkpoints(self, state: dict) -> dict:
        """``state`` with each listed checkpoint epoch replaced by its side file's tensors."""
        progress = state.get("progress")
        if not isinstance(progress, dict) or not progress.get("checkpoints"):
            return state
        checkpoints = []
        for replica, epochs in enumerate(progress["checkpoints"]):
            states = {}
            for epoch in epochs:
                path = self.checkpoint_path(replica, epoch)
                if not path.is_file():
                    raise ValueError(f"{path}: checkpoint file of {self.path} missing")
                saved = load_torch(path)
                if saved.get("fingerprint") != self.fingerprint:
                    raise ValueError(f"{path}: checkpoint file of another run than {self.path}")
                states[epoch] = saved["state"]
                self._written.add((replica, epoch))
            checkpoints.append(states)
        return {**state, "progress": {**progress, "checkpoints": checkpoints}}

    def save(self, state: dict) -> None:
        """Write ``state`` atomically (a kill during the write keeps the previous one):
        first the checkpoints no earlier save wrote, then the state file naming them."""
        progress = state.get("progress")
        if isinstance(progress, dict) and progress.get("checkpoints"):
            checkpoints = progress["checkpoints"]
            for replica, states in enumerate(checkpoints):
                for epoch, weights in states.items():
                    if (replica, epoch) not in self._written:
                        save_torch({"fingerprint": self.fingerprint, "state": weights},
                                   self.checkpoint_path(replica, epoch))
                        self._written.add((replica, epoch))
            listed = [sorted(states) for states in checkpoints]
            state = {**state, "progress": {**progress, "checkpoints": listed}}
        save_torch({**state, "fingerprint": self.fingerprint}, self.path)

    def clear(self) -> None:
        """Remove the state and its checkpoint files once the run's outputs are written,
        and give the run's lock back."""
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        self._written.clear()
        self.lock.release()


class StopSignals:
    """While active, SIGTERM, SIGUSR1 and SIGINT (Ctrl-C) set :attr:`received` instead
    of killing (or raising KeyboardInterrupt).

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
