"""Errors whose message is the whole story: the job log shows it, not a traceback.

A bad config, a damaged input file, a full disk, an exhausted GPU or a diverged run
is not a bug in the code; its message names the key or file and what to do. The
workflow scripts' exception hook (:mod:`randlabels.runlog`) logs these as one line
and keeps tracebacks for everything else, which is a bug worth reading one for.
"""

from __future__ import annotations

import os


class RandlabelsError(Exception):
    """Base of the errors reported to the user by message alone."""


class InputFileError(RandlabelsError, ValueError):
    """A file a job reads is missing, damaged, truncated or of the wrong kind."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


class OutputWriteError(RandlabelsError, OSError):
    """An output could not be written (disk full, file-size limit, read-only folder, ...)."""

    def __init__(
        self, path: str | os.PathLike, reason: str, advice: str = "Free space (or raise the limit) and rerun the workflow."
    ):
        self.path = str(path)
        super().__init__(f"{path}: could not be written ({reason}); no partial file was left behind. {advice}")


class ResourceError(RandlabelsError, RuntimeError):
    """The device ran out of memory; the message names the setting to lower."""


class ModelError(RandlabelsError, ValueError):
    """A model the config names cannot be built or used: its factory does not import,
    raises, or returns something the workflow cannot train and measure. The message
    names the config key (``experiments.NAME.model.arch``) and the cause."""


class TrainingDiverged(RandlabelsError):
    """A run's loss became NaN or infinite and the config says to stop on that."""
