"""Datasets as single, self-describing HDF5 files.

Every source (scikit-learn digits, synthetic Gaussian vectors, CIFAR-10/100,
Downsampled ImageNet from files the user provides) is turned once into one HDF5
file, so that training jobs read one local file with one layout and never touch
the network or the raw archives:

``/images``
    uint8 (N, H, W, C) for images (NHWC), float32 (N, D) for vector data.
``/labels``
    int64 (N,).
``/is_test``
    bool (N,): True for samples of an official test set (CIFAR's test batch,
    ImageNet's validation batch).
``/class_names``
    variable-length UTF-8 strings, one per class.

Root attributes: ``name``, ``kind`` ("image" or "vector"), ``source`` (provenance
in words), ``checksum`` ("sha256:<hex>" of the raw file the data came from, or over
the digests of its files for ImageNet's batch files; "" for synthetic data),
``num_classes``, ``norm_mean`` and ``norm_std`` (what training normalizes with),
plus the generating parameters of synthetic data (ImageNet: ``resolution``).

All files are written through :func:`randlabels.io.atomic_output`, so an
interrupted job leaves no file that looks complete.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import logging
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from randlabels import __version__
from randlabels.errors import InputFileError
from randlabels.io import atomic_output

log = logging.getLogger(__name__)

SOURCES = ("digits", "gaussian", "cifar10", "cifar100", "imagenet")
KINDS = ("image", "vector")
REQUIRED_DATASETS = ("images", "labels", "is_test", "class_names")
REQUIRED_ATTRS = ("name", "kind", "source", "checksum", "num_classes", "norm_mean", "norm_std")

_CHUNK = 1 << 20  # bytes per read when hashing or downloading
_USER_AGENT = f"randlabels/{__version__} (+python urllib)"


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


# --------------------------------------------------------------------------- helpers


def _digests(path: Path) -> tuple[str, str]:
    """(md5, sha256) hex digests of a file, in one pass over it."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


def _image_norm_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of ``images / 255``.

    Computed exactly from a 256-bin histogram per channel, which needs no float
    copy of the images (CIFAR's would take over a gigabyte in float64).
    """
    counts = np.stack(
        [np.bincount(images[..., c].ravel(), minlength=256) for c in range(images.shape[-1])]
    )
    return _norm_stats_from_counts(counts)


def _norm_stats_from_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _write_dataset(
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
    log.info("wrote %s: %d samples, %d classes", out_path, len(labels), len(class_names))


# --------------------------------------------------------------------------- digits


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
    mean, std = _image_norm_stats(images)
    _, sha256 = _digests(_sklearn_digits_file())
    _write_dataset(
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


# --------------------------------------------------------------------------- gaussian


def _check_int(name: str, value: Any, minimum: int) -> None:
    """Refuse non-integers (bools included) and values below ``minimum``, naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"'{name}' must be an integer >= {minimum}, got {value!r}")


def _gaussian_variances(
    dim: int, variances: Sequence[float] | None, spectrum: Mapping[str, Any] | None
) -> np.ndarray:
    """The diagonal of Σx from either an explicit list or a spectrum description."""
    if (variances is None) == (spectrum is None):
        raise ValueError("give exactly one of 'variances' and 'spectrum'")
    if variances is not None:
        values = np.asarray(variances, dtype=np.float64)
        if values.ndim != 1 or len(values) != dim:
            raise ValueError(
                f"'variances' must be a list of dim={dim} numbers, got shape {values.shape}"
            )
    else:
        if not isinstance(spectrum, Mapping) or set(spectrum) != {"kind", "low", "high"}:
            raise ValueError(
                f"'spectrum' must be a mapping with keys kind, low, high; got {spectrum!r}"
            )
        if spectrum["kind"] != "linear":
            raise ValueError(f"'spectrum' kind must be 'linear', got {spectrum['kind']!r}")
        values = np.linspace(float(spectrum["low"]), float(spectrum["high"]), dim)
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        name = "variances" if variances is not None else "spectrum"
        raise ValueError(f"'{name}' must give finite positive variances, got {values.tolist()}")
    return values


