"""Tests of randlabels.data.splits: disjoint subsets, fixed random labels, the HDF5 round trip."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from randlabels.data.splits import Split, make_split, read_split, write_split

ARRAYS = ("upstream", "downstream", "test", "upstream_random", "downstream_random")


def _split(seed=0, is_test=None, **sizes):
    if is_test is None:
        is_test = np.zeros(100, dtype=bool)
    args = {"upstream": 30, "downstream": 20, "test": 10, "upstream_classes": 10, "downstream_classes": 3}
    args.update(sizes)
    return make_split(is_test, seed=seed, **args)


def test_sizes_disjoint_sorted_and_in_range():
    split = _split()
    assert len(split.upstream) == 30 and len(split.downstream) == 20 and len(split.test) == 10
    parts = [split.upstream, split.downstream, split.test]
    union = np.concatenate(parts)
    assert len(np.unique(union)) == 60  # pairwise disjoint
    assert union.min() >= 0 and union.max() < 100
    for part in parts:
        assert np.all(np.diff(part) > 0)  # sorted, no repeats


def test_without_official_test_set_all_rest_is_test_when_none():
    split = _split(test=None)
    assert len(split.test) == 50
    assert sorted(np.concatenate([split.upstream, split.downstream, split.test]).tolist()) == list(range(100))


def test_official_test_set_is_used():
    is_test = np.zeros(100, dtype=bool)
    is_test[80:] = True
    split = _split(is_test=is_test, upstream=50, downstream=30, test=None)
    # training parts come only from the 80 training samples, test is the whole official set
    np.testing.assert_array_equal(split.test, np.arange(80, 100))
    assert np.all(split.upstream < 80) and np.all(split.downstream < 80)
    sub = _split(is_test=is_test, upstream=10, downstream=10, test=5)
    assert len(sub.test) == 5 and np.all(sub.test >= 80)


def test_deterministic_per_seed_and_seeds_differ():
    a, b, c = _split(seed=3), _split(seed=3), _split(seed=4)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.upstream, c.upstream)
    assert not np.array_equal(a.upstream_random, c.upstream_random)
    assert a.seed == 3 and c.seed == 4


def test_random_labels_in_range_and_fixed_per_seed():
    split = _split(upstream=500, downstream=300, test=0, is_test=np.zeros(1000, bool),
                   upstream_classes=7, downstream_classes=2)
    assert split.upstream_random.shape == (500,) and split.downstream_random.shape == (300,)
    assert split.upstream_random.min() >= 0 and split.upstream_random.max() <= 6
    assert set(np.unique(split.upstream_random)) == set(range(7))  # all classes used (500 draws)
    assert set(np.unique(split.downstream_random)) == {0, 1}
    # the random labels do not depend on the test size (own random stream)
    other = _split(upstream=500, downstream=300, test=100, is_test=np.zeros(1000, bool),
                   upstream_classes=7, downstream_classes=2)
    np.testing.assert_array_equal(split.upstream_random, other.upstream_random)
    np.testing.assert_array_equal(split.downstream_random, other.downstream_random)


def test_too_large_training_parts_rejected():
    with pytest.raises(ValueError) as err:
        _split(upstream=70, downstream=40)
    assert "split.upstream" in str(err.value) and "split.downstream" in str(err.value)


def test_too_large_test_rejected():
    with pytest.raises(ValueError, match=r"split\.test"):
        _split(upstream=50, downstream=40, test=11)
    is_test = np.zeros(100, dtype=bool)
    is_test[90:] = True
    with pytest.raises(ValueError, match=r"split\.test"):
        _split(is_test=is_test, test=11)
    assert len(_split(is_test=is_test, test=10).test) == 10


def test_labels_real_and_random():
    split = _split()
    real = np.arange(100) * 10
    np.testing.assert_array_equal(split.labels("upstream", "real", real), split.upstream * 10)
    np.testing.assert_array_equal(split.labels("downstream", "real", real), split.downstream * 10)
    np.testing.assert_array_equal(split.labels("upstream", "random", real), split.upstream_random)
    np.testing.assert_array_equal(split.labels("downstream", "random", real), split.downstream_random)
    with pytest.raises(ValueError, match="shuffled"):
        split.labels("upstream", "shuffled", real)


def test_write_read_roundtrip(tmp_path):
    split = _split(seed=11)
    path = tmp_path / "sub" / "split.h5"
    write_split(split, path)
    back = read_split(path)
    assert isinstance(back, Split)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(back, name), getattr(split, name))
    assert (back.upstream_classes, back.downstream_classes, back.seed) == (10, 3, 11)
    assert not list(path.parent.glob(".*tmp*"))  # no temporary left behind


def test_read_split_on_garbage_names_file(tmp_path):
    path = tmp_path / "garbage.h5"
    path.write_bytes(b"this is not hdf5")
    with pytest.raises(ValueError, match="garbage.h5"):
        read_split(path)


def test_read_split_on_other_hdf5_names_file(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("upstream", data=np.arange(3))
    with pytest.raises(ValueError, match="other.h5"):
        read_split(path)


def test_read_split_missing_file_names_file(tmp_path):
    with pytest.raises(ValueError, match="missing.h5"):
        read_split(tmp_path / "missing.h5")
