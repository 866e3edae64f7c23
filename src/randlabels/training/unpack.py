"""One variant's learning curve from the table of a packed fine-tuning job.

The ``finetune_packed`` rule writes the curves of every variant of one (task, init
scale, seed) into one table; ``unpack_finetune`` writes each variant's rows to the
file the ``finetune`` rule would have written for it alone. Only pandas is imported,
so that a job that unpacks starts in a fraction of a second.
"""

from __future__ import annotations

import os

import pandas as pd

from randlabels.errors import InputFileError
from randlabels.io import read_table

IDENTITY = ("experiment", "task", "variant", "init_scale", "seed")


def variant_curve(path: str | os.PathLike, variant: str, *, experiment: str, task: str, scale: str, seed: int) -> pd.DataFrame:
    """The rows of ``variant`` in the packed table at ``path``, which must be of this
    run (``experiment``, ``task``, init scale label ``scale``, ``seed``): a table of
    another run copied here is refused, naming what it holds."""
    table = read_table(path)
    missing = [column for column in IDENTITY if column not in table.columns]
    if missing:
        raise InputFileError(path, f"not a fine-tuning table: no column(s) {', '.join(missing)}")
    held = {
        "experiment": {str(value) for value in table["experiment"]},
        "task": {str(value) for value in table["task"]},
        "init scale": {f"{float(value):g}" for value in table["init_scale"]},
        "seed": {str(int(value)) for value in table["seed"]},
    }
    wanted = {"experiment": experiment, "task": task, "init scale": scale, "seed": str(int(seed))}
    for name, want in wanted.items():
        if held[name] != {want}:
            raise InputFileError(path, f"holds the fine-tuning of {name} {', '.join(sorted(held[name]))}, not {want}")
    rows = table[table["variant"] == variant]
    if rows.empty:
        raise InputFileError(path, f"holds variants {', '.join(sorted(set(table['variant'])))}, not {variant}")
    return rows.reset_index(drop=True)
