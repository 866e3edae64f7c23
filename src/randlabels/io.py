"""Atomic file outputs, so an interrupted job never leaves a file that looks complete.

Every writer in the library goes through :func:`atomic_output`: the data is written
under a hidden temporary name in the destination folder and renamed into place only
once the write has finished (a rename within one file system is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import pandas as pd


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_torch(obj, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_output`."""
    import torch  # imported here so that tables and plots do not load torch
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`save_torch`, naming the file on failure."""
    import torch
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # corrupt or truncated file
        raise ValueError(f"{path}: not a readable checkpoint ({err})") from err


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a tidy table as tab-separated text, atomically."""
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table`."""
    return pd.read_csv(path, sep="\t")
