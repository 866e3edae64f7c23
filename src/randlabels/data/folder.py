"""Your own images as a folder tree: one sub-folder per class (torchvision's ImageFolder layout).

Config source ``folder`` (keys ``root``, ``resize``, ``color``)::

    root/cat/0001.png
    root/cat/0002.jpg
    root/dog/0001.png

Classes are the sub-folders in sorted order (label k is the k-th name, as
torchvision's ``ImageFolder`` numbers them). Every file must be an image with one of
torchvision's image extensions (hidden files, such as .DS_Store, are ignored); a
file of another kind, an image PIL cannot read, or an empty class folder stops the
preparation with the file named. Images must all have the same size unless
``resize: [H, W]`` asks for them to be resized (bilinear). ``color: auto`` (the
default) keeps one channel when every image is grayscale and uses RGB otherwise;
``grayscale`` and ``rgb`` force one. There is no official test part (``is_test`` is
all False): the split draws the test set from the images.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from randlabels.data.h5file import DatasetFileError, check_not_constant, files_checksum, image_norm_stats, write_dataset

log = logging.getLogger(__name__)

COLORS = ("auto", "grayscale", "rgb")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_PROGRESS_EVERY = 2000  # images between progress lines


def _image_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(file, label)]) in torchvision's order; refuses what is not an image."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

    if not root.is_dir():
        raise DatasetFileError(root, "image folder does not exist")
    try:
        classes, index = find_classes(str(root))
    except FileNotFoundError as err:
        raise DatasetFileError(root, f"no class sub-folders ({err})") from None
    samples = []
    for name in classes:
        files = sorted(
            path for path in (root / name).rglob("*")
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
        )
        if not files:
            raise DatasetFileError(root / name, "class folder holds no image")
        for path in files:
            if not path.name.lower().endswith(IMG_EXTENSIONS):
                raise DatasetFileError(
                    path, f"not an image file (expected one of {', '.join(IMG_EXTENSIONS)})"
                )
            samples.append((path, index[name]))
    return classes, samples


def _load(path: Path, resize: Sequence[int] | None):
    """One image as a PIL image, resized if asked; unreadable files name themselves."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if resize is not None:
                image = image.resize((int(resize[1]), int(resize[0])), Image.Resampling.BILINEAR)
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DatasetFileError(path, f"unreadable image ({err})") from err


def prepare_folder(
    out_path: str | os.PathLike,
    *,
    root: str | os.PathLike,
    resize: Sequence[int] | None = None,
    color: str = "auto",
) -> None:
    """Write the images of ``root`` (one sub-folder per class) as one dataset file."""
    if color not in COLORS:
        raise ValueError(f"'color' must be one of {', '.join(COLORS)}, got {color!r}")
    root = Path(root)
    classes, samples = _image_files(root)
    log.info("reading %d images of %d classes from %s", len(samples), len(classes), root)
    images, first, started = [], None, time.monotonic()
    for k, (path, _label) in enumerate(samples, start=1):
        image = _load(path, resize)
        if first is None:
            first = (path, image.size)
        elif image.size != first[1]:
            raise DatasetFileError(
                path,
                f"image is {image.size[1]}x{image.size[0]} (HxW) but {first[0]} is "
                f"{first[1][1]}x{first[1][0]}; set resize: [H, W] to resize every image",
            )
        images.append(image)
        if k % _PROGRESS_EVERY == 0:
            log.info("%d/%d images read (%.0f s)", k, len(samples), time.monotonic() - started)
    if color == "auto":
        color = "grayscale" if all(image.mode in _GRAY_MODES for image in images) else "rgb"
    mode = "L" if color == "grayscale" else "RGB"
    array = np.stack([np.asarray(image.convert(mode), dtype=np.uint8) for image in images])
    if array.ndim == 3:
        array = array[..., np.newaxis]
    labels = np.asarray([label for _path, label in samples], dtype=np.int64)
    check_not_constant(root, array)
    mean, std = image_norm_stats(array)
    write_dataset(
        out_path,
        images=array,
        labels=labels,
        is_test=np.zeros(len(labels), dtype=bool),
        class_names=classes,
        attrs={
            "name": root.name,
            "kind": "image",
            "source": (
                f"image folder {root} ({len(samples)} files, {color}"
                + (f", resized to {int(resize[0])}x{int(resize[1])}" if resize else "")
                + ")"
            ),
            "checksum": files_checksum([path for path, _label in samples], root=root),
            "num_classes": len(classes),
            "norm_mean": mean,
            "norm_std": std,
        },
    )
