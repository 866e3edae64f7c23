"""Atomic file outputs, so an interrupted job never leaves a file that looks complete.

Every writer in the library goes through :func:`atomic_output`: the data is written
under a hidden temporary name in the destination folder and renamed into place only
once the write has finished (a rename within one file system is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
from pathlib import Path
from typing import Iterator

import pandas as pd

from randlabels.errors import InputFileError, OutputWriteError

# errno values of a write that failed for lack of room (h5py reports them in text).
_NO_ROOM = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file too large", errno.EDQUOT: "disk quota exceeded"}


def _lack_of_room(err: BaseException | None) -> str | None:
    """The reason, if ``err`` or an error it arose from says the disk (or a size
    limit) is full; writers such as torch.save re-raise it as another error."""
    for _ in range(8):
        if err is None:
            return None
        if isinstance(err, OSError) and err.errno in _NO_ROOM:
            return _NO_ROOM[err.errno]
        text = str(err).lower()  # h5py: RuntimeError("... error message = 'File too large' ...")
        for reason in _NO_ROOM.values():
            if reason in text:
                return reason
        err = err.__cause__ or err.__context__
    return None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_stale_temporaries(final: Path) -> None:
    """Remove temporary files of ``final`` left by writers that no longer run (a job
    killed with SIGKILL cannot clean up after itself; its rerun does)."""
    for stale in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_exists(int(pid)):
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched;
    a write that fails for lack of room becomes an :class:`OutputWriteError` that
    names ``path``.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        reason = _lack_of_room(err)
        if reason is not None and not isinstance(err, OutputWriteError):
            raise OutputWriteError(final, reason) from err
        raise


def save_torch(obj, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_output`."""
    import torch  # imported here so that tables and plots do not load torch
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        # Through a Python file, a failed write is an OSError with its errno (the
        # C++ writer torch uses for a path reports a bare "iostream error").
        torch.save(obj, handle)


def load_torch(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`save_torch`, naming the file on failure."""
    import torch
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # corrupt or truncated file
        raise InputFileError(path, f"not a readable checkpoint ({err})") from err


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a tidy table as tab-separated text, atomically."""
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table`."""
    return pd.read_csv(path, sep="\t")
