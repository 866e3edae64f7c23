"""What pre-training and fine-tuning jobs share around ``Trainer.fit``.

Resuming from the side state, saving on SLURM's signals, and turning the ways a run
can end badly into messages that name the setting to change: out of device memory
(lower the batch size), diverged with ``on_divergence: stop``, interrupted (exit
status 75, EX_TEMPFAIL: run again).
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Sequence

import torch

from randlabels.errors import ResourceError, TrainingDiverged
from randlabels.training.fitloop import FitResult
from randlabels.training.resume import ResumeStore, StopSignals, TrainingInterrupted, fingerprint

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: try again
DIVERGENCE_POLICIES = ("continue", "stop")
# When a job saves its resumable state, unless the config says: at the end of an epoch
# (every RESUME_EVERY-th) once RESUME_MIN_SECONDS of training have passed since the last
# save. The time floor keeps a fast GPU's short epochs from waiting on saves.
RESUME_EVERY = 1
RESUME_MIN_SECONDS = 60.0


def resume_policy(config: dict, exp: str, stage: str) -> dict:
    """``save_every`` and ``save_min_seconds`` of :func:`run_training`, from
    ``experiments.EXP.STAGE.resume_every`` and ``resume_min_seconds`` (stage: pretrain or
    finetune). Read from the config by the job, not passed as rule params: how often a
    job saves does not change what it computes, so changing it must rerun nothing."""
    section = config["experiments"][exp][stage]
    return {"save_every": int(section.get("resume_every", RESUME_EVERY)),
            "save_min_seconds": float(section.get("resume_min_seconds", RESUME_MIN_SECONDS))}


def run_training(
    trainer,
    *,
    resume_path: str | os.PathLike,
    run_settings: dict,
    inputs: Iterable[str],
    where: str,
    save_every: int = 1,
    save_min_seconds: float = 0.0,
    on_divergence: str = "continue",
    log: logging.Logger,
    replicas: Sequence[str] | None = None,
    pack_setting: str | None = None,
    **fit_options,
):
    """Fit ``trainer``, resumable; returns its result and the store to clear later.

    ``run_settings`` and the files ``inputs`` fingerprint the run (a state saved for
    other settings is not resumed); ``where`` is the config section of the training
    settings, named in messages (e.g. ``experiments.digits_cnn.pretrain``); the
    state is saved at the end of every ``save_every``-th epoch that ends at least
    ``save_min_seconds`` after the last save (:func:`resume_policy`). For a
    :class:`~randlabels.training.packed.PackedTrainer`, ``replicas`` names its replicas
    (``"seed 3"``, ``"variant gaussian"``), ``pack_setting`` the key of ``where`` that
    packed them (named when memory runs out), and the result is one
    :class:`FitResult` per replica.

    The run's lock (:class:`~randlabels.training.resume.RunLock`) is taken first (a script
    holds it already, see :func:`~randlabels.training.resume.hold_run`): a run another process
    trains raises :class:`~randlabels.training.resume.RunLocked`. It is held on return, until
    the returned store's ``clear()`` (after the outputs are written), and given back
    if training fails. A learning curve sparser than the run (``eval_every`` above
    its number of steps) is reported in the log.
    """
    if on_divergence not in DIVERGENCE_POLICIES:
        raise ValueError(f"on_divergence must be one of {DIVERGENCE_POLICIES}, got {on_divergence!r}")
    config = trainer.config
    store = ResumeStore(resume_path, fingerprint(run_settings, inputs))
    store.lock.acquire()  # before the state is read or written: one process per run
    log.info("its resumable state is saved every %d epoch%s, at least %g s apart (%s.resume_every, "
             "resume_min_seconds), to %s", save_every, "" if save_every == 1 else "s", save_min_seconds,
             where, resume_path)
    eval_every = fit_options.get("eval_every")
    total_steps = getattr(trainer, "total_steps", None)
    if eval_every and total_steps is not None and eval_every > total_steps:
        log.warning(
            "%s.eval_every (%d) is more than the %d training steps of this run: its learning curve "
            "has the initialization and the last step only; lower %s.eval_every for a finer curve",
            where, eval_every, total_steps, where,
        )
    with StopSignals() as stop:
        try:
            outcome = trainer.fit(resume=store, stop=stop, save_every=save_every,
                                  save_min_seconds=save_min_seconds, **fit_options)
        except TrainingInterrupted as stopped:
            store.lock.release()
            log.error("%s", stopped)
            raise SystemExit(EXIT_INTERRUPTED) from None
        except torch.cuda.OutOfMemoryError as err:
            store.lock.release()
            packed = f" for each of {len(replicas)} packed runs" if replicas else ""
            also = f" or {where}.{pack_setting}" if replicas and pack_setting else ""
            raise ResourceError(
                f"out of memory on {trainer.device} with batch size {config.batch_size}{packed} "
                f"(evaluation batches of {config.eval_batch_size}): lower {where}.batch_size, "
                f"{where}.eval_batch_size{also}. ({str(err).splitlines()[0]})"
            ) from err
        except BaseException:
            store.lock.release()
            raise
    results: list[FitResult] = outcome if replicas else [outcome]
    names = [f"run of {name}" for name in replicas] if replicas else ["run"]
    messages = []
    for name, result in zip(names, results):
        if result.diverged:
            last = result.metrics.iloc[-1]
            messages.append(f"{where}: {name} diverged at epoch {last['epoch']:g} (loss {last['loss']})")
    if messages and on_divergence == "stop":
        store.clear()
        raise TrainingDiverged(
            f"{'; '.join(messages)}; lower the learning rate or the init scale, or set "
            "on_divergence: continue to record such runs as diverged and go on"
        )
    for message in messages:
        log.warning("%s; recorded as diverged (on_divergence: continue)", message)
    return outcome, store
