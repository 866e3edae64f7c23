"""Misalignment of Σw pooled over seeds (issue 13, item 5): the pooled covariance, the
``misalignment_pooled`` table read from statistics files, the aggregate rule's script
that writes it and the misalignment figure that draws it."""

from __future__ import annotations

import logging
import math
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest

from randlabels import provenance
from randlabels.analysis.measure import CheckpointRecord, measure_layer
from randlabels.io import read_table, write_table
from randlabels.analysis.stats import (
    misalignment,
    pool_filters,
    random_orthonormal_basis,
    weight_statistics,
)
from randlabels.analysis.statsfile import POOLED_COLUMNS, misalignment_table, pooled_misalignment_table, write_stats

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow" / "scripts"
D = 3
COV_X = np.diag([3.0, 2.0, 1.0])
BASIS_SEEDS = {0: 101, 1: 202, 2: 303}


# --------------------------------------------------------------------------- the pooled Σw


def test_pooled_covariance_is_within_plus_between_seeds():
    """METHODS.md: Σw of the stacked filters = (Σ_r (n_r − 1) Σ_r + Σ_r n_r (μ_r − μ)(μ_r − μ)ᵀ) / (n − 1)."""
    rng = np.random.default_rng(0)
    blocks = [rng.normal(loc=rng.normal(size=5), size=(n, 5)) for n in (7, 11, 4)]
    mu, cov = weight_statistics(pool_filters(blocks))
    n = sum(len(b) for b in blocks)
    expected = np.zeros((5, 5))
    for b in blocks:
        mu_r, cov_r = weight_statistics(b)
        expected += (len(b) - 1) * cov_r + len(b) * np.outer(mu_r - mu, mu_r - mu)
    np.testing.assert_allclose(cov, expected / (n - 1), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(mu, np.concatenate(blocks).mean(axis=0), rtol=1e-12)


# --------------------------------------------------------------------------- statistics files


def _rank_deficient_filters(seed: int) -> np.ndarray:
    """Filters of one seed in a plane of R³ (Σw of rank 2: singular); the planes of seeds
    0 and 1 differ, so their filters pooled span R³."""
    rng = np.random.default_rng(seed)
    plane = np.eye(D)[[0, 1]] if seed == 0 else np.eye(D)[[1, 2]]
    return rng.normal(size=(6, 2)) @ plane * (1.0 + seed)


def _write(path: Path, seed: int, weights: np.ndarray, *, diverged=False, labels="random",
           cov_x=COV_X, shared=True, deeper: np.ndarray | None = None, trained: np.ndarray | None = None) -> Path:
    """One seed's statistics file: ``weights`` at epoch 0, and at epoch 4 ``trained``
    (default: the weights grown fivefold)."""
    basis = random_orthonormal_basis(D, BASIS_SEEDS[seed])
    records = []
    for epoch in (0, 4):
        record = CheckpointRecord(epoch=epoch)
        now = weights * (1 + epoch) if trained is None or epoch == 0 else trained
        record.layers.append(measure_layer(cov_x, np.zeros(D), now, "conv1", basis,
                                           shared_input=shared, random_basis_seed=BASIS_SEEDS[seed]))
        if deeper is not None:
            record.layers.append(measure_layer(np.eye(D), np.zeros(D), deeper, "fc1", basis,
                                               random_basis_seed=BASIS_SEEDS[seed]))
        records.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_stats(path, records, {"experiment": "toy", "labels": labels, "init_scale": 0.5, "seed": seed,
                                "arch": "cnn2", "diverged": diverged, "source": "x"})
    return path


def _stats_path(root: Path, seed: int, labels: str = "random") -> Path:
    return root / "results" / "toy" / "stats" / labels / "scale0.5" / f"seed{seed}.h5"


def test_rank_deficient_seeds_pool_to_a_finite_score(tmp_path):
    """Each seed's Σw is singular (per-seed rows NaN), the pooled one is not: its score
    is stats.misalignment of the stacked filters against the mean Σx, and its control
    the mean over the seeds' own random bases."""
    weights = {seed: _rank_deficient_filters(seed) for seed in (0, 1)}
    cov_x1 = COV_X + 0.1 * np.ones((D, D))  # seed 1's split saw slightly other data
    paths = [_write(_stats_path(tmp_path, 0), 0, weights[0]),
             _write(_stats_path(tmp_path, 1), 1, weights[1], cov_x=cov_x1)]
    per_seed = misalignment_table(paths)
    assert per_seed["misalignment"].isna().all() and per_seed["reason"].str.contains("singular").all()

    pooled = pooled_misalignment_table(paths)
    assert list(pooled.columns) == POOLED_COLUMNS
    assert len(pooled) == (1 + 2) * 2  # (epoch 0: the weights; epoch 4: the weights and the change) × bases
    assert list(pooled.loc[pooled["epoch"] == 0, "of"]) == ["weights"] * 2
    # The change from epoch 0 to 4 is 4 × the initial filters: the same Σw up to scale,
    # and M does not depend on scale.
    change = pooled[(pooled["epoch"] == 4) & (pooled["of"] == "change")].set_index("basis")
    initial = pooled[pooled["epoch"] == 0].set_index("basis")
    for basis in ("data", "random"):
        assert change.loc[basis, "misalignment"] == pytest.approx(initial.loc[basis, "misalignment"], rel=1e-9)
    pooled = pooled[pooled["of"] == "weights"]
    last = pooled[pooled["epoch"] == 4].set_index("basis")
    assert (last["seeds"] == 2).all() and (last["filters"] == 12).all() and (last["reason"] == "").all()
    _, cov_w = weight_statistics(pool_filters([weights[0] * 5, weights[1] * 5]))
    mean_x = (COV_X + cov_x1) / 2
    assert math.isfinite(last.loc["data", "misalignment"])
    assert last.loc["data", "misalignment"] == pytest.approx(misalignment(mean_x, cov_w), rel=1e-12)
    control = np.mean([misalignment(mean_x, cov_w, basis=random_orthonormal_basis(D, BASIS_SEEDS[s])) for s in (0, 1)])
    assert last.loc["random", "misalignment"] == pytest.approx(control, rel=1e-12)


def test_the_change_from_initialization_is_pooled_beside_the_weights(tmp_path):
    """Random initial filters, moved by ±a·e0, ±b·e1, ±c·e2 (Σx's eigenvectors): the
    change's pooled covariance is diagonal, so its data-basis misalignment is 0 where
    that of the trained filters (initial noise plus change) is not."""
    rng = np.random.default_rng(5)
    move = np.concatenate([[a * row, -a * row] for a, row in zip((3.0, 2.0, 1.0), np.eye(D))])  # (6, D), mean 0
    start = {seed: rng.normal(size=(6, D)) for seed in (0, 1)}
    paths = [_write(_stats_path(tmp_path, s), s, start[s], trained=start[s] + move) for s in (0, 1)]
    pooled = pooled_misalignment_table(paths)
    last = pooled[pooled["epoch"] == 4].set_index(["of", "basis"])["misalignment"]
    assert last.loc[("change", "data")] == pytest.approx(0.0, abs=1e-9)
    _, cov_change = weight_statistics(pool_filters([move, move]))
    control = np.mean([misalignment(COV_X, cov_change, basis=random_orthonormal_basis(D, BASIS_SEEDS[s]))
                       for s in (0, 1)])
    assert last.loc[("change", "random")] == pytest.approx(control, rel=1e-12) and control > 0.1
    _, cov_w = weight_statistics(pool_filters([start[0] + move, start[1] + move]))
    assert last.loc[("weights", "data")] == pytest.approx(misalignment(COV_X, cov_w), rel=1e-12)
    assert misalignment(COV_X, cov_w) > 0.01
    rows = pooled[(pooled["epoch"] == 4) & (pooled["of"] == "change")]
    assert (rows["seeds"] == 2).all() and (rows["filters"] == 12).all() and (rows["reason"] == "").all()


def test_a_seed_without_epoch_0_gives_its_change_a_reason(tmp_path):
    """A damaged file that lost its initialization: the weights are still pooled at epoch
    4, the change cannot be, and its rows say why instead of failing."""
    rng = np.random.default_rng(6)
    paths = [_write(_stats_path(tmp_path, s), s, rng.normal(size=(8, D))) for s in (0, 1)]
    with h5py.File(paths[1], "a") as f:
        del f["epoch_0000"]
    pooled = pooled_misalignment_table(paths)
    last = pooled[pooled["epoch"] == 4]
    weights, change = last[last["of"] == "weights"], last[last["of"] == "change"]
    assert weights["misalignment"].notna().all() and (weights["seeds"] == 2).all()
    assert change["misalignment"].isna().all() and len(change) == 2
    assert (change["reason"] == "no epoch 0 of layer conv1 to subtract").all()


def test_diverged_and_collapsed_seeds_are_left_out(tmp_path):
    rng = np.random.default_rng(3)
    weights = {seed: rng.normal(size=(8, D)) for seed in (0, 1, 2)}
    weights[2][0, 0] = 1e3  # would dominate the pooled Σw if it were pooled
    paths = [_write(_stats_path(tmp_path, s), s, weights[s], diverged=s == 2) for s in (0, 1, 2)]
    pooled = pooled_misalignment_table(paths)
    row = pooled[(pooled["epoch"] == 0) & (pooled["basis"] == "data")].iloc[0]
    assert row["seeds"] == 2 and row["filters"] == 16 and row["left_out"] == "seed 2: diverged"
    _, cov_w = weight_statistics(pool_filters([weights[0], weights[1]]))
    assert row["misalignment"] == pytest.approx(misalignment(COV_X, cov_w), rel=1e-12)

    runs = pd.DataFrame({"experiment": "toy", "labels": "random", "init_scale": 0.5, "seed": [0, 1, 2],
                         "epoch": 4, "collapsed": ["False", "True", "False"]})  # strings, as from a TSV
    pooled = pooled_misalignment_table(paths, runs)
    row = pooled[(pooled["epoch"] == 0) & (pooled["basis"] == "data")].iloc[0]
    assert row["seeds"] == 1 and row["left_out"] == "seed 1: collapsed; seed 2: diverged"
    _, cov_w = weight_statistics(weights[0])
    assert row["misalignment"] == pytest.approx(misalignment(COV_X, cov_w), rel=1e-12)

    everyone = runs.assign(collapsed=True)
    pooled = pooled_misalignment_table(paths, everyone)
    assert pooled["misalignment"].isna().all() and (pooled["seeds"] == 0).all()
    assert pooled["reason"].str.startswith("no seed left to pool").all()


def test_a_non_finite_seed_is_left_out_and_a_deeper_layer_is_not_pooled(tmp_path):
    rng = np.random.default_rng(4)
    good = rng.normal(size=(8, D))
    deeper = rng.normal(size=(8, D))
    paths = [_write(_stats_path(tmp_path, 0), 0, good, deeper=deeper),
             _write(_stats_path(tmp_path, 1), 1, good, deeper=deeper)]
    with h5py.File(paths[1], "a") as f:  # no checkpoint is non-finite; a damaged file could be
        for epoch in ("epoch_0000", "epoch_0004"):
            f[epoch]["conv1"]["weights"][0, 0] = np.nan
    pooled = pooled_misalignment_table(paths)
    conv = pooled[pooled["layer"] == "conv1"]
    assert (conv["seeds"] == 1).all() and (conv["left_out"] == "seed 1: non-finite weights").all()
    assert conv["misalignment"].notna().all()
    fc = pooled[pooled["layer"] == "fc1"]
    assert len(fc) == (1 + 2) * 2 and fc["misalignment"].isna().all()  # epoch 0; epoch 4 of the weights and the change
    assert fc["reason"].str.contains("not pooled").all()


def test_a_file_from_before_pooling_gives_a_reason_not_a_crash(tmp_path):
    paths = [_write(_stats_path(tmp_path, s), s, np.random.default_rng(s).normal(size=(8, D))) for s in (0, 1)]
    with h5py.File(paths[1], "a") as f:
        for epoch in ("epoch_0000", "epoch_0004"):
            del f[epoch]["conv1"].attrs["shared_input"]
            del f[epoch]["conv1"].attrs["random_basis_seed"]
    pooled = pooled_misalignment_table(paths)
    assert pooled["misalignment"].isna().all()
    assert pooled["reason"].str.contains("written before pooled misalignment existed").all()
    assert pooled["reason"].str.contains("rerun rule statistics").all()


def test_measure_checkpoints_marks_only_the_first_layer_shared(tmp_path):
    import torch

    from randlabels.analysis.measure import measure_checkpoints
    from randlabels.inits.pretrained import clone_state, fresh_model, load_into
    from randlabels.models.networks import build_model
    from randlabels.seeding import stream_seed

    spec = {"arch": "cnn2", "filters": 12, "kernel_size": 3, "hidden": 4}
    model = fresh_model(spec, (1, 4, 4), 3, 1.0, seed=0)
    inputs = [torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))]
    records = measure_checkpoints(build_model(spec, (1, 4, 4), 3), {0: clone_state(model)}, ["first", "fc1"],
                                  batches=lambda: iter(inputs), seed=3, load=lambda m, s: load_into(m, s, "memory"))
    first, fc = records[0].layers
    assert first.shared_input and not fc.shared_input
    assert first.random_basis_seed == stream_seed(3, "random-basis", first.layer)
    path = tmp_path / "run.h5"
    write_stats(path, records, {"experiment": "toy", "labels": "random", "init_scale": 0.5, "seed": 3,
                                "arch": "cnn2", "diverged": False, "source": "x"})
    with h5py.File(path) as f:
        sub = f["epoch_0000"][first.layer]
        assert bool(sub.attrs["shared_input"]) and int(sub.attrs["random_basis_seed"]) == first.random_basis_seed


