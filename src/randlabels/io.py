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
import re
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import pandas as pd

from randlabels import provenance
from randlabels.errors import InputFileError, OutputWriteError

# errno values of a write that failed for lack of room (h5py reports them in text).
_NO_ROOM = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file too large", errno.EDQUOT: "disk quota exceeded"}
# ... and of one the folder does not allow (read-only, or not the user's).
_NOT_ALLOWED = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                errno.EROFS: "read-only file system"}
_ADVICE_NOT_ALLOWED = "Make the folder writable (or run the workflow where you may write) and rerun it."


def _reason(err: BaseException | None, reasons: dict) -> str | None:
    """The reason, if ``err`` or an error it arose from has one of the errno values
    of ``reasons`` (or its text, as h5py reports it); writers such as torch.save
    re-raise an OSError as another error."""
    for _ in range(8):
        if err is None:
            return None
        if isinstance(err, OSError) and err.errno in reasons:
            return reasons[err.errno]
        text = str(err).lower()  # h5py: RuntimeError("... error message = 'File too large' ...")
        for reason in reasons.values():
            if reason in text:
                return reason
        err = err.__cause__ or err.__context__
    return None


def _lack_of_room(err: BaseException | None) -> str | None:
    """The reason, if ``err`` or an error it arose from says the disk (or a size
    limit) is full."""
    return _reason(err, _NO_ROOM)


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
    a write that fails for lack of room, or in a folder that may not be written
    (read-only, another user's), becomes an :class:`OutputWriteError` that names
    ``path`` (not the temporary file).
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(final)
    except OSError as err:
        reason = _reason(err, _NOT_ALLOWED)
        if reason is None:
            raise
        raise OutputWriteError(final, f"{reason}: {_unwritable(final.parent)}", _ADVICE_NOT_ALLOWED) from err
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a folder that refused the file may refuse this too; there is nothing to remove then
        if isinstance(err, OutputWriteError):
            raise
        reason = _lack_of_room(err)
        if reason is not None:
            raise OutputWriteError(final, reason) from err
        reason = _reason(err, _NOT_ALLOWED)
        if reason is not None:
            raise OutputWriteError(final, f"{reason}: {_unwritable(final.parent)}", _ADVICE_NOT_ALLOWED) from err
        raise


def _unwritable(folder: Path) -> str:
    """Which folder refused the write: ``folder`` or the first of its parents that exists."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return f"the folder {folder} is not writable"


def _not_weights_only(obj, where: str = "") -> str | None:
    """Where in ``obj`` a value sits that a weights-only load would refuse (None: nowhere).

    Allowed: tensors (and parameters), dict / OrderedDict / list / tuple / set, and
    None, bool, int, float, complex, str, bytes, torch.Size, torch.dtype, torch.device.
    Exact types: a numpy float64 is a float subclass, but pickles as a numpy global.
    """
    import torch

    kind = type(obj)
    if kind in (torch.Tensor, torch.nn.Parameter):
        return None
    if kind in (dict, OrderedDict):
        for key, value in obj.items():
            found = _not_weights_only(key, f"a key of {where or 'the object'}") or _not_weights_only(value, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if kind in (list, tuple, set):
        for i, value in enumerate(obj):
            found = _not_weights_only(value, f"{where}[{i}]")
            if found:
                return found
        return None
    if obj is None or kind in (bool, int, float, complex, str, bytes, torch.Size, torch.dtype, torch.device):
        return None
    return f"{where or 'the object'} is a {kind.__module__}.{kind.__qualname__}"


def save_torch(obj, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_output`.

    Only what :func:`load_torch` accepts (tensors and plain values) may be saved; any
    other value is a TypeError here, not a file that its reader refuses later.
    """
    import torch  # imported here so that tables and plots do not load torch
    problem = _not_weights_only(obj)
    if problem:
        raise TypeError(f"{path}: not saved: {problem}, which a weights-only load refuses; save plain values or tensors")
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        # Through a Python file, a failed write is an OSError with its errno (the
        # C++ writer torch uses for a path reports a bare "iostream error").
        torch.save(obj, handle)


# In the message of torch's weights-only unpickler: the global (a function or class,
# i.e. code) it refused to load or call, or the pickle instruction it does not accept.
_REFUSED_GLOBAL = re.compile(
    r"GLOBAL (\S+) (?:was not an allowed global|whose module)"
    r"|(?:unrecognized function|new object for nn.Parameter or classes allowlisted via `add_safe_globals` but got"
    r"|types allowlisted via `add_safe_globals`, but got) (.+?)(?: which|\n|$)",
    re.M,
)
_REFUSED_OPERAND = re.compile(r"Unsupported operand \d+")


def _refusal(message: str) -> str:
    """What a weights-only load refused, from torch's (long) message."""
    found = _REFUSED_GLOBAL.search(message)
    if found:
        return (
            f"its pickle asks to load or call {found.group(1) or found.group(2)}, "
            "which a file of tensors and plain values never needs"
        )
    found = _REFUSED_OPERAND.search(message)
    detail = found.group(0) if found else message.strip().splitlines()[-1]
    return f"damaged, or its pickle uses an instruction that only a code-running load accepts ({detail})"


def load_torch(path: str | os.PathLike, mmap: bool = False) -> dict:
    """Load a file written by :func:`save_torch`, naming the file on failure
    (``mmap``: tensors memory-mapped, read from disk only when used).

    Loaded weights-only: the pickle inside may only rebuild tensors and plain
    containers and scalars (dict, list, tuple, str, int, float, bool, None), which is
    all that checkpoint sets, initializations, packed bundles and resume states hold
    (optimizer and RNG states included: torch keeps RNG states as byte
    tensors). No other global is allowed. A pickle that asks for anything else, such
    as a crafted file whose payload calls ``os.system``, is refused before any of it
    runs, with an :class:`InputFileError` that names the file.
    """
    import pickle

    import torch
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise InputFileError(path, f"not a readable checkpoint ({err})") from err
        raise InputFileError(
            path,
            f"not a weights-only checkpoint: {_refusal(str(err))}; refused to load it, "
            "and nothing in it ran. The workflow writes only tensors and plain values: do "
            "not trust a file like this one from elsewhere; if an older version of the "
            "workflow wrote it, delete it and rerun the workflow",
        ) from None  # torch's own advice (weights_only=False) is the one not to follow here
    except Exception as err:  # corrupt or truncated file
        raise InputFileError(path, f"not a readable checkpoint ({err})") from err


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a tidy table as tab-separated text, atomically, after its provenance
    (:func:`randlabels.provenance.stamp`) as leading ``# key: value`` lines."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(provenance.table_header())
        frame.to_csv(handle, sep="\t", index=False)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table` (with or without provenance lines).

    Only the leading ``# key: value`` lines are skipped: a '#' in a value is data.
    """
    skip = len(provenance.table_header_lines(path))
    return pd.read_csv(path, sep="\t", skiprows=skip)
