"""What a training job shows while it runs: the epoch line, a live metrics file, TensorBoard.

A job's metrics table is written when the job ends; a long run needs to be watched
before that. :class:`Monitor` takes each epoch's metrics rows from the fit loop
(:meth:`randlabels.training.engine.Trainer.fit`, :meth:`randlabels.training.packed.PackedTrainer.fit`)
and

* logs one line naming the run (experiment, labels, scale, seed) with the job's ETA,
  so that the interleaved output of parallel jobs stays readable;
* appends the rows to a live file, one JSON object per line (``tail -f`` it, or read
  it with ``pandas.read_json(path, lines=True)``), rewritten from the run's own
  record when the job starts or resumes, so that a file left half-written by a killed
  job is replaced, never read;
* optionally writes TensorBoard event files (the ``tensorboard`` package, an optional
  dependency), one folder per run.

Reporting never fails a job: a live file or TensorBoard folder that cannot be written
is a warning, and the run goes on without it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Sequence

# What TensorBoard plots, of each metrics row.
SCALARS = ("loss", "train_acc", "test_acc", "lr")


def eta(seconds: float, epochs_done: int, epochs_total: int) -> str:
    """The time left, ``H:MM:SS``, at the mean pace of the epochs done so far (``?``
    before the first epoch)."""
    if epochs_done <= 0 or not math.isfinite(seconds):
        return "?"
    left = max(0, round(seconds / epochs_done * (epochs_total - epochs_done)))
    return f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"


def _json_value(value):
    """A metrics value as JSON has it: NaN and infinities as null (JSON has neither)."""
    if hasattr(value, "item"):  # numpy / torch scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Monitor:
    """Reports the epochs of one training job (one run, or a packed group of runs).

    ``run``: the job's name in log lines, e.g. ``digits_cnn random scale=0.5 seed=0``;
    ``replicas``: for a packed group, each replica's own fields (e.g. ``{"seed": 3}``),
    written into its rows of the live file and naming its TensorBoard folder; ``fields``:
    written into every live row (the run's identity); ``live``: the live file (None:
    none); ``tensorboard``: the folder for event files (None: none).
    """

    def __init__(
        self,
        run: str = "",
        *,
        fields: dict | None = None,
        replicas: Sequence[dict] | None = None,
        live: str | os.PathLike | None = None,
        tensorboard: str | os.PathLike | None = None,
        log: logging.Logger | None = None,
    ):
        self.run = run
        self.fields = dict(fields or {})
        self.replicas = [dict(r) for r in replicas] if replicas else [{}]
        self.live = Path(live) if live is not None else None
        self.tensorboard = Path(tensorboard) if tensorboard is not None else None
        self.log = log or logging.getLogger("randlabels")
        self.total_epochs = 0
        self._writers: list | None = None

    # ------------------------------------------------------------------ events

    def start(self, total_epochs: int, rows: Sequence[Sequence[dict]]) -> None:
        """The run (re)starts with ``rows`` recorded so far, one list per replica
        (epoch 0's row, or those a resume state restored): the live file is rewritten
        with them, and TensorBoard is opened."""
        if len(rows) != len(self.replicas):
            raise ValueError(f"{len(rows)} replicas' rows for a monitor of {len(self.replicas)}")
        self.total_epochs = int(total_epochs)
        if self.live is not None:
            lines = [self._line(r, row) for r, replica_rows in enumerate(rows) for row in replica_rows]
            self._write_live(lines, mode="w")
        if self.tensorboard is not None:
            self._open_tensorboard()
            for r, replica_rows in enumerate(rows):
                if replica_rows and replica_rows[-1].get("epoch") == 0 and len(replica_rows) == 1:
                    self._scalars(r, replica_rows[-1])

    def epoch(self, epoch: int, step: int, rows: Sequence[dict | None], seconds: float) -> None:
        """Epoch ``epoch`` ended at step ``step``, ``seconds`` into the run; ``rows``:
        each replica's new metrics row (None for a replica that no longer trains)."""
        rows = list(rows)
        done = [(r, row) for r, row in enumerate(rows) if row is not None]
        if not done:
            return
        self._log_line(epoch, step, [row for _, row in done], seconds)
        if self.live is not None:
            self._write_live([self._line(r, row) for r, row in done], mode="a")
        for r, row in done:
            self._scalars(r, row)

    def close(self) -> None:
        """Flush and close TensorBoard's writers."""
        for writer in self._writers or []:
            writer.close()
        self._writers = None

    # ------------------------------------------------------------------ parts

    def _log_line(self, epoch: int, step: int, rows: list[dict], seconds: float) -> None:
        prefix = f"{self.run}  " if self.run else ""
        left = eta(seconds, epoch, self.total_epochs)
        if len(self.replicas) == 1:
            row = rows[0]
            self.log.info(
                "%sepoch %d/%d  step %d  loss %.4f  train_acc %.4f  test_acc %.4f  lr %.4g  %.1fs  ETA %s",
                prefix, epoch, self.total_epochs, step, row["loss"], row["train_acc"],
                row["test_acc"], row["lr"], seconds, left,
            )
            return
        training = [row for row in rows if not row.get("diverged")]  # a diverged one has a NaN loss
        if not training:
            return
        losses = [row["loss"] for row in training]
        accs = [row["train_acc"] for row in training]
        self.log.info(
            "%sepoch %d/%d  step %d  %d replicas  loss %.4f..%.4f  train_acc %.4f..%.4f  %.1fs  ETA %s",
            prefix, epoch, self.total_epochs, step, len(training), min(losses), max(losses),
            min(accs), max(accs), seconds, left,
        )

    def _line(self, r: int, row: dict) -> str:
        record = {**self.fields, **self.replicas[r], **row}
        return json.dumps({key: _json_value(value) for key, value in record.items()})

    def _write_live(self, lines: list[str], mode: str) -> None:
        try:
            self.live.parent.mkdir(parents=True, exist_ok=True)
            with open(self.live, mode, encoding="utf-8") as handle:
                handle.writelines(line + "\n" for line in lines)
        except OSError as err:
            self.log.warning("live metrics file %s not written (%s); the run goes on without it", self.live, err)
            self.live = None

    def _open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch raises ImportError when tensorboard is missing
            self.log.warning(
                "tensorboard: true, but TensorBoard cannot be loaded (%s): no event files; "
                "install it with pip install 'randlabels[tensorboard]'", err,
            )
            self.tensorboard = None
            return
        writers = []
        try:
            for replica in self.replicas:
                folder = self.tensorboard.joinpath(*(f"{k}{v}" for k, v in replica.items()))
                folder.mkdir(parents=True, exist_ok=True)
                writers.append(SummaryWriter(log_dir=str(folder)))
        except OSError as err:
            for writer in writers:
                writer.close()
            self.log.warning(
                "TensorBoard folder %s not writable (%s): no event files; the run goes on without them",
                self.tensorboard, err,
            )
            self.tensorboard = None
            return
        self._writers = writers

    def _scalars(self, r: int, row: dict) -> None:
        if not self._writers:
            return
        writer = self._writers[r]
        try:
            for name in SCALARS:
                value = _json_value(row.get(name))
                if isinstance(value, (int, float)):
                    writer.add_scalar(name, value, global_step=int(row.get("step", 0)))
            writer.flush()
        except OSError as err:
            self.log.warning("TensorBoard event files in %s not written (%s); stopped writing them", self.tensorboard, err)
            self.close()


def job_monitor(
    run: dict,
    replicas: Sequence[dict],
    paths: dict,
    *,
    tensorboard: bool = False,
    log: logging.Logger | None = None,
) -> Monitor:
    """The monitor of a workflow training job: ``run`` is the identity its replicas
    share (e.g. experiment, labels, init_scale), ``replicas`` each trained run's own
    fields (``[{"seed": 0}]``; a packed job: one per seed or per variant), ``paths``
    the rule's ``progress`` param (``live`` file and ``tensorboard`` folder),
    ``tensorboard`` the config switch. Log lines name the run as
    ``key=value ... seed=0`` (a packed group: ``seeds=0,1``, or ``inits=scratch,gaussian``)."""
    replicas = [dict(replica) for replica in replicas]
    return Monitor(
        " ".join([_shown(run), _shown_replicas(replicas)]).strip(),
        fields=run,
        replicas=replicas,
        live=paths["live"],
        tensorboard=paths["tensorboard"] if tensorboard else None,
        log=log,
    )


def _shown(fields: dict) -> str:
    return " ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in fields.items())


def _shown_replicas(replicas: list[dict]) -> str:
    """One replica's fields as they are; several, each field's values in a list."""
    if len(replicas) == 1:
        return _shown(replicas[0])
    return " ".join(f"{key}s=" + ",".join(str(replica[key]) for replica in replicas) for key in replicas[0])