# --------------------------------------------------------------------------- the rule's script


def test_aggregate_statistics_writes_the_pooled_table(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    paths = [str(_write(_stats_path(tmp_path, s, labels), s, rng.normal(size=(8, D)), labels=labels))
             for labels in ("random", "real") for s in (0, 1)]
    metrics = pd.DataFrame([{"experiment": "toy", "labels": labels, "init_scale": 0.5, "seed": s, "epoch": 4,
                             "train_acc": 0.9, "collapsed": False} for labels in ("random", "real") for s in (0, 1)])
    write_table(metrics, tmp_path / "pretrain_metrics.tsv")
    tables = tmp_path / "results" / "toy" / "tables"
    fake = SimpleNamespace(
        input=SimpleNamespace(stats=paths, pretrain_metrics=str(tmp_path / "pretrain_metrics.tsv")),
        output=SimpleNamespace(**{name: str(tables / f"{name}.tsv") for name in
                                  ("misalignment", "misalignment_pooled", "transfer_function", "activations")}),
        log=[str(tmp_path / "logs" / "aggregate.log")],
        rule="aggregate_statistics",
        params=SimpleNamespace(),
    )
    monkeypatch.syspath_prepend(str(SCRIPTS))
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # runlog.start replaces it
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        runpy.run_path(str(SCRIPTS / "aggregate_statistics.py"), init_globals={"snakemake": fake}, run_name="__main__")
    finally:
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers[:], root.level = saved
        logging.captureWarnings(False)
        provenance.forget_job()
    pooled = read_table(tables / "misalignment_pooled.tsv")
    assert list(pooled.columns) == POOLED_COLUMNS
    assert len(pooled) == 2 * (1 + 2) * 2  # label kinds × (epoch 0; epoch 4 of the weights and the change) × bases
    assert set(pooled["labels"]) == {"random", "real"} and (pooled["seeds"] == 2).all()
    assert pooled["misalignment"].notna().all()
    per_seed = read_table(tables / "misalignment.tsv")
    assert len(per_seed) == 2 * 2 * 2 * 2 and "pooled" not in per_seed.columns


# --------------------------------------------------------------------------- the figure


def _tables():
    rng = np.random.default_rng(0)
    rows, pooled = [], []
    for scale in (0.5, 1.0):
        for labels in ("random", "real"):
            for basis in ("data", "random"):
                for epoch in (0, 5, 10):
                    for seed in range(3):
                        rows.append(dict(experiment="cnn2", labels=labels, init_scale=scale, seed=seed, epoch=epoch,
                                         layer="conv1", basis=basis, misalignment=2 + rng.random(), reason="",
                                         diverged=False, collapsed=seed == 2 and labels == "random"))
                    for of in ("weights", "change") if epoch else ("weights",):  # the figure draws the weights'
                        pooled.append(dict(experiment="cnn2", labels=labels, init_scale=scale, epoch=epoch,
                                           layer="conv1", of=of, basis=basis,
                                           misalignment=50.0 if of == "change" else 0.4 if basis == "data" else 1.2,
                                           seeds=2, filters=128, left_out="seed 2: collapsed", reason=""))
    return pd.DataFrame(rows), pd.DataFrame(pooled, columns=POOLED_COLUMNS)


def _drawn(monkeypatch, table, out, **kwargs):
    """Draw the figure; its pooled lines (gid "pooled") and legend texts."""
    from randlabels.plots import misalignment as figure

    captured = {}
    save = figure.style.save_figure

    def keep(fig, path):
        captured["pooled"] = [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == figure.POOLED_GID]
        captured["legend"] = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        captured["text"] = " ".join(t.get_text() for t in fig.texts)
        save(fig, path)

    monkeypatch.setattr(figure.style, "save_figure", keep)
    figure.plot(table, out, **kwargs)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return captured


def test_the_figure_draws_the_pooled_score_from_its_table_or_path(tmp_path, monkeypatch):
    per_seed, pooled = _tables()
    drawn = _drawn(monkeypatch, per_seed, tmp_path / "a.png", pooled=pooled)
    assert len(drawn["pooled"]) == 2 * 2 * 2  # facets × label kinds × bases
    line = drawn["pooled"][0]
    assert line.get_marker() == "*" and list(line.get_xdata()) == [0, 5, 10]
    assert set(line.get_ydata()) <= {0.4, 1.2}
    assert "pooled over 2 seeds (one Σw)" in drawn["legend"]
    assert "stars: Σw of all filters" in drawn["text"]

    write_table(pooled, tmp_path / "pooled.tsv")
    drawn = _drawn(monkeypatch, per_seed, tmp_path / "b.png", pooled=str(tmp_path / "pooled.tsv"))
    assert len(drawn["pooled"]) == 8

    without = _drawn(monkeypatch, per_seed, tmp_path / "c.png")
    assert without["pooled"] == [] and not any("pooled" in t for t in without["legend"])


def test_the_paper_target_table_carries_the_pooled_rows(tmp_path, monkeypatch):
    from randlabels.workflow import targets

    per_seed, pooled = _tables()
    info = {"cnn2": {"model": "cnn2", "augment": "none", "kernel_size": 3, "from_labels": "random"}}
    table, figure_table = targets.combine("fig_misalignment", {"misalignment": per_seed, "misalignment_pooled": pooled}, info)
    assert "misalignment_pooled" in targets.TARGETS["fig_misalignment"].tables
    assert table["pooled"].sum() == len(pooled) and (~table["pooled"]).sum() == len(per_seed)
    assert table.loc[table["pooled"], "seed"].isna().all() and str(table["seed"].dtype) == "Int64"
    write_table(table, tmp_path / "fig_misalignment.tsv")
    again = read_table(tmp_path / "fig_misalignment.tsv")  # as the figure of a rerun would read it
    drawn = _drawn(monkeypatch, again, tmp_path / "fig.png")
    assert len(drawn["pooled"]) == 8
    # q_augmentation reads the pooled table too; given none, its table is the per-seed one.
    assert "misalignment_pooled" in targets.TARGETS["q_augmentation"].tables
    both, _ = targets.combine("q_augmentation", {"misalignment": per_seed, "misalignment_pooled": pooled}, info)
    assert both["pooled"].sum() == len(pooled)
    plain, _ = targets.combine("q_augmentation", {"misalignment": per_seed}, info)
    assert "pooled" not in plain.columns and len(plain) == len(per_seed)


def test_undefined_pooled_values_are_said_not_drawn(tmp_path, monkeypatch):
    per_seed, pooled = _tables()
    pooled["misalignment"] = np.nan
    pooled["reason"] = "pooled over 2 seed(s), 12 filters in 27 dimensions: Σw is singular"
    drawn = _drawn(monkeypatch, per_seed, tmp_path / "u.png", pooled=pooled)
    assert drawn["pooled"] == []
    assert "pooled: 24 undefined value(s) (NaN) left out: pooled over 2 seed(s)" in drawn["text"]