def prepare_gaussian(
    out_path: str | os.PathLike,
    *,
    dim: int,
    variances: Sequence[float] | None = None,
    spectrum: Mapping[str, Any] | None = None,
    n_samples: int,
    seed: int,
    num_classes: int = 10,
) -> None:
    """Write x ~ N(0, diag(variances)) with labels drawn independently of x.

    The paper's synthetic setting (linear spectrum 0.1..3.0 in 30 dimensions) is
    ``spectrum={"kind": "linear", "low": 0.1, "high": 3.0}``. The labels carry no
    information about x by construction: they come uniformly from the same seeded
    generator, after x. The normalization stored is the identity, so training sees
    the exact covariance.
    """
    _check_int("dim", dim, 1)
    _check_int("n_samples", n_samples, 2)
    _check_int("num_classes", num_classes, 2)
    _check_int("seed", seed, 0)
    values = _gaussian_variances(int(dim), variances, spectrum)

    rng = np.random.default_rng(int(seed))
    x = (rng.standard_normal((int(n_samples), int(dim))) * np.sqrt(values)).astype(np.float32)
    labels = rng.integers(0, int(num_classes), size=int(n_samples), dtype=np.int64)
    if spectrum is None:
        how = "explicit variances"
    else:
        how = f"linear spectrum {float(spectrum['low'])}..{float(spectrum['high'])}"
    _write_dataset(
        out_path,
        images=x,
        labels=labels,
        is_test=np.zeros(int(n_samples), dtype=bool),
        class_names=[f"class {k}" for k in range(int(num_classes))],
        attrs={
            "name": "gaussian",
            "kind": "vector",
            "source": (
                f"synthetic N(0, diag(variances)) ({how}), labels uniform over "
                f"{int(num_classes)} classes independent of x, seed {int(seed)}"
            ),
            "checksum": "",
            "num_classes": int(num_classes),
            "norm_mean": np.zeros(int(dim), dtype=np.float64),
            "norm_std": np.ones(int(dim), dtype=np.float64),
            "dim": int(dim),
            "variances": values,
            "n_samples": int(n_samples),
            "seed": int(seed),
        },
    )


# --------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class _CifarLayout:
    """Where a CIFAR python archive keeps its batches and which keys they use."""

    title: str
    train_members: tuple[str, ...]
    test_member: str
    meta_member: str
    label_key: str
    names_key: str


_CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout(
        title="CIFAR-10",
        train_members=tuple(f"cifar-10-batches-py/data_batch_{k}" for k in range(1, 6)),
        test_member="cifar-10-batches-py/test_batch",
        meta_member="cifar-10-batches-py/batches.meta",
        label_key="labels",
        names_key="label_names",
    ),
    "cifar100": _CifarLayout(
        title="CIFAR-100",
        train_members=("cifar-100-python/train",),
        test_member="cifar-100-python/test",
        meta_member="cifar-100-python/meta",
        label_key="fine_labels",
        names_key="fine_label_names",
    ),
}


def _torchvision_defaults(name: str) -> tuple[str, str, str]:
    """(url, archive filename, md5) that torchvision uses for this CIFAR variant."""
    from torchvision.datasets import CIFAR10, CIFAR100  # slow import, only when needed

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    return cls.url, cls.filename, cls.tgz_md5


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: dicts, lists, strings and numpy uint8 arrays.

    The md5 check already pins the archive, but a ``url``/``md5`` override can point
    anywhere; refusing every global except the few an ndarray needs keeps a hostile
    pickle from running code.
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


def _key(mapping: Mapping, key: str) -> Any:
    """``mapping[key]`` for pickles made by Python 2 (bytes keys) or Python 3 (str keys)."""
    if key.encode() in mapping:
        return mapping[key.encode()]
    return mapping[key]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _load_member(tar: tarfile.TarFile, archive: Path, member: str) -> dict:
    """Unpickle one named regular-file member of the archive into a dict."""
    try:
        info = tar.getmember(member)
    except KeyError:
        raise DatasetFileError(archive, f"archive lacks member {member!r}") from None
    if not info.isfile():
        raise DatasetFileError(archive, f"member {member!r} is not a regular file")
    handle = tar.extractfile(info)
    assert handle is not None  # regular files always have a handle
    with handle:
        payload = handle.read()
    content = _BatchUnpickler(io.BytesIO(payload), encoding="bytes").load()
    if not isinstance(content, dict):
        raise DatasetFileError(archive, f"member {member!r} is not a pickled dict")
    return content


