"""The per-experiment figures: the registry (plots.FIGURES) and its captions, and the
eigen-filter table that makes the eigen-filter figure an ordinary table reader."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from randlabels.analysis import eigenfilters
from randlabels.plots import FIGURES
from workflow_helpers import ROOT, figure_caption


def test_every_figure_has_a_module_and_a_caption_of_its_own():
    captions = {name: figure_caption(name).strip() for name in FIGURES}
    assert all(len(text) > 100 for text in captions.values()), captions
    assert len(set(captions.values())) == len(FIGURES)
    assert figure_caption("no_such_figure").strip() == ""
    for name in FIGURES:
        assert (ROOT / "src" / "randlabels" / "plots" / f"{name}.py").is_file(), name
    assert FIGURES["misalignment"].tables == ("misalignment", "misalignment_pooled")


def _records(a=4.0, b=3.0, c=2.0, g=1.0):
    """Two seeds of 2×2 grayscale filters (d = 4): seed 0 holds ±a·e0 and ±b·e1, seed 1
    ±c·e2 and ±g·e3. Pooled, the filters have mean 0 and Σw = diag(2a², 2b², 2c², 2g²)/7;
    Σx's eigenvectors (given, by decreasing eigenvalue) are e1, e0, e2, e3."""
    eye = np.eye(4)
    eigvec_x = eye[:, [1, 0, 2, 3]]
    common = {"weight_shape": np.array([4, 1, 2, 2]), "eigvec_x": eigvec_x, "eigval_x": np.array([4.0, 3.0, 2.0, 1.0])}
    return [
        {**common, "weights": np.stack([a * eye[0], -a * eye[0], b * eye[1], -b * eye[1]])},
        {**common, "weights": np.stack([c * eye[2], -c * eye[2], g * eye[3], -g * eye[3]])},
    ]


def test_the_eigenfilter_table_pools_the_seeds_filters():
    table = eigenfilters.table(_records(), "exp", "conv1", "random", 0.5)
    first = table.iloc[0]
    assert (first["seeds"], first["filters"], first["c_in"], first["kh"], first["kw"]) == (2, 8, 1, 2, 2)
    assert set(table["kind"]) == set(eigenfilters.KINDS)
    eigvec_w, ranks, eigval_w = eigenfilters.vectors(table, "eigvec_w")
    np.testing.assert_allclose(eigval_w, np.array([32, 18, 8, 2]) / 7)
    np.testing.assert_allclose(eigvec_w, np.eye(4), atol=1e-12)  # signs: largest entry positive
    assert list(ranks) == [1, 2, 3, 4]
    filters, columns, eigvals = eigenfilters.vectors(table, "filter")
    assert list(columns) == list(range(8)) and np.isnan(eigvals).all()  # 8 filters: the sample is all of them
    np.testing.assert_allclose(filters[:, 2], [0, 3, 0, 0])


def test_the_rank_comparison_of_sigma_w_with_sigma_x():
    rows = pd.concat([eigenfilters.table(_records(), "one", "conv1", "random", 1.0),
                      eigenfilters.table(_records(a=1.0, g=4.0), "two", "conv1", "random", 1.0)])
    comparison = eigenfilters.rank_comparison(rows)
    one = comparison[comparison["experiment"] == "one"]
    assert list(one["rank"]) == [1, 2, 3, 4]
    np.testing.assert_allclose(one["eigval_x"], [4, 3, 2, 1])
    np.testing.assert_allclose(one["cos_same_rank"], [0, 0, 1, 1], atol=1e-12)  # Σw's top is e0, Σx's e1
    np.testing.assert_allclose(one["cos_best_match"], [1, 1, 1, 1])
    two = comparison[comparison["experiment"] == "two"]  # Σw = diag(2, 18, 8, 32)/7: top e3, then e1, e2, e0
    np.testing.assert_allclose(two["cos_same_rank"], [0, 0, 1, 0], atol=1e-12)


def _with_runs(records, diverged=()):
    """The records as read_layer returns them: each with its run (seed = its index)."""
    return [{**r, "run": {"seed": seed, "diverged": seed in diverged}} for seed, r in enumerate(records)]


