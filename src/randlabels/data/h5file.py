"""The one dataset file format: a single, self-describing HDF5 file per dataset.

Every source (see :mod:`randlabels.data.sources`) is turned once into one such
file, so that training jobs read one local file with one layout and never touch
the network or the raw files:

``/images``
    uint8 (N, H, W, C) for images (NHWC), float32 (N, D) for vector data.
``/labels``
    int64 (N,).
``/is_test``
    bool (N,): True for samples of an official test set (e.g. CIFAR's test batch,
    ImageNet's validation batch).
``/class_names``
    variable-length UTF-8 strings, one per class.

Root attributes: ``name``, ``kind`` ("image" or "vector"), ``source`` (provenance
in words), ``checksum`` ("sha256:<hex>" of the raw file the data came from, or over
the digests of its files when there are several; "" for synthetic data),
``num_classes``, ``norm_mean`` and ``norm_std`` (what training normalizes with),
plus source-specific parameters (synthetic data: its generating parameters), and
the provenance stamp of :mod:`randlabels.provenance`.

All files are written through :func:`randlabels.io.atomic_output`, so an
interrupted job leaves no file that looks complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from randlabels import provenance
from randlabels.errors import InputFileError
from randlabels.io import atomic_output

log = logging.getLogger(__name__)

KINDS = ("image", "vector")
REQUIRED_DATASETS = ("images", "labels", "is_test", "class_names")
REQUIRED_ATTRS = ("name", "kind", "source", "checksum", "num_classes", "norm_mean", "norm_std")

_CHUNK = 1 << 20  # bytes per read when hashing


class ChecksumError(InputFileError):
    """A raw file whose checksum differs from the expected one."""

    def __init__(self, path: str | os.PathLike, expected: str, actual: str, hint: str = ""):
        self.expected, self.actual = expected, actual
        message = f"checksum mismatch: expected {expected}, got {actual}"
        super().__init__(path, f"{message}. {hint}" if hint else message)
        self.path = Path(path)


class DatasetFileError(InputFileError):
    """A dataset or raw archive that is missing, unreadable, truncated or incomplete."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(path, problem)
        self.path = Path(path)


def digests(path: Path) -> tuple[str, str]:
    """(md5, sha256) hex digests of a file, in one pass over it."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


def image_norm_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of ``images / 255``.

    Computed exactly from a 256-bin histogram per channel, which needs no float
    copy of the images (CIFAR's would take over a gigabyte in float64).
    """
    counts = np.stack(
        [np.bincount(images[..., c].ravel(), minlength=256) for c in range(images.shape[-1])]
    )
    return norm_stats_from_counts(counts)


def check_not_constant(source: str | os.PathLike, images: np.ndarray) -> None:
    """Refuse images with a channel of one value throughout: training divides by its std."""
    for channel in range(images.shape[-1]):
        values = images[..., channel]
        if values.size and values.min() == values.max():
            raise DatasetFileError(
                source, f"every pixel of channel {channel} has the value {values.flat[0]}; nothing to learn from"
            )


def norm_stats_from_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of ``value / 255`` from a (C, 256)
    histogram of uint8 values, so that the images can also be counted in pieces."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for channel_counts in np.asarray(counts, dtype=np.float64):
        total = channel_counts.sum()
        mean = float(channel_counts @ values / total)
        var = float(channel_counts @ (values - mean) ** 2 / total)
        means.append(mean)
        stds.append(np.sqrt(var))
    return np.asarray(means, dtype=np.float64), np.asarray(stds, dtype=np.float64)


