"""Downsampled ImageNet (Chrabaszcz, Loshchilov & Hutter 2017) from files the user
provides (image-net.org needs a login, so nothing is downloaded)."""

from __future__ import annotations

import codecs
import logging
import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from randlabels.data.h5file import (
    DatasetFileError,
    check_int,
    files_checksum,
    norm_stats_from_counts,
)
from randlabels import provenance
from randlabels.io import atomic_output

log = logging.getLogger(__name__)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles plain batches only: dicts, lists, strings and numpy arrays.

    The batch files come from the user, unpinned by any checksum; refusing every
    global except the few an ndarray needs keeps a hostile pickle from running code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 pickles of bytes with protocol 2 go through codecs.encode.
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


IMAGENET_RESOLUTIONS = (16, 32, 64)
IMAGENET_CLASSES = 1000
IMAGENET_TRAIN_BATCHES = tuple(f"train_data_batch_{k}" for k in range(1, 11))
IMAGENET_VAL_BATCH = "val_data"
IMAGENET_MAP_FILE = "map_clsloc.txt"
_IMAGENET_BLOCK = 4096  # images converted to NHWC and written per step


def _key(mapping: Mapping, key: str) -> Any:
    """``mapping[key]`` for pickles made by Python 2 (bytes keys) or Python 3 (str keys)."""
    if key.encode() in mapping:
        return mapping[key.encode()]
    return mapping[key]


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle that names a global outside the allowed few."""


class _ImagenetUnpickler(_BatchUnpickler):
    """The base restrictions plus the two other ways numpy pickles its objects.

    Downsampled ImageNet's batches were pickled by Python 3; depending on the
    protocol and numpy version an array comes back through ``_frombuffer``
    (protocol 5) and a numpy integer in a list through ``scalar``. Both only
    build numbers from bytes. Nothing else is allowed: no code can run.
    """

    _ALLOWED = {
        **_BatchUnpickler._ALLOWED,
        ("numpy.core.multiarray", "scalar"): np.int64(0).__reduce__()[0],
        ("numpy._core.multiarray", "scalar"): np.int64(0).__reduce__()[0],
        ("numpy.core.numeric", "_frombuffer"): np.zeros(0).__reduce_ex__(5)[0],
        ("numpy._core.numeric", "_frombuffer"): np.zeros(0).__reduce_ex__(5)[0],
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(
                f"refusing to load global {module}.{name} (only dicts, lists, numbers "
                f"and numpy arrays may appear in a batch file)"
            ) from None


def _imagenet_folders(root: Path, size: int) -> list[Path]:
    """Where the batch files may lie: ``root`` itself, then the folders the official
    zips unpack to (the 64-pixel training set comes as two zips, part1 and part2)."""
    if size == 64:
        train = [f"Imagenet64_train_part{k}" for k in (1, 2)]
    else:
        train = [f"Imagenet{size}_train"]
    names = [*train, f"Imagenet{size}_val"]
    names += [f"{name}_npz" for name in names]
    return [root, *(root / name for name in names)]


def _imagenet_zips(size: int) -> str:
    """The official archive names, for error messages."""
    train = (
        [f"Imagenet{size}_train.zip"]
        if size != 64
        else ["Imagenet64_train_part1.zip", "Imagenet64_train_part2.zip"]
    )
    files = [*train, f"Imagenet{size}_val.zip"]
    npz = [name.replace(".zip", "_npz.zip") for name in files]
    return f"{' + '.join(files)} (or {' + '.join(npz)})"


def _find_imagenet_files(root: Path, size: int) -> list[Path]:
    """The ten training batches and the validation batch, pickle or npz, in that order.

    For each batch the first match wins, searching the folders of
    :func:`_imagenet_folders` in order and, within one, the pickle before the npz.
    """
    folders = _imagenet_folders(root, size)
    found, missing = [], []
    for stem in (*IMAGENET_TRAIN_BATCHES, IMAGENET_VAL_BATCH):
        candidates = [folder / name for folder in folders for name in (stem, f"{stem}.npz")]
        hit = next((path for path in candidates if path.is_file()), None)
        if hit is None:
            missing.append(stem)
        else:
            found.append(hit)
    if missing:
        where = ", ".join(str(folder) for folder in folders)
        what = (
            "found none of its batch files"
            if len(missing) == len(IMAGENET_TRAIN_BATCHES) + 1
            else f"missing {', '.join(missing)} (each as the pickle file of that name or "
            f"as NAME.npz)"
        )
        raise DatasetFileError(
            root,
            f"Downsampled ImageNet {size}x{size}: {what}. Expected the files "
            f"train_data_batch_1 ... train_data_batch_10 "
            f"and val_data in one of: {where}. They cannot be downloaded automatically: "
            f"log in at image-net.org, download {_imagenet_zips(size)} from "
            f"'Downsampled ImageNet' (image-net.org/download-images) and unpack them "
            f"into {root}",
        )
    return found


def _load_imagenet_batch(path: Path) -> tuple[Any, Any]:
    """(data, labels) of one batch file as stored, pickle or npz; errors name the file."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                missing = [key for key in ("data", "labels") if key not in npz.files]
                if missing:
                    raise DatasetFileError(path, f"lacks array(s) {', '.join(missing)}")
                return npz["data"], npz["labels"]
        with open(path, "rb") as handle:
            content = _ImagenetUnpickler(handle, encoding="bytes").load()
    except DatasetFileError:
        raise
    except _RefusedGlobal as err:
        raise DatasetFileError(path, f"refused: {err}") from None
    except MemoryError:
        raise
    except Exception as err:  # pickle/zip/zlib/numpy report damage in many ways
        raise DatasetFileError(
            path, f"unreadable, damaged or truncated batch file ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(content, dict):
        raise DatasetFileError(path, f"is a pickled {type(content).__name__}, expected a dict")
    try:
        return _key(content, "data"), _key(content, "labels")
    except KeyError as err:
        raise DatasetFileError(path, f"lacks key {err}") from None


def _read_imagenet_batch(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (n, 3·S·S) uint8 and one-based labels (n,) int64 of one batch, checked."""
    raw_data, raw_labels = _load_imagenet_batch(path)
    data = np.asarray(raw_data)
    del raw_data
    width = 3 * size * size
    if data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetFileError(
            path, f"data is {data.dtype} {data.shape}, expected uint8 (n, {width})"
        )
    if data.shape[1] != width:
        side = (data.shape[1] // 3) ** 0.5
        hint = (
            f"; the rows fit {int(side)}x{int(side)} images: set resolution: {int(side)}"
            if data.shape[1] % 3 == 0 and side == int(side)
            else ""
        )
        raise DatasetFileError(
            path,
            f"data rows have {data.shape[1]} values, expected 3*{size}*{size} = {width} for "
            f"resolution {size}{hint}",
        )
    try:
        labels = np.asarray(raw_labels)
    except Exception:  # ragged or odd content
        labels = np.asarray([], dtype=object)
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetFileError(
            path,
            f"labels are {labels.dtype} {labels.shape} for {len(data)} images, "
            f"expected {len(data)} integers",
        )
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 1 or labels.max() > IMAGENET_CLASSES):
        raise DatasetFileError(
            path,
            f"labels span {labels.min()}..{labels.max()}, expected the official one-based "
            f"1..{IMAGENET_CLASSES}",
        )
    return data, labels


def _imagenet_class_names(map_file: Path | None, num_classes: int) -> list[str]:
    """Names of the first ``num_classes`` classes (0-based label k = official label k+1).

    From ``map_clsloc.txt`` (lines "<wnid> <official label> <name>", as in the
    ILSVRC devkit) as "<wnid> <name>" where present; "class k" otherwise.
    """
    if map_file is None:
        return [f"class {k}" for k in range(num_classes)]
    names: dict[int, str] = {}
    try:
        lines = map_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetFileError(map_file, f"unreadable class map ({err})") from err
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < 3 or not fields[1].isdigit():
            raise DatasetFileError(
                map_file, f"line {number} is {line!r}, expected '<wnid> <label> <name>'"
            )
        index = int(fields[1])
        if not 1 <= index <= IMAGENET_CLASSES or index in names:
            raise DatasetFileError(
                map_file, f"line {number}: label {index} repeated or outside 1..{IMAGENET_CLASSES}"
            )
        names[index] = f"{fields[0]} {' '.join(fields[2:])}"
    if len(names) != IMAGENET_CLASSES:
        raise DatasetFileError(
            map_file, f"names {len(names)} classes, expected all {IMAGENET_CLASSES}"
        )
    return [names[k + 1] for k in range(num_classes)]


def prepare_imagenet32(
    out_path: str | os.PathLike,
    *,
    root: str | os.PathLike,
    resolution: int = 32,
    classes: int | None = None,
) -> None:
    """Write Downsampled ImageNet (Chrabaszcz, Loshchilov & Hutter 2017) from the user's files.

    Config source ``imagenet`` (keys ``root``, ``resolution``, ``classes``).

    The data cannot be downloaded automatically (image-net.org needs a login): the
    user unpacks ``Imagenet{S}_train.zip`` and ``Imagenet{S}_val.zip`` (at 64 px
    ``Imagenet64_train_part1.zip`` and ``..._part2.zip``), or their ``_npz``
    variants, into ``root``. The ten training batches ``train_data_batch_1`` ...
    ``train_data_batch_10`` and ``val_data`` (or ``NAME.npz``) are looked for in
    ``root`` and in the folders the zips unpack to (``root/Imagenet{S}_train``,
    ``root/Imagenet{S}_val``, their ``_npz`` and ``_part1``/``_part2`` forms). An
    optional ``root/map_clsloc.txt`` supplies class names.

    Each batch is a dict with ``data`` (n × 3·S·S uint8 rows, channel-major like
    CIFAR) and ``labels`` (one-based 1..1000). They are written train first, the
    validation batch last with ``is_test`` set, labels made 0-based (label k is the
    official k+1). ``classes`` keeps only the images of the official labels
    1..classes: the full set is 1,281,167 + 50,000 images, i.e. about 1.0 GB at
    16 px, 4.1 GB at 32 px and 16.4 GB at 64 px, and a dataset file is read into
    memory whole by training jobs.

    Batches are read one at a time and written to the file block by block, so memory
    holds about one batch (~0.4 GB at 32 px, ~1.6 GB at 64 px). The normalization is
    that of the training images kept, exact (streamed 256-bin histograms). The name
    attribute is ``imagenet{S}``; the checksum is :func:`_imagenet_checksum` over
    the batch files (and the class map, if used).
    """
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, (int, np.integer))
        or resolution not in IMAGENET_RESOLUTIONS
    ):
        raise ValueError(
            f"'resolution' must be one of {', '.join(map(str, IMAGENET_RESOLUTIONS))} "
            f"(the official Downsampled ImageNet sizes), got {resolution!r}"
        )
    size = int(resolution)
    if classes is not None:
        check_int("classes", classes, 1)
        if classes > IMAGENET_CLASSES:
            raise ValueError(f"'classes' must be at most {IMAGENET_CLASSES}, got {classes!r}")
    num_classes = IMAGENET_CLASSES if classes is None else int(classes)

    root = Path(root)
    files = _find_imagenet_files(root, size)
    map_file = root / IMAGENET_MAP_FILE
    map_file = map_file if map_file.is_file() else None
    class_names = _imagenet_class_names(map_file, num_classes)
    checksum = files_checksum(files + ([map_file] if map_file else []))

    rows_per_chunk = max(1, (1 << 20) // (3 * size * size))
    counts = np.zeros((3, 256), dtype=np.int64)  # per-channel histogram of training pixels
    n_train = n_total = 0
    with atomic_output(out_path) as tmp:
        with h5py.File(tmp, "w") as h5:
            images_ds = h5.create_dataset(
                "images",
                shape=(0, size, size, 3),
                maxshape=(None, size, size, 3),
                dtype=np.uint8,
                chunks=(rows_per_chunk, size, size, 3),
            )
            labels_ds = h5.create_dataset(
                "labels", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(1 << 16,)
            )
            test_ds = h5.create_dataset(
                "is_test", shape=(0,), maxshape=(None,), dtype=bool, chunks=(1 << 16,)
            )
            for path in files:
                is_val = path.name.startswith(IMAGENET_VAL_BATCH)
                data, labels = _read_imagenet_batch(path, size)
                keep = np.flatnonzero(labels <= num_classes)
                log.info("%s: %d images, %d kept", path, len(labels), len(keep))
                for start in range(0, len(keep), _IMAGENET_BLOCK):
                    index = keep[start : start + _IMAGENET_BLOCK]
                    chw = data[index].reshape(-1, 3, size, size)
                    k = len(index)
                    if not is_val:
                        for channel in range(3):
                            counts[channel] += np.bincount(
                                chw[:, channel].ravel(), minlength=256
                            )
                    for ds_, values in (
                        (images_ds, np.ascontiguousarray(chw.transpose(0, 2, 3, 1))),
                        (labels_ds, labels[index] - 1),
                        (test_ds, np.full(k, is_val)),
                    ):
                        ds_.resize(n_total + k, axis=0)
                        ds_[n_total : n_total + k] = values
                    n_total += k
                    n_train += 0 if is_val else k
                del data, labels
            if n_train == 0:
                raise ValueError(
                    f"no training image has an official label in 1..{num_classes} "
                    f"('classes': {classes})"
                )
            mean, std = norm_stats_from_counts(counts)
            h5.create_dataset(
                "class_names", data=class_names, dtype=h5py.string_dtype("utf-8")
            )
            layout = ", ".join(str(path.relative_to(root)) for path in files)
            subset = (
                f"all {IMAGENET_CLASSES} classes"
                if classes is None
                else f"official labels 1..{num_classes} of {IMAGENET_CLASSES}"
            )
            attrs = {
                "name": f"imagenet{size}",
                "kind": "image",
                "source": (
                    f"Downsampled ImageNet {size}x{size} (Chrabaszcz, Loshchilov & Hutter "
                    f"2017), {subset}, from {root}: {layout}"
                    + (f"; class names from {IMAGENET_MAP_FILE}" if map_file else "")
                ),
                "checksum": checksum,
                "num_classes": num_classes,
                "norm_mean": mean,
                "norm_std": std,
                "resolution": size,
            }
            for key, value in attrs.items():
                h5.attrs[key] = value
            provenance.record_source(checksum)  # the raw data, into the lineage
            provenance.stamp_into(h5.attrs)
    log.info(
        "wrote %s: %d samples (%d train, %d val), %d classes",
        out_path, n_total, n_train, n_total - n_train, num_classes,
    )


# --------------------------------------------------------------------------- dispatch
