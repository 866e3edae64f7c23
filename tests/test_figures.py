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


def _trained(records, h=4.0, p=3.0, g=2.0, q=1.0):
    """``records`` moved by training: seed 0's filters by ±h·e1 and ±p·e0, seed 1's by
    ±g·e2 and ±q·e3. Pooled, W − W₀ has mean 0 and covariance diag(2p², 2h², 2g², 2q²)/7,
    whose eigenvectors (for h > p > g > q) are Σx's, e1, e0, e2, e3, in Σx's order."""
    eye = np.eye(4)
    moves = [np.stack([h * eye[1], -h * eye[1], p * eye[0], -p * eye[0]]),
             np.stack([g * eye[2], -g * eye[2], q * eye[3], -q * eye[3]])]
    return [{**r, "weights": r["weights"] + move} for r, move in zip(records, moves)]


def test_the_eigenfilter_table_pools_the_seeds_filters():
    table = eigenfilters.table(_records(), "exp", "conv1", "random", 0.5)
    first = table.iloc[0]
    assert (first["seeds"], first["filters"], first["c_in"], first["kh"], first["kw"]) == (2, 8, 1, 2, 2)
    assert set(table["kind"]) == set(eigenfilters.KINDS) - {"eigvec_change"}  # no W₀ given
    eigvec_w, ranks, eigval_w = eigenfilters.vectors(table, "eigvec_w")
    np.testing.assert_allclose(eigval_w, np.array([32, 18, 8, 2]) / 7)
    np.testing.assert_allclose(eigvec_w, np.eye(4), atol=1e-12)  # signs: largest entry positive
    assert list(ranks) == [1, 2, 3, 4]
    filters, columns, eigvals = eigenfilters.vectors(table, "filter")
    assert list(columns) == list(range(8)) and np.isnan(eigvals).all()  # 8 filters: the sample is all of them
    np.testing.assert_allclose(filters[:, 2], [0, 3, 0, 0])


def test_the_eigenvectors_of_what_training_changed():
    table = eigenfilters.table(_trained(_records()), "exp", "conv1", "random", 0.5, initial=_records())
    assert set(table["kind"]) == set(eigenfilters.KINDS)
    eigvec_c, ranks, eigval_c = eigenfilters.vectors(table, "eigvec_change")
    np.testing.assert_allclose(eigval_c, np.array([32, 18, 8, 2]) / 7)
    np.testing.assert_allclose(eigvec_c, np.eye(4)[:, [1, 0, 2, 3]], atol=1e-12)
    assert list(ranks) == [1, 2, 3, 4]
    filters, _, _ = eigenfilters.vectors(table, "filter")
    np.testing.assert_allclose(filters[:, 2], [3, 3, 0, 0])  # the trained filter b·e1 + p·e0, not W₀'s
    # Nothing moved, or every filter moved alike: the change has no covariance to show.
    assert "eigvec_change" not in set(eigenfilters.table(_records(), "e", "conv1", "random", 1, initial=_records())["kind"])
    shifted = [{**r, "weights": r["weights"] + 0.5} for r in _records()]
    assert "eigvec_change" not in set(eigenfilters.table(shifted, "e", "conv1", "random", 1, initial=_records())["kind"])
    with pytest.raises(ValueError, match="1 records at initialization for 2 seeds"):
        eigenfilters.table(_records(), "e", "conv1", "random", 1, initial=_records()[:1])


def test_chance_best_match_in_closed_form():
    # One direction in one dimension always matches; in two dimensions, u = (cos θ, sin θ)
    # with θ uniform: E|cos θ| = 2/π, and E max(|cos θ|, |sin θ|) = 2√2/π.
    assert eigenfilters.chance_best_match(1, 1) == pytest.approx(1.0)
    assert eigenfilters.chance_best_match(2, 1) == pytest.approx(2 / np.pi, abs=0.015)
    assert eigenfilters.chance_best_match(2, 2) == pytest.approx(2 * np.sqrt(2) / np.pi, abs=0.01)
    assert eigenfilters.chance_best_match(25, 8) < eigenfilters.chance_best_match(25, 16) < 1
    with pytest.raises(ValueError, match="1 <= n <= d"):
        eigenfilters.chance_best_match(4, 5)


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
    assert comparison[["eigval_change", "cos_same_rank_change", "cos_best_match_change"]].isna().all().all()
    assert list(comparison["cos_best_match_chance"]) == [eigenfilters.chance_best_match(4, 4)] * 8
    # With W₀: Σ(W − W₀)'s eigenvectors are Σx's, rank by rank, where Σw's are not.
    changed = eigenfilters.rank_comparison(
        eigenfilters.table(_trained(_records()), "one", "conv1", "random", 1.0, initial=_records()))
    assert list(changed.columns) == list(eigenfilters.COMPARISON)
    np.testing.assert_allclose(changed["eigval_change"], np.array([32, 18, 8, 2]) / 7)
    np.testing.assert_allclose(changed["cos_same_rank_change"], [1, 1, 1, 1])
    np.testing.assert_allclose(changed["cos_best_match_change"], [1, 1, 1, 1])


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
        drawn["rows"] = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
        drawn["eigvec_change"] = [ax.get_title() for ax in fig.axes[8:12]]
        save(fig, path)

    monkeypatch.setattr(style, "save_figure", keep)
    rows = pd.concat([eigenfilters.table(_records(), "one", "conv1", "random", 0.5),
                      eigenfilters.table(_records(), "two", "conv1", "real", 1.0)])
    out = tmp_path / "eigenfilters.png"
    figure.plot(rows, out, n_show=4)
    assert mpimg.imread(out).ndim == 3
    assert drawn["title"].startswith("one: layer conv1, 8 filters pooled over 2 seeds (random labels, init scale 0.5)\n")
    assert drawn["columns"] == ["filter 0", "filter 1", "filter 2", "filter 3"]
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
    assert drawn["rows"] == ["filters\n(sample)", "eigvecs\nof Σw", "eigvecs\nof Σx"]
    # With W₀ in the table, a row of Σ(W − W₀)'s eigenvectors, above Σx's.
    write_table(eigenfilters.table(_trained(_records()), "one", "conv1", "random", 0.5, initial=_records()),
                tmp_path / "changed.tsv")
    figure.plot(read_table(tmp_path / "changed.tsv"), out, n_show=4)
    assert drawn["rows"] == ["filters\n(sample)", "eigvecs\nof Σw", "eigvecs of\nΣ(W − W₀)", "eigvecs\nof Σx"]
    assert drawn["eigvec_change"] == ["#1  λ=4.6", "#2  λ=2.6", "#3  λ=1.1", "#4  λ=0.29"]