def write_dataset(
    out_path: str | os.PathLike,
    *,
    images: np.ndarray,
    labels: np.ndarray,
    is_test: np.ndarray,
    class_names: Sequence[str],
    attrs: Mapping[str, Any],
) -> None:
    """Write one dataset file in the layout of the module docstring, atomically."""
    with atomic_output(out_path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("images", data=images)
            h5.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
            h5.create_dataset("is_test", data=np.asarray(is_test, dtype=bool))
            h5.create_dataset(
                "class_names", data=list(class_names), dtype=h5py.string_dtype("utf-8")
            )
            for key, value in attrs.items():
                h5.attrs[key] = value
            provenance.record_source(str(attrs.get("checksum", "")))  # the raw data, into the lineage
            provenance.stamp_into(h5.attrs)  # last: a re-written file's old stamp is replaced
    log.info("wrote %s: %d samples, %d classes", out_path, len(labels), len(class_names))


def check_int(name: str, value: Any, minimum: int) -> None:
    """Refuse non-integers (bools included) and values below ``minimum``, naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"'{name}' must be an integer >= {minimum}, got {value!r}")


def files_checksum(files: Sequence[Path], root: Path | None = None) -> str:
    """sha256 over the lines "<name> <sha256 of the file>", in the given order.

    A single file gives its own sha256. Names are base names, or paths relative to
    ``root`` when given, so the same files give the same checksum wherever they lie.
    """
    if len(files) == 1 and root is None:
        return f"sha256:{digests(Path(files[0]))[1]}"
    combined = hashlib.sha256()
    for path in map(Path, files):
        name = path.relative_to(root).as_posix() if root is not None else path.name
        combined.update(f"{name} {digests(path)[1]}\n".encode())
    return f"sha256:{combined.hexdigest()}"


@dataclass
class Dataset:
    """A dataset file held in memory: arrays plus the root attributes."""

    images: np.ndarray
    labels: np.ndarray
    is_test: np.ndarray
    class_names: list[str]
    attrs: dict[str, Any]
    _path: Path | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.attrs["num_classes"])

    @property
    def kind(self) -> str:
        """'image' (uint8 NHWC) or 'vector' (float32 N×D)."""
        return str(self.attrs["kind"])

    @property
    def norm_mean(self) -> np.ndarray:
        return np.asarray(self.attrs["norm_mean"], dtype=np.float64)

    @property
    def norm_std(self) -> np.ndarray:
        return np.asarray(self.attrs["norm_std"], dtype=np.float64)

    @property
    def path(self) -> Path | None:
        """The file this dataset was read from (None if built in memory)."""
        return self._path


def _plain(value: Any) -> Any:
    """HDF5 attribute values as plain Python scalars/str; arrays stay arrays."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_dataset(path: Path, data: Dataset) -> None:
    """Raise DatasetFileError unless the arrays and attributes fit together."""
    n = len(data.labels)
    if data.labels.ndim != 1:
        raise DatasetFileError(path, f"/labels has shape {data.labels.shape}, expected (N,)")
    if len(data.images) != n or len(data.is_test) != n:
        raise DatasetFileError(
            path,
            f"lengths disagree: {len(data.images)} images, {n} labels, {len(data.is_test)} is_test",
        )
    if data.kind not in KINDS:
        raise DatasetFileError(path, f"attribute kind is {data.kind!r}, expected one of {KINDS}")
    if data.kind == "image":
        if data.images.dtype != np.uint8 or data.images.ndim != 4:
            raise DatasetFileError(
                path,
                f"/images is {data.images.dtype} {data.images.shape}, expected uint8 (N,H,W,C)",
            )
        width = data.images.shape[-1]
    else:
        if not np.issubdtype(data.images.dtype, np.floating) or data.images.ndim != 2:
            raise DatasetFileError(
                path, f"/images is {data.images.dtype} {data.images.shape}, expected float (N,D)"
            )
        if not np.all(np.isfinite(data.images)):
            raise DatasetFileError(path, "/images contains NaN or Inf")
        width = data.images.shape[-1]
    num_classes = data.num_classes
    if num_classes < 1 or len(data.class_names) != num_classes:
        raise DatasetFileError(
            path, f"num_classes is {num_classes} but there are {len(data.class_names)} class names"
        )
    if n and (data.labels.min() < 0 or data.labels.max() >= num_classes):
        raise DatasetFileError(path, f"labels outside 0..{num_classes - 1}")
    for key in ("norm_mean", "norm_std"):
        stat = getattr(data, key)
        if stat.shape != (width,) or not np.all(np.isfinite(stat)):
            raise DatasetFileError(
                path, f"attribute {key} has shape {stat.shape}, expected ({width},) finite values"
            )
    if not np.all(data.norm_std > 0):
        raise DatasetFileError(path, "attribute norm_std has non-positive entries")


def read_dataset(path: str | os.PathLike) -> Dataset:
    """Read a dataset file into memory, checking that it is complete and consistent."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFileError(path, "dataset file does not exist")
    try:
        with h5py.File(path, "r") as h5:
            for member in REQUIRED_DATASETS:
                if not isinstance(h5.get(member), h5py.Dataset):
                    raise DatasetFileError(path, f"lacks dataset /{member}")
            for key in REQUIRED_ATTRS:
                if key not in h5.attrs:
                    raise DatasetFileError(path, f"lacks root attribute {key!r}")
            data = Dataset(
                images=h5["images"][()],
                labels=np.asarray(h5["labels"][()]),
                is_test=np.asarray(h5["is_test"][()]),
                class_names=[str(s) for s in h5["class_names"].asstr()[()]],
                attrs={key: _plain(value) for key, value in h5.attrs.items()},
            )
    except DatasetFileError:
        raise
    except Exception as err:  # h5py raises OSError/KeyError/ValueError... for damaged files
        raise DatasetFileError(path, f"not a readable HDF5 dataset file ({err})") from err
    if not np.issubdtype(data.labels.dtype, np.integer):
        raise DatasetFileError(path, f"/labels has dtype {data.labels.dtype}, expected integers")
    if data.is_test.dtype != np.bool_:
        raise DatasetFileError(path, f"/is_test has dtype {data.is_test.dtype}, expected bool")
    data.labels = data.labels.astype(np.int64, copy=False)
    data._path = path
    _check_dataset(path, data)
    return data
