"""Disjoint upstream / downstream / test subsets and the fixed random labels of each.

A split is drawn once per seed and saved, so every stage that trains or measures on
"the upstream data of seed 3" sees exactly the same samples and labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

from randlabels import provenance
from randlabels.errors import InputFileError
from randlabels.io import atomic_output
from randlabels.seeding import stream_rng

LABEL_KINDS = ("random", "real")


@dataclass
class Split:
    """Index sets into a dataset file, and the random labels drawn for each part."""

    upstream: np.ndarray
    downstream: np.ndarray
    test: np.ndarray
    upstream_random: np.ndarray
    downstream_random: np.ndarray
    upstream_classes: int
    downstream_classes: int
    seed: int

    def labels(self, part: str, kind: str, real_labels: np.ndarray) -> np.ndarray:
        """Training labels of ``part`` ('upstream' | 'downstream'): real or the saved random ones."""
        if kind not in LABEL_KINDS:
            raise ValueError(f"unknown label kind {kind!r}; valid: {', '.join(LABEL_KINDS)}")
        index = getattr(self, part)
        if kind == "real":
            return real_labels[index]
        return getattr(self, f"{part}_random")

    def downstream_task(self, task: str, real_labels: np.ndarray, num_real_classes: int) -> tuple[np.ndarray, int]:
        """Labels and class count of a downstream task: 'real', or 'random{C}' (fresh
        random labels over C classes; C = downstream_classes gives the saved ones)."""
        if task == "real":
            return real_labels[self.downstream], int(num_real_classes)
        if not (task.startswith("random") and task[len("random"):].isdigit()):
            raise ValueError(f"unknown downstream task {task!r}; valid: real, random{{C}} (e.g. random10)")
        classes = int(task[len("random"):])
        if classes < 2:
            raise ValueError(f"downstream task {task!r}: needs at least 2 classes")
        if classes == self.downstream_classes:
            return self.downstream_random, classes
        rng = stream_rng(self.seed, "labels", "downstream", classes)
        return rng.integers(0, classes, len(self.downstream)), classes


def make_split(
    is_test: np.ndarray,
    *,
    upstream: int,
    downstream: int,
    test: int | None,
    upstream_classes: int,
    downstream_classes: int,
    seed: int,
    source: str | os.PathLike = "the dataset",
    where: str = "split",
) -> Split:
    """Draw disjoint subsets; the test part is the official test set when there is one.

    Without an official test set (``is_test`` all False) the test part is drawn from the
    remaining samples. ``test=None`` means "all that is available". A dataset too small
    for the sizes asked for raises an :class:`InputFileError` naming ``source`` (the
    dataset file), the config section ``where`` (``experiments.X.split``) and the numbers.

    ``downstream`` and ``test`` may be 0: an experiment that only pre-trains (on random
    labels) can use every sample upstream; the empty parts are saved as empty arrays.
    (The config check refuses 0 where a stage needs the part: downstream 0 with
    fine-tuning, test 0 with real labels.)
    """
    for name, size in (("upstream", upstream), ("downstream", downstream), ("test", test)):
        if size is not None and (isinstance(size, bool) or int(size) != size or size < (1 if name == "upstream" else 0)):
            raise ValueError(f"{where}.{name}: {size!r} is not a valid size (upstream ≥ 1, downstream and test ≥ 0)")
    is_test = np.asarray(is_test, dtype=bool)
    pool = np.flatnonzero(~is_test)
    official = np.flatnonzero(is_test)
    rng = stream_rng(seed, "split")
    pool = rng.permutation(pool)
    if upstream + downstream > len(pool):
        raise InputFileError(
            source,
            f"{len(pool)} training samples, too few for {where}: upstream {upstream} + downstream "
            f"{downstream} = {upstream + downstream}; lower {where}.upstream / {where}.downstream "
            "or use a larger dataset",
        )
    up, down = pool[:upstream], pool[upstream : upstream + downstream]
    rest = official if len(official) else pool[upstream + downstream :]
    if test is not None and test > len(rest):
        left = "in its test set" if len(official) else f"left for testing after upstream {upstream} + downstream {downstream}"
        raise InputFileError(
            source,
            f"{len(rest)} samples {left}, too few for {where}.test = {test}; lower {where}.test "
            "(or leave it out: all that are left) or use a larger dataset",
        )
    test_index = np.sort(rng.permutation(rest)[: len(rest) if test is None else test])
    return Split(
        upstream=np.sort(up),
        downstream=np.sort(down),
        test=test_index,
        upstream_random=stream_rng(seed, "labels", "upstream").integers(0, upstream_classes, upstream),
        downstream_random=stream_rng(seed, "labels", "downstream").integers(0, downstream_classes, downstream),
        upstream_classes=upstream_classes,
        downstream_classes=downstream_classes,
        seed=seed,
    )


def write_split(split: Split, path: str | os.PathLike) -> None:
    """Save a split as HDF5 (index arrays, random labels, class counts and the
    provenance stamp as attributes)."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        for name in ("upstream", "downstream", "test", "upstream_random", "downstream_random"):
            f.create_dataset(name, data=np.asarray(getattr(split, name), dtype=np.int64))
        f.attrs["upstream_classes"] = split.upstream_classes
        f.attrs["downstream_classes"] = split.downstream_classes
        f.attrs["seed"] = split.seed
        provenance.stamp_into(f.attrs)


def read_split(path: str | os.PathLike) -> Split:
    """Load a split written by :func:`write_split`, naming the file if it is unusable."""
    try:
        with h5py.File(path, "r") as f:
            arrays = {name: f[name][()] for name in ("upstream", "downstream", "test", "upstream_random", "downstream_random")}
            attrs = {k: int(f.attrs[k]) for k in ("upstream_classes", "downstream_classes", "seed")}
    except (OSError, KeyError) as err:
        raise InputFileError(path, f"not a readable split file ({err})") from err
    return Split(**arrays, **attrs)