def _read_batch(
    tar: tarfile.TarFile, archive: Path, member: str, label_key: str
) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 32, 32, 3) NHWC and labels (n,) from one CIFAR batch.

    CIFAR stores each image as a row of 3072 bytes: the red plane, then green, then
    blue, each 32×32 in row-major order, i.e. (C, H, W).
    """
    batch = _load_member(tar, archive, member)
    try:
        data = np.asarray(_key(batch, "data"))
        labels = np.asarray(_key(batch, label_key))
    except KeyError as err:
        raise DatasetFileError(archive, f"member {member!r} lacks key {err}") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetFileError(
            archive,
            f"member {member!r}: data is {data.dtype} {data.shape}, expected uint8 (n, 3072)",
        )
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetFileError(
            archive, f"member {member!r}: {len(labels)} labels for {len(data)} images"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _read_cifar_archive(
    archive: Path, layout: _CifarLayout
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(images, labels, is_test, class_names) from a CIFAR python archive, train first."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            meta = _load_member(tar, archive, layout.meta_member)
            try:
                class_names = [_text(v) for v in _key(meta, layout.names_key)]
            except KeyError as err:
                raise DatasetFileError(
                    archive, f"member {layout.meta_member!r} lacks key {err}"
                ) from None
            parts = [
                _read_batch(tar, archive, member, layout.label_key)
                for member in (*layout.train_members, layout.test_member)
            ]
    except (tarfile.TarError, EOFError, OSError, zlib.error, pickle.UnpicklingError) as err:
        raise DatasetFileError(archive, f"unreadable or truncated archive ({err})") from err
    images = np.concatenate([part[0] for part in parts])
    labels = np.concatenate([part[1] for part in parts])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[len(labels) - len(parts[-1][1]) :] = True
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(class_names):
        raise DatasetFileError(
            archive, f"labels outside 0..{len(class_names) - 1} ({len(class_names)} class names)"
        )
    return images, labels, is_test, class_names


def _download(url: str, destination: Path, expected_md5: str) -> None:
    """Fetch ``url`` to ``destination`` atomically, refusing content with the wrong md5.

    Plain ``urllib`` handles https:// and file:// alike. torchvision's
    ``download_url`` is not used because (torchvision 0.29) it reads
    ``response.length``, which file:// responses lack, and it writes straight to the
    final name, leaving an empty or partial archive behind on failure.
    """
    log.info("downloading %s to %s", url, destination)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with atomic_output(destination) as tmp:
        try:
            with urllib.request.urlopen(request, timeout=60) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, _CHUNK)
        except (urllib.error.URLError, OSError) as err:
            raise ConnectionError(
                f"could not download {url} to {destination} ({err}); "
                f"place the archive there by hand"
            ) from err
        actual, _ = _digests(tmp)
        if actual != expected_md5:
            raise ChecksumError(
                destination,
                f"md5:{expected_md5}",
                f"md5:{actual}",
                f"The download from {url} was discarded.",
            )


def prepare_cifar(
    out_path: str | os.PathLike,
    *,
    name: str,
    root: str | os.PathLike,
    download: bool = True,
    url: str | None = None,
    md5: str | None = None,
) -> None:
    """Write CIFAR-10 or CIFAR-100 (train then test) from the official python archive.

    The archive is kept at ``root/<torchvision's filename>`` and is downloaded there
    if missing and ``download`` is true. Its md5 (torchvision's unless ``md5`` is
    given) is always checked before anything in it is read. Only the known batch
    members are unpickled.
    """
    if name not in _CIFAR_LAYOUTS:
        raise ValueError(f"unknown CIFAR name {name!r}; valid names: {', '.join(_CIFAR_LAYOUTS)}")
    layout = _CIFAR_LAYOUTS[name]
    default_url, filename, default_md5 = _torchvision_defaults(name)
    url = url or default_url
    expected_md5 = (md5 or default_md5).lower()
    archive = Path(root) / filename

    downloaded = False
    if not archive.is_file():
        if not download:
            raise FileNotFoundError(
                f"{archive}: {layout.title} archive not found; set download: true "
                f"or place the archive there"
            )
        _download(url, archive, expected_md5)
        downloaded = True

    actual_md5, sha256 = _digests(archive)
    if actual_md5 != expected_md5:
        raise ChecksumError(
            archive,
            f"md5:{expected_md5}",
            f"md5:{actual_md5}",
            "Delete the file to download it again (or fix the expected md5).",
        )

    images, labels, is_test, class_names = _read_cifar_archive(archive, layout)
    mean, std = _image_norm_stats(images[~is_test])
    where = url if downloaded else f"on disk ({filename}; download address {url})"
    _write_dataset(
        out_path,
        images=images,
        labels=labels,
        is_test=is_test,
        class_names=class_names,
        attrs={
            "name": name,
            "kind": "image",
            "source": f"{layout.title} python archive {where}, md5 {actual_md5}",
            "checksum": f"sha256:{sha256}",
            "num_classes": len(class_names),
            "norm_mean": mean,
            "norm_std": std,
        },
    )


# --------------------------------------------------------------------------- Downsampled ImageNet

IMAGENET_RESOLUTIONS = (16, 32, 64)
IMAGENET_CLASSES = 1000
IMAGENET_TRAIN_BATCHES = tuple(f"train_data_batch_{k}" for k in range(1, 11))
IMAGENET_VAL_BATCH = "val_data"
IMAGENET_MAP_FILE = "map_clsloc.txt"
_IMAGENET_BLOCK = 4096  # images converted to NHWC and written per step


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle that names a global outside the allowed few."""


