"""scikit-learn's 8×8 digits, which ship with the project (no network, no files)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

from randlabels.data.h5file import digests, image_norm_stats, write_dataset


def _sklearn_digits_file() -> Path:
    """The CSV.gz that ``load_digits`` reads, located through sklearn's package data."""
    return Path(str(resources.files("sklearn.datasets.data").joinpath("digits.csv.gz")))


def prepare_digits(out_path: str | os.PathLike) -> None:
    """Write scikit-learn's 8×8 digits (1797 images) as uint8 NHWC images.

    The 0..16 pixel values are rescaled to 0..255 so that every image dataset shares
    one scale (training divides by 255).
    """
    import sklearn
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = np.asarray(digits.images, dtype=np.float64)
    images = np.rint(raw * 255.0 / 16.0).clip(0, 255).astype(np.uint8)[..., np.newaxis]
    labels = np.asarray(digits.target, dtype=np.int64)
    is_test = np.zeros(len(labels), dtype=bool)
    mean, std = image_norm_stats(images)
    _, sha256 = digests(_sklearn_digits_file())
    write_dataset(
        out_path,
        images=images,
        labels=labels,
        is_test=is_test,
        class_names=[str(k) for k in range(10)],
        attrs={
            "name": "digits",
            "kind": "image",
            "source": f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})",
            "checksum": f"sha256:{sha256}",
            "num_classes": 10,
            "norm_mean": mean,
            "norm_std": std,
        },
    )
