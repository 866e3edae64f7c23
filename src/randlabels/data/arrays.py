"""Your own images as arrays in one .npz or HDF5 file.

Config source ``arrays`` (keys ``path``, ``num_classes``). The file holds:

``images``
    uint8, N×H×W (grayscale) or N×H×W×C (C = 1 or 3, channels last).
``labels``
    integers 0..num_classes-1, length N.
``is_test`` (optional)
    booleans, length N: an official test part kept apart by the split.
``class_names`` (optional)
    one string per class; its length is then the number of classes.

Without ``class_names`` the number of classes is ``num_classes`` from the config, or
the largest label plus one. A .npz is read without pickles (``allow_pickle=False``):
object arrays are refused, so the file cannot run code.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from randlabels.data.h5file import DatasetFileError, check_not_constant, files_checksum, image_norm_stats, write_dataset

log = logging.getLogger(__name__)

HDF5_SUFFIXES = (".h5", ".hdf5")


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The known keys of a .npz or HDF5 file as arrays (errors name the file)."""
    keys = ("images", "labels", "is_test", "class_names")
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {key: npz[key] for key in keys if key in npz.files}
        if path.suffix.lower() in HDF5_SUFFIXES:
            import h5py

            with h5py.File(path, "r") as h5:
                arrays = {key: h5[key][()] for key in keys[:3] if key in h5}
                if "class_names" in h5:
                    arrays["class_names"] = np.asarray(h5["class_names"].asstr()[()])
                return arrays
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetFileError(path, f"unreadable array file ({err})") from err
    raise DatasetFileError(path, f"unknown file type {path.suffix!r}; expected .npz, .h5 or .hdf5")


def _check(path: Path, arrays: dict[str, np.ndarray], num_classes: int | None) -> tuple[np.ndarray, list[str]]:
    """Images as NHWC and the class names, after every consistency check."""
    for key in ("images", "labels"):
        if key not in arrays:
            raise DatasetFileError(path, f"lacks the array {key!r}")
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise DatasetFileError(
            path, f"key 'images' is {images.dtype} {images.shape}; expected uint8 N×H×W or N×H×W×C with C 1 or 3"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetFileError(path, f"key 'labels' is {labels.dtype} {labels.shape}; expected integers (N,)")
    if len(labels) != len(images):
        raise DatasetFileError(path, f"key 'labels' has {len(labels)} entries but key 'images' {len(images)}")
    if "is_test" in arrays:
        is_test = arrays["is_test"]
        if is_test.dtype != np.bool_ or is_test.shape != labels.shape:
            raise DatasetFileError(path, f"key 'is_test' is {is_test.dtype} {is_test.shape}; expected bool ({len(labels)},)")
    if "class_names" in arrays:
        names = [str(name) for name in np.asarray(arrays["class_names"]).reshape(-1)]
        if num_classes is not None and num_classes != len(names):
            raise DatasetFileError(
                path, f"key 'class_names' names {len(names)} classes but the config says num_classes: {num_classes}"
            )
        num_classes = len(names)
    else:
        num_classes = num_classes if num_classes is not None else int(labels.max(initial=-1)) + 1
        names = [str(k) for k in range(num_classes)]
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise DatasetFileError(path, f"key 'labels' holds {bad}, outside 0..{num_classes - 1}")
    if num_classes < 2:
        raise DatasetFileError(path, f"key 'labels' gives {num_classes} class(es); need at least 2")
    return (images[..., np.newaxis] if images.ndim == 3 else images), names


def prepare_arrays(out_path: str | os.PathLike, *, path: str | os.PathLike, num_classes: int | None = None) -> None:
    """Write the arrays of one .npz or HDF5 file as one dataset file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFileError(path, "array file does not exist")
    log.info("reading %s", path)
    arrays = _read_arrays(path)
    images, names = _check(path, arrays, num_classes)
    labels = arrays["labels"].astype(np.int64)
    is_test = arrays.get("is_test", np.zeros(len(labels), dtype=bool))
    check_not_constant(path, images)
    mean, std = image_norm_stats(images[~is_test] if (~is_test).any() else images)
    write_dataset(
        out_path,
        images=np.ascontiguousarray(images),
        labels=labels,
        is_test=is_test,
        class_names=names,
        attrs={
            "name": path.stem,
            "kind": "image",
            "source": f"arrays from {path} ({len(labels)} images, {int(is_test.sum())} of them test)",
            "checksum": files_checksum([path]),
            "num_classes": len(names),
            "norm_mean": mean,
            "norm_std": std,
        },
    )
