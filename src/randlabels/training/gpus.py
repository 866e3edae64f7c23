"""Binding each training job to its own GPU on a machine with several.

Snakemake's ``--resources gpu=N`` caps how many GPU jobs run at once but never says
which device a job should use, so without binding every job would start on GPU 0.
Each job that asks for GPUs claims free devices here with an exclusive ``flock`` on
a per-device slot file and narrows ``CUDA_VISIBLE_DEVICES`` to them before CUDA is
initialized. The kernel drops a lock when its process ends, however it ends (a
``kill -9`` included), so no slot stays claimed by a dead job.

``jobs_per_gpu`` slots per device allow deliberate sharing of one GPU by several
small jobs (then run with ``--resources gpu=N*jobs_per_gpu``). Under SLURM the
allocation already binds the job (SLURM sets CUDA_VISIBLE_DEVICES), so nothing is
done there. ``RANDLABELS_FAKE_GPUS`` (e.g. ``0,1``) stands in for the device list in
tests on machines without a GPU.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

FAKE_ENV = "RANDLABELS_FAKE_GPUS"
LOCK_DIR_ENV = "RANDLABELS_GPU_LOCK_DIR"

log = logging.getLogger("randlabels")

_held: list = []  # open lock files: kept for the life of the process


def visible_gpus() -> list[str]:
    """Device ids this process may use, without initializing CUDA.

    From ``RANDLABELS_FAKE_GPUS`` (tests), else ``CUDA_VISIBLE_DEVICES`` when set,
    else the devices ``nvidia-smi`` lists (none on a machine without it).
    """
    for variable in (FAKE_ENV, "CUDA_VISIBLE_DEVICES"):
        value = os.environ.get(variable)
        if value is not None:
            return [item.strip() for item in value.split(",") if item.strip() and item.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.strip() for line in listing.splitlines() if line.strip()]


def _lock_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"randlabels-gpu-locks-{os.getuid()}"
    path = Path(os.environ.get(LOCK_DIR_ENV, default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _try_claim(device: str, jobs_per_gpu: int):
    """An open, locked slot file of ``device``, or None when all its slots are taken."""
    for slot in range(jobs_per_gpu):
        handle = open(_lock_dir() / f"gpu-{device}-slot{slot}.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return handle
    return None


def bind_gpus(count: int, jobs_per_gpu: int = 1, poll_seconds: float = 2.0) -> list[str]:
    """Claim ``count`` devices for this process and make them the only visible ones.

    Returns the claimed ids ([] when ``count`` is 0, under SLURM, or when no GPU is
    visible: the job then runs where its device setting says). Waits, with a log line
    now and then, while every slot is taken: that happens only when more GPU jobs run
    than ``--resources gpu=N`` should allow.
    """
    if count <= 0:
        return []
    if os.environ.get("SLURM_JOB_ID") and FAKE_ENV not in os.environ:
        log.info("GPU binding left to SLURM (CUDA_VISIBLE_DEVICES=%s)", os.environ.get("CUDA_VISIBLE_DEVICES"))
        return []
    devices = visible_gpus()
    if not devices:
        log.info("no GPU visible: nothing to bind")
        return []
    if count > len(devices):
        raise ValueError(f"a job asks for {count} GPUs but only {len(devices)} are visible ({','.join(devices)})")
    waited = 0.0
    while True:
        claimed = []
        for device in devices:
            handle = _try_claim(device, jobs_per_gpu)
            if handle is not None:
                claimed.append((device, handle))
                if len(claimed) == count:
                    break
        if len(claimed) == count:
            break
        for _, handle in claimed:  # all or nothing, so two jobs never deadlock
            handle.close()
        if waited % 60 < poll_seconds:
            log.warning("all %d GPU slots are taken; waiting (run with --resources gpu=N to queue jobs in Snakemake)",
                        len(devices) * jobs_per_gpu)
        time.sleep(poll_seconds)
        waited += poll_seconds
    _held.extend(handle for _, handle in claimed)
    ids = [device for device, _ in claimed]
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    log.info("bound to GPU %s", ",".join(ids))
    return ids
