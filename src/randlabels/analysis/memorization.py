"""Did a random-label pre-training memorize anything? A run whose final training
accuracy lies within binomial noise of chance has learned nothing: it "collapsed"
(typically its hidden ReLU units died in the first epochs and the first layer froze).
Its statistics describe an untrained network, not what random-label training learns,
so it stays in every table with ``collapsed`` set, and the figures say how many.

The bound (docs/METHODS.md): with K classes and n training samples, accuracy at chance
has mean p = 1/K and standard deviation sqrt(p (1 − p) / n); a run collapsed when its
final training accuracy is at most p + 3 of those. Only random-label runs are judged:
real-label runs are read by their test accuracy.
"""

from __future__ import annotations

import math

import pandas as pd

RUN_KEYS = ["experiment", "labels", "init_scale", "seed"]
SIGMAS = 3.0


def chance_bound(classes: int, samples: int, sigmas: float = SIGMAS) -> float:
    """Training accuracy up to which a run is indistinguishable from guessing."""
    p = 1.0 / int(classes)
    return p + sigmas * math.sqrt(p * (1.0 - p) / int(samples))


def collapsed_runs(metrics: pd.DataFrame, classes: int, samples: int) -> pd.DataFrame:
    """One row per run of a pre-training metrics table: its final training accuracy and
    whether it collapsed (random labels only; NaN accuracy, i.e. diverged, is not)."""
    last = metrics.sort_values("epoch").drop_duplicates(RUN_KEYS, keep="last")  # the final row, NaN kept
    bound = chance_bound(classes, samples)
    runs = last[RUN_KEYS].copy()
    runs["final_train_acc"] = last["train_acc"].to_numpy()
    runs["collapsed"] = (last["labels"] == "random").to_numpy() & (last["train_acc"] <= bound).to_numpy()
    return runs.reset_index(drop=True)


def with_collapsed(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the ``collapsed`` flag of its runs (False for runs not listed);
    a table without run columns (an empty one) is returned as it is. ``runs`` may hold
    several rows per run (the pre-training metrics table: one per epoch); each run's
    flag is joined once, so no row of ``table`` is repeated."""
    if not set(RUN_KEYS) <= set(table.columns):
        return table
    flags = runs[RUN_KEYS + ["collapsed"]].drop_duplicates(RUN_KEYS, keep="last")
    merged = table.drop(columns=["collapsed"], errors="ignore").merge(flags, on=RUN_KEYS, how="left")
    merged["collapsed"] = merged["collapsed"].fillna(False).astype(bool)
    return merged


def collapsed_keys(runs: pd.DataFrame | None) -> set:
    """(experiment, labels, init_scale, seed) of the runs ``runs`` flags collapsed."""
    if runs is None or runs.empty or "collapsed" not in runs.columns:
        return set()
    flagged = runs[runs["collapsed"].astype(str).str.lower().eq("true")]
    return {(str(e), str(lab), float(s), int(seed))
            for e, lab, s, seed in flagged[RUN_KEYS].itertuples(index=False)}


def collapsed_count(facet: pd.DataFrame, keys=("labels", "seed")) -> int:
    """How many distinct runs of a plotted facet are flagged collapsed."""
    if "collapsed" not in facet.columns or facet.empty:
        return 0
    runs = facet.drop_duplicates(list(keys))
    return int(runs["collapsed"].astype(str).str.lower().eq("true").sum())
