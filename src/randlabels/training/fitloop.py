"""The training loop of both trainers: epochs of steps, metrics and learning-curve rows,
checkpoints, divergence, periodic resume states and stop signals.

:class:`randlabels.training.engine.Trainer` trains one run, :class:`randlabels.training.packed.PackedTrainer`
R replicas at once; both supply the steps and the records (:class:`Replicas`), and
:func:`fit` is the one protocol of when to record, save, stop and resume. A Trainer is
the case R = 1, so a packed replica is recorded where a separate run would be.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import pandas as pd
import torch

from randlabels.training.progress import Monitor
from randlabels.training.resume import ResumeStore, StopSignals, TrainingInterrupted


@dataclass
class FitResult:
    """What a training run produced: per-epoch metrics, learning curve, checkpoints."""

    metrics: pd.DataFrame
    curve: pd.DataFrame
    checkpoints: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    diverged: bool = False


class Replicas(Protocol):
    """What :func:`fit` needs of a trainer of ``replicas`` runs."""

    replicas: int
    steps_per_epoch: int
    step_count: int
    device: torch.device

    def orders(self) -> torch.Tensor:
        """This epoch's sample order of every replica, (R, N), drawn from their generators."""

    def step(self, orders: torch.Tensor, batch: int) -> torch.Tensor:
        """One SGD step on batch ``batch`` of ``orders``; the R losses on the device."""

    def evaluations(self) -> Any:
        """Every replica's training loss and accuracies now (what :meth:`row` reads)."""

    def row(self, evaluations: Any, r: int, epoch: float, train_loss: float) -> dict:
        """Replica r's metrics row (train_loss NaN: the evaluated loss)."""

    def curve_row(self, r: int, row: dict) -> dict:
        """Replica r's learning-curve row from its metrics row (a probe's columns added)."""

    def replica_state(self, r: int) -> dict[str, torch.Tensor]:
        """A CPU copy of replica r's state dict."""

    def snapshot(self, progress: dict) -> dict:
        """Everything a rerun needs to continue exactly here, ``progress`` included."""

    def restore(self, saved: dict) -> dict:
        """Load a :meth:`snapshot`; its ``progress``."""


