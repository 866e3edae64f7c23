"""The images and labels a job trains or measures on, put on its device: one place for
what the training, packing and statistics scripts would each cut out of the prepared
dataset and the split themselves."""

from __future__ import annotations

from typing import NamedTuple

import torch

from randlabels.data.h5file import Dataset
from randlabels.data.splits import Split
from randlabels.training.engine import DeviceData


class TaskData(NamedTuple):
    """Training data, the test data where the labels are real (random labels have no
    test accuracy), and the number of classes the labels range over."""

    train: DeviceData
    test: DeviceData | None
    num_classes: int


def upstream(dataset: Dataset, split: Split, labels: str, device: torch.device) -> TaskData:
    """Pre-training data: the split's upstream images with ``labels`` ('real', or the
    split's saved random labels)."""
    train = DeviceData.subset(dataset, split.upstream, device, split.labels("upstream", labels, dataset.labels))
    num_classes = dataset.num_classes if labels == "real" else split.upstream_classes
    test = DeviceData.subset(dataset, split.test, device) if labels == "real" else None
    return TaskData(train, test, num_classes)


def downstream(dataset: Dataset, split: Split, task: str, device: torch.device) -> TaskData:
    """Fine-tuning data: the split's downstream images with the labels of ``task``
    ('real' or 'random{C}', :meth:`randlabels.data.splits.Split.downstream_task`)."""
    labels, num_classes = split.downstream_task(task, dataset.labels, dataset.num_classes)
    train = DeviceData.subset(dataset, split.downstream, device, labels)
    test = DeviceData.subset(dataset, split.test, device) if task == "real" else None
    return TaskData(train, test, num_classes)
