"""The data a job trains or measures on (randlabels.data.task_data): which images, which
labels and class count, and a test part only where the labels are real."""

from __future__ import annotations

import numpy as np

from randlabels.data import task_data
from randlabels.data.h5file import Dataset
from randlabels.data.splits import Split


def _dataset_and_split():
    images = np.arange(10 * 2 * 2 * 1, dtype=np.uint8).reshape(10, 2, 2, 1)
    dataset = Dataset(images=images, labels=np.arange(10) % 3, is_test=np.zeros(10, bool), class_names=["a", "b", "c"],
                      attrs={"num_classes": 3, "kind": "image", "norm_mean": [0.0], "norm_std": [1.0]})
    split = Split(upstream=np.array([0, 1, 2, 3]), downstream=np.array([4, 5, 6]), test=np.array([8, 9]),
                  upstream_random=np.array([4, 3, 2, 1]), downstream_random=np.array([1, 0, 1]),
                  upstream_classes=5, downstream_classes=2, seed=0)
    return dataset, split


def test_upstream_with_random_labels_has_the_splits_labels_and_no_test_part():
    dataset, split = _dataset_and_split()
    train, test, classes = task_data.upstream(dataset, split, "random", "cpu")
    assert train.labels.tolist() == [4, 3, 2, 1] and classes == 5 and test is None
    np.testing.assert_array_equal(train.inputs.numpy(), dataset.images[[0, 1, 2, 3]])


def test_upstream_with_real_labels_has_the_datasets_labels_and_the_test_part():
    dataset, split = _dataset_and_split()
    train, test, classes = task_data.upstream(dataset, split, "real", "cpu")
    assert train.labels.tolist() == [0, 1, 2, 0] and classes == 3
    assert test.labels.tolist() == [2, 0]  # images 8 and 9, real labels


def test_downstream_tasks():
    dataset, split = _dataset_and_split()
    real = task_data.downstream(dataset, split, "real", "cpu")
    assert real.train.labels.tolist() == [1, 2, 0] and real.num_classes == 3 and len(real.test) == 2
    saved = task_data.downstream(dataset, split, "random2", "cpu")  # the split's own downstream labels
    assert saved.train.labels.tolist() == [1, 0, 1] and saved.num_classes == 2 and saved.test is None
    fresh = task_data.downstream(dataset, split, "random7", "cpu")
    assert fresh.num_classes == 7 and len(fresh.train) == 3 and fresh.train.labels.max() < 7
