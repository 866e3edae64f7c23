"""Atomic outputs: a failed write leaves nothing a rerun could take as done."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from randlabels.io import atomic_output, load_torch, read_table, save_torch, write_table


def test_success_renames_into_place(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_output(target) as tmp:
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    assert list(target.parent.iterdir()) == [target]


def test_failure_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_table_and_checkpoint_round_trip(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "b": [0.5, float("nan")]})
    write_table(frame, tmp_path / "t.tsv")
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.tsv"), frame)
    save_torch({"x": [1, 2]}, tmp_path / "c.pt")
    assert load_torch(tmp_path / "c.pt") == {"x": [1, 2]}


def test_only_what_a_weights_only_load_accepts_is_saved(tmp_path):
    """A value that load_torch would refuse is refused when saving, naming where it is."""
    plain = {"w": torch.zeros(2), "m": torch.nn.Linear(2, 2).state_dict(), "t": (1, 2.5, "x", None, True)}
    save_torch(plain, tmp_path / "ok.pt")
    assert load_torch(tmp_path / "ok.pt")["t"] == (1, 2.5, "x", None, True)
    for value, where in [(np.float64(1.0), "['rows'][0]['loss'] is a numpy.float64"),
                         (np.arange(3), "['rows'][0]['loss'] is a numpy.ndarray"),
                         (pd.Timestamp(0), "['rows'][0]['loss'] is a pandas.")]:
        with pytest.raises(TypeError, match=re.escape(where)):
            save_torch({"rows": [{"loss": value}]}, tmp_path / "bad.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.pt"]


def test_corrupt_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_torch(bad)


def test_a_rerun_removes_temporaries_of_killed_writers_only(tmp_path):
    """kill -9 leaves `.NAME.tmp-PID` behind; the next write of NAME removes it, but not
    the temporary of a writer that still runs, nor those of other files."""
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".table.tsv.tmp-{dead_pid}"
    live = tmp_path / f".table.tsv.tmp-{os.getppid()}"  # a process that exists
    other = tmp_path / f".other.tsv.tmp-{dead_pid}"
    for path in (stale, live, other):
        path.write_text("partial")
    with atomic_output(tmp_path / "table.tsv") as tmp:
        tmp.write_text("done")
    assert (tmp_path / "table.tsv").read_text() == "done"
    assert not stale.exists() and live.exists() and other.exists()