def fit(
    trainer: Replicas,
    epochs: int,
    log,
    monitor: Monitor,
    checkpoint_epochs: Sequence[int] = (),
    eval_every: int | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    resume: ResumeStore | None = None,
    stop: StopSignals | None = None,
    save_every: int = 1,
    save_min_seconds: float = 0.0,
) -> list[FitResult]:
    """Train every replica for ``epochs`` epochs; one FitResult per replica.

    Records a metrics row at epoch 0 (the initialization) and after each epoch, a
    learning-curve row at step 0, every ``eval_every`` steps and at the last step (if
    ``eval_every`` is given), and a state copy at each epoch in ``checkpoint_epochs``.
    A replica whose loss becomes NaN or infinite is recorded as diverged, ends its epoch
    there and stops; the others go on, and the run ends when all have stopped.

    With ``resume``, the run continues from the state saved there (if it belongs to
    this run) and saves its state at the end of every ``save_every``-th epoch that
    ends at least ``save_min_seconds`` after the last save (or the start); with ``stop``, a stop
    signal saves the state after the current step and raises
    :class:`TrainingInterrupted`. A resumed run gives the same numbers as an
    uninterrupted one (on CPU, bit for bit). ``monitor`` reports each epoch.
    """
    R, steps_per_epoch = trainer.replicas, trainer.steps_per_epoch
    wanted = set(int(e) for e in checkpoint_epochs)
    saved = resume.load() if resume is not None else None
    if saved is not None:
        progress = trainer.restore(saved)
        replicas = f" ({R} replicas)" if R > 1 else ""
        log.info("resuming from %s%s: epoch %d, step %d", resume.path, replicas, progress["epoch"], trainer.step_count)
    else:
        evaluations = trainer.evaluations()
        first = [trainer.row(evaluations, r, 0, math.nan) for r in range(R)]
        progress = {
            "epoch": 1,  # the epoch to run next
            "batch": 0,  # batches of that epoch already done
            "order": None,  # that epoch's sample orders, once drawn
            "loss_sum": [0.0] * R,
            "metrics": [[{**row, "seconds": 0.0}] for row in first],
            "curve": [[trainer.curve_row(r, row)] if eval_every else [] for r, row in enumerate(first)],
            "checkpoints": [{0: trainer.replica_state(r)} if 0 in wanted else {} for r in range(R)],
            "active": [True] * R,  # not yet diverged
            "seconds": 0.0,
        }
    metrics, curve, checkpoints = progress["metrics"], progress["curve"], progress["checkpoints"]
    active = progress["active"]
    # The evaluations at the last learning-curve step: an epoch that ends on one records
    # them again instead of evaluating the same weights twice.
    curve_point: tuple[int, Any] | None = None
    start = time.perf_counter() - progress["seconds"]
    last_save = time.perf_counter()
    monitor.start(epochs, metrics)

    def save(**position) -> None:
        nonlocal last_save
        if resume is not None:
            progress.update(position, seconds=time.perf_counter() - start)
            resume.save(trainer.snapshot(progress))
            last_save = time.perf_counter()

    def interrupted(epoch: int) -> TrainingInterrupted:
        return TrainingInterrupted(stop.received, epoch, trainer.step_count, str(resume.path) if resume else None)

    def finish_epoch(evaluations, r: int, epoch: int, loss_sum: np.ndarray, done: int) -> None:
        """Replica r's end-of-epoch row (or the row where it diverged mid-epoch)."""
        row = trainer.row(evaluations, r, epoch, float(loss_sum[r]) / max(done, 1))
        row["seconds"] = time.perf_counter() - start
        metrics[r].append(row)
        if row["diverged"] or not active[r]:
            active[r] = False
            which = f"replica {r}: " if R > 1 else ""
            log.warning("%sloss is %s at epoch %d: run diverged, stopping", which, row["loss"], epoch)
        elif epoch in wanted:  # a NaN state is no checkpoint
            checkpoints[r][epoch] = trainer.replica_state(r)

    try:
        for epoch in range(progress["epoch"], epochs + 1):
            if not any(active):
                break
            if progress["epoch"] == epoch and progress["order"] is not None:
                orders, first_batch = progress["order"].to(trainer.device), progress["batch"]
            else:
                orders, first_batch = trainer.orders(), 0
                progress["loss_sum"] = [0.0] * R
            loss_sum = torch.tensor(progress["loss_sum"], device=trainer.device, dtype=torch.float64)
            running = list(active)  # replicas that take part in this epoch's records
            done = first_batch
            for b in range(first_batch, steps_per_epoch):
                done = b + 1
                loss_sum += trainer.step(orders, b)
                if eval_every and trainer.step_count % eval_every == 0:
                    evaluations, sums = trainer.evaluations(), None
                    curve_point = trainer.step_count, evaluations
                    for r in range(R):
                        if not running[r]:
                            continue
                        row = trainer.row(evaluations, r, trainer.step_count / steps_per_epoch, math.nan)
                        curve[r].append(trainer.curve_row(r, row))
                        if row["diverged"]:  # its epoch ends here, and its run
                            sums = loss_sum.cpu().numpy() if sums is None else sums
                            active[r] = running[r] = False
                            finish_epoch(evaluations, r, epoch, sums, done)
                    if not any(running):
                        break
                if stop is not None and stop.received and b + 1 < steps_per_epoch:
                    save(epoch=epoch, batch=b + 1, order=orders.cpu(), loss_sum=loss_sum.cpu().tolist())
                    raise interrupted(epoch)
            if any(running):
                if curve_point is not None and curve_point[0] == trainer.step_count:
                    evaluations = curve_point[1]
                else:
                    evaluations = trainer.evaluations()
                sums = loss_sum.cpu().numpy()
                for r in range(R):
                    if running[r]:
                        finish_epoch(evaluations, r, epoch, sums, done)
            # This epoch's rows: of the replicas that ended it, or diverged in it.
            rows = [metrics[r][-1] if metrics[r][-1]["epoch"] == epoch else None for r in range(R)]
            monitor.epoch(epoch, trainer.step_count, rows, time.perf_counter() - start)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
            if not any(active) or epoch == epochs:
                break
            stopping = stop is not None and stop.received
            if stopping or (epoch % save_every == 0 and time.perf_counter() - last_save >= save_min_seconds):
                save(epoch=epoch + 1, batch=0, order=None, loss_sum=[0.0] * R)
            if stopping:
                raise interrupted(epoch + 1)
    finally:
        monitor.close()
    # The trained model too, when the step count is no multiple of eval_every (with
    # eval_every above it, the curve would hold the initialization alone).
    pending = [r for r in range(R) if eval_every and active[r] and curve[r] and curve[r][-1]["step"] != trainer.step_count]
    if pending:
        evaluations = trainer.evaluations()
        for r in pending:
            row = trainer.row(evaluations, r, trainer.step_count / steps_per_epoch, math.nan)
            curve[r].append(trainer.curve_row(r, row))
    return [
        FitResult(
            metrics=pd.DataFrame(metrics[r]),
            curve=pd.DataFrame(curve[r]),
            checkpoints=checkpoints[r],
            diverged=not active[r],
        )
        for r in range(R)
    ]
