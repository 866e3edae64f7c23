"""A packed pre-training job: a group of seeds trained by one PackedTrainer, resumable.

What :func:`randlabels.training.job.run_training` does around ``Trainer.fit``, for a
:class:`~randlabels.training.packed.PackedTrainer`: resume from the group's side state, save
and exit 75 on SLURM's signals, name the batch-size setting when the device runs out
of memory; and the divergence policy per seed: a replica that diverged is flagged in
its own results (``on_divergence: continue``), or fails the job with a message that
names its seed (``stop``).

The bundle (:func:`save_bundle`) holds, per seed, exactly what the ``pretrain`` rule
would write for it: the arguments of :func:`randlabels.training.checkpoints.save_checkpoints` and
the metrics table; the ``unpack_pretrain`` rule writes them to the usual per-seed
files.
"""

from __future__ import annotations

import os
from typing import Sequence

import pandas as pd

from randlabels import provenance
from randlabels.errors import InputFileError
from randlabels.identity import expect_identity
from randlabels.io import load_torch, save_torch
from randlabels.training.checkpoints import checkpoint_fields, checkpoint_identity
from randlabels.training.fitloop import FitResult
from randlabels.training.job import run_training
from randlabels.training.packed import PackedTrainer
from randlabels.training.resume import ResumeStore

BUNDLE_FORMAT = "randlabels-pretrain-bundle-1"


def run_packed_training(trainer: PackedTrainer, *, seeds: Sequence[int], **options) -> tuple[list[FitResult], ResumeStore]:
    """Fit every replica of ``trainer`` (replica r is seed ``seeds[r]``), resumable.

    ``training_job.run_training`` for a group: the same options, one result per seed,
    the divergence policy applied per seed; the resume state holds the whole group.
    """
    if len(seeds) != trainer.replicas:
        raise ValueError(f"{len(seeds)} seeds for {trainer.replicas} replicas")
    return run_training(trainer, replicas=[f"seed {seed}" for seed in seeds], pack_setting="pack_seeds", **options)


def save_bundle(path: str | os.PathLike, runs: dict[int, dict]) -> None:
    """Write the outputs of a group: ``runs`` maps each seed to
    ``{"checkpoints": <save_checkpoints keyword arguments>, "metrics": DataFrame}``;
    the bundle's ``"provenance"`` is the packed job's (each unpacked file gets its own)."""
    save_torch(
        {
            "format": BUNDLE_FORMAT,
            "runs": {
                int(seed): {
                    "checkpoints": checkpoint_fields(**run["checkpoints"]),
                    # Plain lists, not a pickled DataFrame (stable across pandas versions).
                    "metrics": {column: run["metrics"][column].tolist() for column in run["metrics"].columns},
                }
                for seed, run in runs.items()
            },
            "provenance": provenance.stamp(),
        },
        path,
    )


def read_bundle_run(path: str | os.PathLike, seed: int, expect: dict | None = None) -> tuple[dict, pd.DataFrame]:
    """One seed's save_checkpoints keyword arguments and metrics table from a bundle.

    Given ``expect`` (an identity, see :func:`randlabels.identity.expected`), the
    seed's entry must have been written for that run (experiment, labels, init scale,
    seed): a bundle of another configuration copied here is refused naming both.
    """
    data = load_torch(path)
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise InputFileError(path, f"not a randlabels pre-training bundle (format {BUNDLE_FORMAT})")
    if int(seed) not in data["runs"]:
        raise InputFileError(path, f"holds seeds {sorted(data['runs'])}, not seed {seed}")
    run = data["runs"][int(seed)]
    if expect is not None:
        expect_identity(checkpoint_identity(run["checkpoints"]), expect, path)
    return run["checkpoints"], pd.DataFrame(run["metrics"])