def test_diverged_and_non_finite_seeds_are_left_out_and_collapsed_ones_named():
    a, b = _records()
    third = {**b, "weights": np.full((4, 4), np.nan)}  # seed 2: weights of a run that blew up
    fourth = {**a, "eigvec_x": np.full((4, 4), np.nan)}  # seed 3: a Σx that is not finite
    records = _with_runs([a, b, third, fourth, a], diverged={0})  # seed 0 diverged (its weights look fine)
    table = eigenfilters.table(records, "exp", "conv1", "random", 0.5, collapsed={1, 7})
    first = table.iloc[0]
    assert (first["seeds"], first["filters"]) == (2, 8)  # seeds 1 and 4
    assert first["left_out"] == "seed 0: diverged; seed 2: non-finite weights; seed 3: non-finite Σx"
    assert first["collapsed"] == "seed 1" and first["reason"] == ""
    eigvec_w, _, eigval_w = eigenfilters.vectors(table, "eigvec_w")
    np.testing.assert_allclose(eigval_w, np.array([32, 18, 8, 2]) / 7)  # seeds 4 and 1: the two of _records()
    assert eigenfilters.nothing_pooled(table) == ""


def test_with_no_seed_left_the_table_and_its_readers_say_why(tmp_path, monkeypatch):
    from randlabels.plots import eigenfilters as figure
    from randlabels.plots import style

    records = _with_runs(_records(), diverged={0, 1})
    table = eigenfilters.table(records, "none", "conv1", "random", 0.5)
    assert len(table) == 1 and table.iloc[0]["seeds"] == 0
    why = "no seed left to pool (seed 0: diverged; seed 1: diverged)"
    assert table.iloc[0]["reason"] == why and eigenfilters.nothing_pooled(table) == why
    rows = pd.concat([table, eigenfilters.table(_records(), "two", "conv1", "random", 1.0)], ignore_index=True)
    comparison = eigenfilters.rank_comparison(rows)
    none = comparison[comparison["experiment"] == "none"]
    assert len(none) == 1 and none["rank"].isna().all() and list(none["reason"]) == [why]
    assert list(comparison.loc[comparison["experiment"] == "two", "reason"]) == ["", "", "", ""]

    drawn = {}
    save = style.save_figure

    def keep(fig, path):
        drawn["title"] = fig._suptitle.get_text()
        drawn["texts"] = [t.get_text() for ax in fig.axes for t in ax.texts]
        save(fig, path)

    monkeypatch.setattr(style, "save_figure", keep)
    figure.plot(rows, tmp_path / "eigenfilters.png")
    assert mpimg.imread(tmp_path / "eigenfilters.png").ndim == 3
    assert drawn["title"] == "none: layer conv1, nothing to pool" and drawn["texts"] == [why]


def test_a_layer_that_is_no_convolution_is_refused():
    records = [{**r, "weight_shape": np.array([4, 4])} for r in _records()]
    with pytest.raises(ValueError, match="not a convolution"):
        eigenfilters.table(records, "exp", "fc1", "random", 1.0)


def test_the_eigenfilter_figure_is_drawn_from_the_table(tmp_path, monkeypatch):
    from randlabels.plots import eigenfilters as figure
    from randlabels.plots import style

    drawn = {}
    save = style.save_figure

    def keep(fig, path):
        drawn["title"] = fig._suptitle.get_text()
        drawn["columns"] = [ax.get_title() for ax in fig.axes[:4]]
        save(fig, path)

    monkeypatch.setattr(style, "save_figure", keep)
    rows = pd.concat([eigenfilters.table(_records(), "one", "conv1", "random", 0.5),
                      eigenfilters.table(_records(), "two", "conv1", "real", 1.0)])
    out = tmp_path / "eigenfilters.png"
    figure.plot(rows, out, n_show=4)
    assert mpimg.imread(out).ndim == 3
    assert drawn["title"].startswith("one: layer conv1, 8 filters pooled over 2 seeds (random labels, init scale 0.5)\n")
    assert drawn["columns"] == ["filter 0", "filter 1", "filter 2", "filter 3"]
    # A collapsed seed pooled, and a diverged one left out, are named under the title.
    # A collapsed seed pooled, and a diverged one left out, are named under the title;
    # drawn, as the rule draws it, from the table as written and read back (where an
    # empty cell reads as NaN).
    from randlabels.io import read_table, write_table

    flagged = eigenfilters.table(_with_runs([*_records(), _records()[0]], diverged={2}), "one", "conv1", "random", 0.5,
                                 collapsed={1})
    write_table(pd.concat([flagged, rows[rows["experiment"] == "two"]], ignore_index=True), tmp_path / "flagged.tsv")
    figure.plot(read_table(tmp_path / "flagged.tsv"), out, n_show=4)
    assert "\ncollapsed (pooled): seed 1\nleft out: seed 2: diverged\n" in drawn["title"]
    write_table(rows, tmp_path / "plain.tsv")
    figure.plot(read_table(tmp_path / "plain.tsv"), out, n_show=4)
    assert drawn["title"].startswith("one: layer conv1, 8 filters pooled over 2 seeds (random labels, init scale 0.5)\n(")
    assert "nan" not in drawn["title"]
