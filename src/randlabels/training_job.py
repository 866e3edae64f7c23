"""What pre-training and fine-tuning jobs share around ``Trainer.fit``.

Resuming from the side state, saving on SLURM's signals, and turning the ways a run
can end badly into messages that name the setting to change: out of device memory
(lower the batch size), diverged with ``on_divergence: stop``, interrupted (exit
status 75, EX_TEMPFAIL: run again).
"""

from __future__ import annotations

import logging
import os
from typing import Iterable

import torch

from randlabels.engine import FitResult, Trainer
from randlabels.errors import ResourceError, TrainingDiverged
from randlabels.resume import ResumeStore, StopSignals, TrainingInterrupted, fingerprint

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: try again
DIVERGENCE_POLICIES = ("continue", "stop")


def run_training(
    trainer: Trainer,
    *,
    resume_path: str | os.PathLike,
    run_settings: dict,
    inputs: Iterable[str],
    where: str,
    save_every: int = 1,
    on_divergence: str = "continue",
    log: logging.Logger,
    **fit_options,
) -> tuple[FitResult, ResumeStore]:
    """Fit ``trainer``, resumable; returns the result and the store to clear later.

    ``run_settings`` and the files ``inputs`` fingerprint the run (a state saved for
    other settings is not resumed); ``where`` is the config section of the training
    settings, named in messages (e.g. ``experiments.digits_cnn.pretrain``); the
    state is saved every ``save_every`` epochs.
    """
    if on_divergence not in DIVERGENCE_POLICIES:
        raise ValueError(f"on_divergence must be one of {DIVERGENCE_POLICIES}, got {on_divergence!r}")
    config = trainer.config
    store = ResumeStore(resume_path, fingerprint(run_settings, inputs))
    with StopSignals() as stop:
        try:
            result = trainer.fit(resume=store, stop=stop, save_every=save_every, **fit_options)
        except TrainingInterrupted as stopped:
            log.error("%s", stopped)
            raise SystemExit(EXIT_INTERRUPTED) from None
        except torch.cuda.OutOfMemoryError as err:
            raise ResourceError(
                f"out of memory on {trainer.device} with batch size {config.batch_size} "
                f"(evaluation batches of {config.eval_batch_size}): lower {where}.batch_size "
                f"or {where}.eval_batch_size. ({str(err).splitlines()[0]})"
            ) from err
    if result.diverged:
        last = result.metrics.iloc[-1]
        message = f"{where}: run diverged at epoch {last['epoch']:g} (loss {last['loss']})"
        if on_divergence == "stop":
            store.clear()
            raise TrainingDiverged(
                f"{message}; lower the learning rate or the init scale, or set "
                "on_divergence: continue to record such runs as diverged and go on"
            )
        log.warning("%s; recorded as diverged (on_divergence: continue)", message)
    return result, store
