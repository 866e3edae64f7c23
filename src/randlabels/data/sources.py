"""The dataset sources a config may name (``datasets.NAME.source``), one module each."""

from __future__ import annotations

import os
from typing import Any, Callable

from randlabels.data.arrays import prepare_arrays
from randlabels.data.digits import prepare_digits
from randlabels.data.folder import prepare_folder
from randlabels.data.gaussian import prepare_gaussian
from randlabels.data.imagenet import prepare_imagenet32
from randlabels.data.torchvision_datasets import prepare_torchvision

SOURCES: dict[str, Callable[..., None]] = {
    "digits": prepare_digits,
    "gaussian": prepare_gaussian,
    "torchvision": prepare_torchvision,
    "folder": prepare_folder,
    "arrays": prepare_arrays,
    "imagenet": prepare_imagenet32,
}


def prepare_dataset(out_path: str | os.PathLike, source: str, **params: Any) -> None:
    """Prepare the dataset file for one config entry (``source`` plus its parameters)."""
    if source not in SOURCES:
        raise ValueError(f"unknown dataset source {source!r}; valid names: {', '.join(SOURCES)}")
    SOURCES[source](out_path, **params)
