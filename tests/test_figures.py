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
    assert drawn["title"].startswith("one: layer conv1, 8 filters pooled over 2 seeds (random labels, init scale 0.5)")
    assert drawn["columns"] == ["filter 0", "filter 1", "filter 2", "filter 3"]
