"""torchvision's image-classification datasets, named by class (``FashionMNIST``, ``CIFAR10``, ...).

Config source ``torchvision`` (keys ``name``, ``root``, ``download``). The raw files are
the ones torchvision knows, with torchvision's md5 checksums, looked for in two places:

- ``root`` itself, holding the original files directly (as Debian's
  ``dataset-fashion-mnist`` lays them out under /usr/share/datasets/fashion-mnist, or as
  a user copies them by hand);
- the place torchvision's own download puts them (``root/FashionMNIST/raw/``, ``root/``
  for CIFAR, ...).

Each file is checked against torchvision's md5 before anything reads it. The MNIST
family's files are gzipped: a copy re-compressed by someone else (Debian's package is
one) has another md5 but the same content, so for these files the md5 of the
uncompressed original (the values the datasets' authors publish) is accepted too, and
so is the uncompressed file itself. The files are then read through torchvision's own
reader from a private staging folder beside the output (links to archives, which
torchvision extracts there; the MNIST family's files uncompressed there), so ``root``
may be read-only and no network is touched. When a file is missing and ``download:
true``, torchvision downloads it into ``root`` first.

The table :data:`DATASETS` says, per class, how its train and test parts are asked for
and how its arrays are laid out; a class not in it is refused with the list.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from randlabels.data.h5file import (
    ChecksumError,
    DatasetFileError,
    digests,
    files_checksum,
    image_norm_stats,
    write_dataset,
)
from randlabels.errors import InputFileError

log = logging.getLogger(__name__)


def _mnist_files(cls: type) -> list[tuple[str, str]]:
    return [(filename, md5) for filename, md5 in cls.resources]


def _single_archive(cls: type) -> list[tuple[str, str]]:
    return [(cls.filename, cls.tgz_md5)]


def _svhn_files(cls: type) -> list[tuple[str, str]]:
    return [(cls.split_list[part][1], cls.split_list[part][2]) for part in ("train", "test")]


def _hw_images(part: Any) -> np.ndarray:
    """(N, H, W) grayscale tensors (the MNIST family) as NHWC with one channel."""
    return np.asarray(part.data.numpy(), dtype=np.uint8)[..., np.newaxis]


def _nhwc_images(part: Any) -> np.ndarray:
    """(N, H, W, C) arrays (CIFAR)."""
    return np.asarray(part.data, dtype=np.uint8)


def _nchw_images(part: Any) -> np.ndarray:
    """(N, C, H, W) arrays (SVHN, STL10) as NHWC."""
    return np.ascontiguousarray(np.asarray(part.data, dtype=np.uint8).transpose(0, 2, 3, 1))


@dataclass(frozen=True)
class _Layout:
    """How one torchvision class keeps its files and arrays."""

    files: Callable[[type], list[tuple[str, str]]]  # (file name, md5) of the raw files
    in_class_folder: bool  # torchvision keeps them in root/<ClassName>/raw, else in root
    gzipped: bool  # .gz files that are staged uncompressed (the MNIST family)
    train: dict  # constructor arguments of the training part
    test: dict  # ... and of the official test part
    images: Callable[[Any], np.ndarray]  # NHWC uint8 images of a constructed part
    labels_attr: str  # attribute holding the labels


_MNIST = _Layout(_mnist_files, True, True, {"train": True}, {"train": False}, _hw_images, "targets")
_CIFAR = _Layout(_single_archive, False, False, {"train": True}, {"train": False}, _nhwc_images, "targets")
_SPLIT = {"train": {"split": "train"}, "test": {"split": "test"}}

DATASETS: dict[str, _Layout] = {
    "MNIST": _MNIST,
    "FashionMNIST": _MNIST,
    "KMNIST": _MNIST,
    "CIFAR10": _CIFAR,
    "CIFAR100": _CIFAR,
    "SVHN": _Layout(_svhn_files, False, False, **_SPLIT, images=_nchw_images, labels_attr="labels"),
    "STL10": _Layout(_single_archive, False, False, **_SPLIT, images=_nchw_images, labels_attr="labels"),
}

# md5 of the uncompressed original files, as published with each dataset (torchvision
# pins only the .gz files). Lets a re-compressed or an uncompressed copy be verified.
CONTENT_MD5 = {
    "MNIST": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "FashionMNIST": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}


def _torchvision_class(name: str) -> type:
    if name not in DATASETS:
        raise ValueError(
            f"unknown torchvision dataset {name!r}; valid names: {', '.join(DATASETS)} "
            f"(torchvision class names, case-sensitive)"
        )
    import torchvision.datasets  # slow import, only when needed

    return getattr(torchvision.datasets, name)


def _expected_folder(root: Path, cls: type, layout: _Layout) -> Path:
    return root / cls.__name__ / "raw" if layout.in_class_folder else root


def _names(filename: str, layout: _Layout) -> list[str]:
    """The names a raw file may have: as torchvision downloads it, or uncompressed."""
    return [filename, filename.removesuffix(".gz")] if layout.gzipped else [filename]


def _find_files(root: Path, cls: type, layout: _Layout) -> dict[str, Path] | None:
    """Where each raw file lies (root first, then torchvision's place); None if any is missing."""
    found = {}
    for filename, _md5 in layout.files(cls):
        candidates = [
            folder / name
            for folder in (root, _expected_folder(root, cls, layout))
            for name in _names(filename, layout)
        ]
        hit = next((path for path in candidates if path.is_file()), None)
        if hit is None:
            return None
        found[filename] = hit
    return found


def _uncompressed(path: Path) -> bytes:
    """The content of a raw file, gunzipped when it is a .gz (errors name the file)."""
    try:
        return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DatasetFileError(path, f"unreadable or truncated file ({err})") from err


def _verify_and_stage(found: dict[str, Path], staging: Path, cls: type, layout: _Layout) -> Path:
    """Check every file against torchvision's md5 (or the original content's, for the
    MNIST family) and lay them out as torchvision expects under ``staging``."""
    folder = _expected_folder(staging, cls, layout)
    folder.mkdir(parents=True, exist_ok=True)
    for filename, md5 in layout.files(cls):
        path = found[filename]
        archive_md5 = digests(path)[0]
        if archive_md5 == md5 and not layout.gzipped:
            (folder / filename).symlink_to(path.resolve())
            continue
        if archive_md5 != md5 and not layout.gzipped:
            _mismatch(path, filename, md5, archive_md5, cls)
        content = _uncompressed(path)
        stem = filename.removesuffix(".gz")
        known = CONTENT_MD5.get(cls.__name__, {}).get(stem)
        content_md5 = hashlib.md5(content, usedforsecurity=False).hexdigest()
        if archive_md5 != md5 and content_md5 != known:
            _mismatch(path, filename, md5, archive_md5, cls, known and content_md5)
        (folder / stem).write_bytes(content)
    return staging


def _mismatch(path: Path, filename: str, md5: str, actual: str, cls: type, content_md5=None) -> None:
    also = f" (its uncompressed content has md5 {content_md5}, not the original's)" if content_md5 else ""
    raise ChecksumError(
        path,
        f"md5:{md5}",
        f"md5:{actual}{also}",
        f"This is not torchvision's {cls.__name__} file {filename}: replace it with the "
        f"original (or delete it and set download: true).",
    )


def _read_parts(cls: type, layout: _Layout, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(images, labels, is_test, class names), train first, through torchvision's reader.

    ``download=True`` on verified local files only extracts them: torchvision finds
    each file present with the right md5 and skips the download.
    """
    parts = [cls(str(root), download=True, **layout.train), cls(str(root), download=True, **layout.test)]
    images = np.concatenate([layout.images(part) for part in parts])
    labels = np.concatenate(
        [np.asarray(getattr(part, layout.labels_attr), dtype=np.int64) for part in parts]
    )
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[len(labels) - len(getattr(parts[1], layout.labels_attr)) :] = True
    names = getattr(parts[0], "classes", None) or [str(k) for k in range(int(labels.max()) + 1)]
    return images, labels, is_test, [str(name) for name in names]


def prepare_torchvision(
    out_path: str | os.PathLike, *, name: str, root: str | os.PathLike, download: bool = True
) -> None:
    """Write torchvision's dataset ``name`` (train, then the official test part)."""
    cls = _torchvision_class(name)
    layout = DATASETS[name]
    root = Path(root)
    found = _find_files(root, cls, layout)
    if found is None:
        wanted = ", ".join(filename for filename, _ in layout.files(cls))
        if not download:
            raise DatasetFileError(
                root,
                f"torchvision {name}: missing raw files; expected {wanted} in {root} or in "
                f"{_expected_folder(root, cls, layout)}. Copy them there or set download: true",
            )
        log.info("downloading torchvision %s into %s", name, root)
        try:
            for arguments in (layout.train, layout.test):
                cls(str(root), download=True, **arguments)
        except (OSError, RuntimeError) as err:  # torchvision reports failed mirrors as RuntimeError
            reason = " ".join(str(err).split())[:500]
            raise DatasetFileError(
                root, f"torchvision {name}: download failed ({reason}); copy {wanted} there by hand"
            ) from err
        found = _find_files(root, cls, layout)
        if found is None:
            raise DatasetFileError(root, f"torchvision {name}: the download left no {wanted}")
    out_path = Path(out_path)
    staging = out_path.with_name(f".{out_path.name}.staging")  # one job per output: no pid needed
    shutil.rmtree(staging, ignore_errors=True)
    try:
        log.info("verifying %s", ", ".join(map(str, found.values())))
        staged = _verify_and_stage(found, staging, cls, layout)
        log.info("reading torchvision %s", name)
        images, labels, is_test, class_names = _read_parts(cls, layout, staged)
    except InputFileError:
        raise
    except (OSError, RuntimeError, ValueError) as err:
        raise DatasetFileError(root, f"torchvision {name}: unreadable raw files ({err})") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    import torchvision

    mean, std = image_norm_stats(images[~is_test])
    files = [found[filename] for filename, _ in layout.files(cls)]
    write_dataset(
        out_path,
        images=images,
        labels=labels,
        is_test=is_test,
        class_names=class_names,
        attrs={
            "name": name,
            "kind": "image",
            "source": (
                f"torchvision {torchvision.__version__} {name} from "
                f"{', '.join(str(path) for path in files)} (md5 verified)"
            ),
            "checksum": files_checksum(files),
            "num_classes": len(class_names),
            "norm_mean": mean,
            "norm_std": std,
        },
    )
