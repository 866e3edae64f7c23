"""Logging for workflow scripts: progress lines to the rule's log file and to stderr.

An uncaught exception is written to the log too, so the log alone tells why a job
failed: a :class:`~randlabels.errors.RandlabelsError` (bad input, full disk, ...) as
its message alone, anything else (a bug) with its traceback.
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

    def log_exception(kind, value, traceback):
        if isinstance(value, RandlabelsError):
            logger.error("%s", value)
            return
        logger.error("failed: %s: %s", kind.__name__, value, exc_info=(kind, value, traceback))
        previous_hook(kind, value, traceback)

    sys.excepthook = log_exception
    return logger
