"""Datasets as single, self-describing HDF5 files.

Every source (scikit-learn digits, synthetic Gaussian vectors, CIFAR-10/100) is
turned once into one HDF5 file, so that training jobs read one local file with one
layout and never touch the network or the raw archives:

``/images``
    uint8 (N, H, W, C) for images (NHWC), float32 (N, D) for vector data.
``/labels``
    int64 (N,).
``/is_test``
    bool (N,): True for samples of an official test set (CIFAR's test batch).
``/class_names``
    variable-length UTF-8 strings, one per class.

Root attributes: ``name``, ``kind`` ("image" or "vector"), ``source`` (provenance
in words), ``checksum`` ("sha256:<hex>" of the raw file the data came from, "" for
synthetic data), ``num_classes``, ``norm_mean`` and ``norm_std`` (what training
normalizes with), plus the generating parameters of synthetic data.

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

SOURCES = ("digits", "gaussian", "cifar10", "cifar100")
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
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[-1]):
        counts = np.bincount(images[..., channel].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = float(counts @ values / total)
        var = float(counts @ (values - mean) ** 2 / total)
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


# --------------------------------------------------------------------------- dispatch


def prepare_dataset(out_path: str | os.PathLike, source: str, **params: Any) -> None:
    """Prepare the dataset file for one config entry (``source`` plus its parameters)."""
    if source == "digits":
        prepare_digits(out_path, **params)
    elif source == "gaussian":
        prepare_gaussian(out_path, **params)
    elif source in ("cifar10", "cifar100"):
        prepare_cifar(out_path, name=source, **params)
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
