"""Collapsed random-label runs: the chance bound, the per-run flag, and the figures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from randlabels.analysis.memorization import chance_bound, collapsed_count, collapsed_runs, with_collapsed


def test_chance_bound_is_three_binomial_sigmas_above_chance():
    assert chance_bound(10, 3000) == pytest.approx(0.1 + 3 * math.sqrt(0.1 * 0.9 / 3000))
    assert chance_bound(2, 100) == pytest.approx(0.5 + 3 * 0.05)


def _metrics(final: dict) -> pd.DataFrame:
    rows = []
    for (labels, seed), acc in final.items():
        for epoch, value in ((0, 0.1), (5, acc)):
            rows.append({"experiment": "e", "labels": labels, "init_scale": 1.0, "seed": seed,
                         "epoch": epoch, "train_acc": value})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # order must not matter


def test_only_random_runs_at_chance_are_collapsed():
    metrics = _metrics({("random", 0): 0.105, ("random", 1): 0.60, ("real", 0): 0.10, ("random", 2): np.nan})
    runs = collapsed_runs(metrics, classes=10, samples=3000).set_index(["labels", "seed"])
    assert runs.loc[("random", 0), "collapsed"]  # 0.105 < 0.1164
    assert not runs.loc[("random", 1), "collapsed"]
    assert not runs.loc[("real", 0), "collapsed"]  # real labels are judged by test accuracy
    assert not runs.loc[("random", 2), "collapsed"]  # NaN: diverged, flagged as such elsewhere
    assert runs.loc[("random", 1), "final_train_acc"] == 0.60


def test_tables_carry_the_flag_and_figures_count_runs():
    runs = collapsed_runs(_metrics({("random", 0): 0.1, ("random", 1): 0.9}), classes=10, samples=1000)
    table = pd.DataFrame({"experiment": "e", "labels": "random", "init_scale": 1.0, "seed": [0, 0, 1, 1, 2],
                          "epoch": [0, 5, 0, 5, 5]})
    flagged = with_collapsed(table, runs)
    assert flagged["collapsed"].tolist() == [True, True, False, False, False]  # seed 2 unknown: False
    assert collapsed_count(flagged) == 1
    assert with_collapsed(pd.DataFrame(), runs).empty  # an empty table stays as it is


def test_a_per_epoch_metrics_table_flags_each_row_once():
    """aggregate_statistics joins the pre-training metrics table (one row per epoch and
    run, flag included): every statistics row must stay one row, not one per epoch."""
    metrics = _metrics({("random", 0): 0.1, ("random", 1): 0.9})
    metrics = metrics.merge(collapsed_runs(metrics, classes=10, samples=1000)[["labels", "seed", "collapsed"]])
    assert metrics.groupby("seed").size().min() > 1  # several epochs per run
    table = pd.DataFrame({"experiment": "e", "labels": "random", "init_scale": 1.0, "seed": [0, 1], "epoch": [5, 5]})
    flagged = with_collapsed(table, metrics)
    assert len(flagged) == 2 and flagged["collapsed"].tolist() == [True, False]
