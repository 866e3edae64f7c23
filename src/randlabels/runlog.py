"""Logging for workflow scripts: progress lines to the rule's log file and to stderr.

An uncaught exception is written to the log too, so the log alone tells why a job
failed: a :class:`~randlabels.errors.RandlabelsError` (bad input, full disk, ...) as
its message alone, anything else (a bug) with its traceback. Either way the last line
names the job (its log path under ``logs/``, e.g. ``pretrain/digits_cnn/random/scale0.5/seed0``)
and the log file, so that a failure among parallel jobs' interleaved output says whose
it is and where to read on.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from randlabels.errors import RandlabelsError


def start(log_path: str | None, name: str = "randlabels") -> logging.Logger:
    """Configure the root logger for one job and return a named logger."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)
    logger = logging.getLogger(name)
    previous_hook = sys.excepthook
    where = f"{job_name(log_path)} failed; its log: {log_path}" if log_path else "job failed"

    def log_exception(kind, value, traceback):
        if isinstance(value, RandlabelsError):
            logger.error("%s", value)
        else:
            logger.error("failed: %s: %s", kind.__name__, value, exc_info=(kind, value, traceback))
            previous_hook(kind, value, traceback)
        logger.error("%s", where)

    sys.excepthook = log_exception
    return logger


def job_name(log_path: str) -> str:
    """The job a log belongs to: its path below ``logs/`` without ``.log``
    (``results/logs/pretrain/x/random/scale1/seed0.log`` → ``pretrain/x/random/scale1/seed0``)."""
    parts = Path(log_path).with_suffix("").parts
    return "/".join(parts[parts.index("logs") + 1 :]) if "logs" in parts[:-1] else Path(log_path).stem