class _ImagenetUnpickler(_BatchUnpickler):
    """The CIFAR restrictions plus the two other ways numpy pickles its objects.

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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _imagenet_checksum(files: Sequence[Path]) -> str:
    """sha256 over the lines "<file name> <sha256 of the file>", in the given order.

    Only base names enter, so the same files give the same checksum whether they
    lie in ``root`` or in the unpacked zip folders.
    """
    combined = hashlib.sha256()
    for path in files:
        combined.update(f"{path.name} {_sha256(path)}\n".encode())
    return f"sha256:{combined.hexdigest()}"


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
        _check_int("classes", classes, 1)
        if classes > IMAGENET_CLASSES:
            raise ValueError(f"'classes' must be at most {IMAGENET_CLASSES}, got {classes!r}")
    num_classes = IMAGENET_CLASSES if classes is None else int(classes)

    root = Path(root)
    files = _find_imagenet_files(root, size)
    map_file = root / IMAGENET_MAP_FILE
    map_file = map_file if map_file.is_file() else None
    class_names = _imagenet_class_names(map_file, num_classes)
    checksum = _imagenet_checksum(files + ([map_file] if map_file else []))

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
            mean, std = _norm_stats_from_counts(counts)
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
    log.info(
        "wrote %s: %d samples (%d train, %d val), %d classes",
        out_path, n_total, n_train, n_total - n_train, num_classes,
    )


# --------------------------------------------------------------------------- dispatch


def prepare_dataset(out_path: str | os.PathLike, source: str, **params: Any) -> None:
    """Prepare the dataset file for one config entry (``source`` plus its parameters)."""
    if source == "digits":
        prepare_digits(out_path, **params)
    elif source == "gaussian":
        prepare_gaussian(out_path, **params)
    elif source in ("cifar10", "cifar100"):
        prepare_cifar(out_path, name=source, **params)
    elif source == "imagenet":
        prepare_imagenet32(out_path, **params)
    else:
        raise ValueError(f"unknown dataset source {source!r}; valid names: {', '.join(SOURCES)}")


# --------------------------------------------------------------------------- reading


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
