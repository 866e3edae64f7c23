"""Tests of randlabels.data: the file format, the embedded and synthetic sources, the
source table, and Downsampled ImageNet ingestion (which needs a login, so the tests
write tiny batch files in its pickle and npz formats). torchvision's datasets and the
user's own images have test files of their own.
"""

from __future__ import annotations

import hashlib
import pickle
from importlib import resources
from pathlib import Path

import h5py
import numpy as np
import pytest

from randlabels import provenance
from randlabels.data import digits, gaussian, imagenet, sources
from randlabels.data.h5file import DatasetFileError, read_dataset

PAPER_SPECTRUM = {"kind": "linear", "low": 0.1, "high": 3.0}


def _entries(folder: Path) -> list[str]:
    """Everything in a folder, hidden temporary files included."""
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- digits


def test_digits_file(tmp_path):
    out = tmp_path / "digits.h5"
    digits.prepare_digits(out)
    data = read_dataset(out)

    assert data.images.shape == (1797, 8, 8, 1) and data.images.dtype == np.uint8
    assert data.images.max() == 255 and data.images.min() == 0
    assert data.labels.dtype == np.int64 and set(np.unique(data.labels)) == set(range(10))
    assert not data.is_test.any()
    assert data.class_names == [str(k) for k in range(10)]
    assert data.kind == "image" and data.num_classes == 10 and data.path == out
    assert data.attrs["name"] == "digits" and "scikit-learn" in data.attrs["source"]

    from sklearn.datasets import load_digits

    np.testing.assert_array_equal(data.images[..., 0], np.rint(load_digits().images * 255 / 16))
    sklearn_file = resources.files("sklearn.datasets.data").joinpath("digits.csv.gz")
    expected = hashlib.sha256(sklearn_file.read_bytes()).hexdigest()
    assert data.attrs["checksum"] == f"sha256:{expected}"

    # Digits are mostly dark background: mean well below 1/2, std of the same order.
    assert data.norm_mean.shape == data.norm_std.shape == (1,)
    np.testing.assert_allclose(data.norm_mean, [(data.images / 255.0).mean()], rtol=1e-12)
    np.testing.assert_allclose(data.norm_std, [(data.images / 255.0).std()], rtol=1e-12)
    assert 0.1 < data.norm_mean[0] < 0.5 and 0.1 < data.norm_std[0] < 0.5
    assert _entries(tmp_path) == ["digits.h5"]


# --------------------------------------------------------------------------- gaussian


def test_gaussian_paper_covariance(tmp_path):
    """The empirical covariance matches diag(linspace(0.1, 3, 30)).

    With known zero mean, the estimate C_ij = mean(x_i x_j) has standard error
    sqrt((S_ii S_jj + S_ij^2) / n). Allowing 5 standard errors per entry keeps the
    chance of a false alarm over all 900 entries below 1e-3 for any seed (the draw
    is seeded, so the test is deterministic anyway), while a wrong spectrum (e.g. std
    instead of variance, off by up to 0.9 per entry) fails by hundreds of errors.
    """
    n, dim = 200_000, 30
    gaussian.prepare_gaussian(tmp_path / "g.h5", dim=dim, spectrum=PAPER_SPECTRUM, n_samples=n, seed=0)
    data = read_dataset(tmp_path / "g.h5")

    assert data.images.shape == (n, dim) and data.images.dtype == np.float32
    assert data.kind == "vector" and data.num_classes == 10
    assert data.class_names == [f"class {k}" for k in range(10)]
    assert data.labels.min() >= 0 and data.labels.max() <= 9 and not data.is_test.any()
    target = np.diag(np.linspace(0.1, 3.0, dim))
    np.testing.assert_allclose(data.attrs["variances"], np.diag(target))
    assert (data.attrs["dim"], data.attrs["n_samples"], data.attrs["seed"]) == (dim, n, 0)
    assert data.attrs["checksum"] == ""
    np.testing.assert_array_equal(data.norm_mean, np.zeros(dim))
    np.testing.assert_array_equal(data.norm_std, np.ones(dim))

    x = data.images.astype(np.float64)
    cov = x.T @ x / n
    var = np.diag(target)
    stderr = np.sqrt((np.outer(var, var) + target**2) / n)
    assert np.all(np.abs(cov - target) <= 5 * stderr), np.abs(cov - target).max()
    # Labels are uniform and carry nothing about x.
    counts = np.bincount(data.labels, minlength=10)
    assert np.all(np.abs(counts - n / 10) < 5 * np.sqrt(n * 0.1 * 0.9))


def test_gaussian_seeds_and_variances(tmp_path):
    common = dict(dim=30, n_samples=100)
    gaussian.prepare_gaussian(tmp_path / "a.h5", spectrum=PAPER_SPECTRUM, seed=3, **common)
    gaussian.prepare_gaussian(tmp_path / "b.h5", spectrum=PAPER_SPECTRUM, seed=3, **common)
    gaussian.prepare_gaussian(tmp_path / "c.h5", spectrum=PAPER_SPECTRUM, seed=4, **common)
    explicit = list(np.linspace(0.1, 3.0, 30))
    gaussian.prepare_gaussian(tmp_path / "d.h5", variances=explicit, seed=3, **common)
    a, b, c, d = (read_dataset(tmp_path / f"{k}.h5") for k in "abcd")

    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.labels, c.labels)
    # An explicit list equal to the spectrum gives the same draw.
    np.testing.assert_array_equal(a.images, d.images)
    np.testing.assert_array_equal(a.labels, d.labels)


def test_gaussian_num_classes(tmp_path):
    gaussian.prepare_gaussian(
        tmp_path / "g.h5", dim=2, variances=[1.0, 2.0], n_samples=50, seed=0, num_classes=3
    )
    data = read_dataset(tmp_path / "g.h5")
    assert data.num_classes == 3 and data.class_names == ["class 0", "class 1", "class 2"]
    assert data.labels.max() <= 2


@pytest.mark.parametrize(
    "params, word",
    [
        (dict(dim=0, spectrum=PAPER_SPECTRUM, n_samples=10), "dim"),
        (dict(dim=3, spectrum=PAPER_SPECTRUM, n_samples=1), "n_samples"),
        (dict(dim=3, variances=[1.0, 2.0], n_samples=10), "variances"),
        (dict(dim=2, variances=[1.0, -2.0], n_samples=10), "variances"),
        (dict(dim=2, variances=[1.0, 0.0], n_samples=10), "variances"),
        (dict(dim=2, n_samples=10), "variances"),
        (dict(dim=2, variances=[1.0, 2.0], spectrum=PAPER_SPECTRUM, n_samples=10), "spectrum"),
        (dict(dim=2, spectrum={"kind": "log", "low": 1, "high": 2}, n_samples=10), "spectrum"),
        (dict(dim=2, spectrum={"kind": "linear", "low": 0.0, "high": 2}, n_samples=10), "spectrum"),
        (dict(dim=2, variances=[1.0, 2.0], n_samples=10, num_classes=1), "num_classes"),
    ],
)
def test_gaussian_bad_params(tmp_path, params, word):
    with pytest.raises(ValueError, match=word):
        gaussian.prepare_gaussian(tmp_path / "g.h5", seed=0, **params)
    assert _entries(tmp_path) == []


# --------------------------------------------------------------------------- read_dataset


@pytest.fixture
def small_file(tmp_path) -> Path:
    out = tmp_path / "g.h5"
    gaussian.prepare_gaussian(out, dim=4, variances=[1, 2, 3, 4], n_samples=500, seed=0)
    return out


def test_read_truncated_file(tmp_path, small_file):
    broken = tmp_path / "truncated.h5"
    broken.write_bytes(small_file.read_bytes()[: small_file.stat().st_size // 2])
    with pytest.raises(DatasetFileError, match="truncated.h5"):
        read_dataset(broken)


def test_read_missing_file(tmp_path):
    with pytest.raises(DatasetFileError, match="absent.h5"):
        read_dataset(tmp_path / "absent.h5")


def test_read_not_hdf5(tmp_path):
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DatasetFileError, match="text.h5"):
        read_dataset(tmp_path / "text.h5")


def test_read_missing_labels(small_file):
    with h5py.File(small_file, "a") as h5:
        del h5["labels"]
    with pytest.raises(DatasetFileError, match=r"g\.h5.*/labels"):
        read_dataset(small_file)


def test_read_missing_attribute(small_file):
    with h5py.File(small_file, "a") as h5:
        del h5.attrs["norm_std"]
    with pytest.raises(DatasetFileError, match="norm_std"):
        read_dataset(small_file)


def _replace(h5: h5py.File, name: str, data: np.ndarray) -> None:
    del h5[name]
    h5.create_dataset(name, data=data)


_EDITS = {
    "label out of range": (lambda h5: h5["labels"].__setitem__(0, 10), "labels outside"),
    "nan input": (lambda h5: h5["images"].__setitem__((0, 0), np.nan), "NaN"),
    "short is_test": (lambda h5: _replace(h5, "is_test", np.zeros(3, bool)), "lengths disagree"),
    "class names": (lambda h5: _replace(h5, "class_names", np.array([b"a"])), "class names"),
}


@pytest.mark.parametrize("case", sorted(_EDITS))
def test_read_inconsistent(small_file, case):
    edit, word = _EDITS[case]
    with h5py.File(small_file, "a") as h5:
        edit(h5)
    with pytest.raises(DatasetFileError, match=word):
        read_dataset(small_file)


# --------------------------------------------------------------------------- dispatch, atomicity


def test_unknown_source(tmp_path):
    with pytest.raises(ValueError, match="digits, gaussian, torchvision, folder, arrays, imagenet"):
        sources.prepare_dataset(tmp_path / "x.h5", "mnist")


def test_prepare_dataset_dispatch(tmp_path):
    sources.prepare_dataset(
        tmp_path / "g.h5", "gaussian", dim=3, spectrum=PAPER_SPECTRUM, n_samples=20, seed=1
    )
    data = read_dataset(tmp_path / "g.h5")
    np.testing.assert_allclose(data.attrs["variances"], [0.1, 1.55, 3.0])


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    """An error in the middle of writing the HDF5 file leaves no file of any name."""

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        gaussian.prepare_gaussian(tmp_path / "g.h5", dim=2, variances=[1, 1], n_samples=10, seed=0)
    assert _entries(tmp_path) == []


def test_rewrite_replaces_file(tmp_path):
    out = tmp_path / "g.h5"
    gaussian.prepare_gaussian(out, dim=2, variances=[1, 1], n_samples=10, seed=0)
    gaussian.prepare_gaussian(out, dim=2, variances=[1, 1], n_samples=12, seed=0)
    assert len(read_dataset(out)) == 12
    assert _entries(tmp_path) == ["g.h5"]


# --------------------------------------------------------------------------- Downsampled ImageNet


def _imagenet_images(n: int, size: int, offset: int) -> np.ndarray:
    """NHWC uint8 images whose every pixel tells where it is: value =
    (37 n + 11 h + 5 w + 80 c + offset) mod 256, so a swapped axis shows."""
    idx = np.indices((n, size, size, 3))
    weights = np.array([37, 11, 5, 80]).reshape(4, 1, 1, 1, 1)
    return (((idx * weights).sum(axis=0) + offset) % 256).astype(np.uint8)


def _official_rows(images: np.ndarray) -> np.ndarray:
    """The official rows: all red values, then green, then blue, each row-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def _write_imagenet(
    root: Path,
    *,
    size: int = 16,
    fmt: str = "pickle",
    layout: str = "flat",
    per_batch: int = 4,
    n_val: int = 6,
    protocol: int = pickle.DEFAULT_PROTOCOL,
    seed: int = 0,
):
    """Ten training batches and val_data as the official zips unpack them.

    Returns (NHWC images, one-based labels, is_val, {batch name: path}) in the order
    the dataset file must hold them. Validation images are brighter (offset 128) so
    that statistics mixing them in would show.
    """
    rng = np.random.default_rng(seed)
    folders = {
        "flat": (root, root, root),
        "zips": (root / f"Imagenet{size}_train",) * 2 + (root / f"Imagenet{size}_val",),
        "zips64": (
            root / f"Imagenet{size}_train_part1{'_npz' if fmt == 'npz' else ''}",
            root / f"Imagenet{size}_train_part2{'_npz' if fmt == 'npz' else ''}",
            root / f"Imagenet{size}_val{'_npz' if fmt == 'npz' else ''}",
        ),
    }[layout]
    all_images, all_labels, is_val, paths = [], [], [], {}
    for k in range(1, 12):
        val = k == 11
        stem = "val_data" if val else f"train_data_batch_{k}"
        folder = folders[2] if val else folders[0] if k <= 5 else folders[1]
        folder.mkdir(parents=True, exist_ok=True)
        n = n_val if val else per_batch
        images = _imagenet_images(n, size, offset=128 if val else 7 * k)
        labels = rng.integers(1, 9, size=n)
        labels[0] = 1 if val else 1 + k % 8  # every batch holds a low label
        content = {"data": _official_rows(images), "labels": [int(v) for v in labels]}
        if not val:
            content["mean"] = _official_rows(images).mean(axis=0)
        if fmt == "npz":
            path = folder / f"{stem}.npz"
            np.savez(path, data=content["data"], labels=labels, **(
                {"mean": content["mean"]} if not val else {}
            ))
        else:
            path = folder / stem
            path.write_bytes(pickle.dumps(content, protocol=protocol))
        all_images.append(images)
        all_labels.append(labels)
        is_val.append(np.full(n, val))
        paths[stem] = path
    return np.concatenate(all_images), np.concatenate(all_labels), np.concatenate(is_val), paths


def _train_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = images / 255.0
    return x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))


def _expected_checksum(paths) -> str:
    combined = hashlib.sha256()
    for path in paths:
        combined.update(f"{path.name} {hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return f"sha256:{combined.hexdigest()}"


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, 5])
def test_imagenet_pickle_flat(tmp_path, protocol):
    root = tmp_path / "root"
    images, labels, is_val, paths = _write_imagenet(root, protocol=protocol)
    out = tmp_path / "out" / "in16.h5"
    imagenet.prepare_imagenet32(out, root=root, resolution=16)
    data = read_dataset(out)

    assert data.images.shape == (46, 16, 16, 3) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images, images)
    # One pixel by hand from the official row: channel c, row h, column w at
    # c*S*S + h*S + w.
    rows = _official_rows(images)
    assert data.images[9, 3, 12, 2] == rows[9, 2 * 256 + 3 * 16 + 12]
    assert data.images[-1, 15, 0, 1] == rows[-1, 1 * 256 + 15 * 16 + 0]
    np.testing.assert_array_equal(data.labels, labels - 1)  # stored 0-based
    assert data.labels.min() == 0 and data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.is_test, is_val)
    assert data.is_test[-6:].all() and not data.is_test[:-6].any()
    mean, std = _train_stats(images[~is_val])
    np.testing.assert_allclose(data.norm_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(data.norm_std, std, rtol=1e-12)
    assert not np.allclose(data.norm_mean, _train_stats(images)[0])  # val would change it

    assert data.num_classes == 1000 and len(data.class_names) == 1000
    assert data.class_names[:2] == ["class 0", "class 1"]
    assert data.kind == "image" and data.attrs["name"] == "imagenet16"
    assert data.attrs["resolution"] == 16
    source = data.attrs["source"]
    assert str(root) in source and "train_data_batch_10" in source and "val_data" in source
    order = [paths[f"train_data_batch_{k}"] for k in range(1, 11)] + [paths["val_data"]]
    assert data.attrs["checksum"] == _expected_checksum(order)
    assert _entries(out.parent) == ["in16.h5"]


@pytest.mark.parametrize("source", ["digits", "arrays", "imagenet", "gaussian"])
def test_every_source_folds_its_raw_checksum_into_the_lineage(tmp_path, source):
    """In a job, a prepared dataset's lineage covers the checksum of its raw files (so
    other raw data under the same config gives other lineages downstream); data drawn
    from its settings alone (gaussian: checksum "") adds nothing."""
    if source == "arrays":
        rng = np.random.default_rng(0)
        np.savez(tmp_path / "a.npz", images=rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8),
                 labels=np.arange(12) % 3)
        params = {"path": str(tmp_path / "a.npz")}
    elif source == "imagenet":
        _write_imagenet(tmp_path / "root")
        params = {"root": str(tmp_path / "root"), "resolution": 16}
    elif source == "gaussian":
        params = {"dim": 2, "variances": [1, 1], "n_samples": 10, "seed": 0}
    else:
        params = {}
    settings = provenance.record_settings("prepare_dataset", {"settings": params}, {"dataset": source})
    try:
        sources.prepare_dataset(tmp_path / "d.h5", source, **params)
    finally:
        provenance.forget_job()
    data = read_dataset(tmp_path / "d.h5")
    checksum = data.attrs["checksum"]
    assert bool(checksum) == (source != "gaussian")
    folded = [f"source {checksum}"] if checksum else []
    assert data.attrs["lineage_sha256"] == provenance.lineage_hash(settings, {"dataset": source}, folded)


def test_imagenet_npz_in_zip_folders_64(tmp_path):
    """The 64-pixel npz zips unpack to ..._train_part1_npz, ..._part2_npz, ..._val_npz."""
    root = tmp_path / "root"
    images, labels, is_val, paths = _write_imagenet(
        root, size=64, fmt="npz", layout="zips64", per_batch=2, n_val=3
    )
    assert paths["train_data_batch_7"].parent.name == "Imagenet64_train_part2_npz"
    out = tmp_path / "in64.h5"
    sources.prepare_dataset(out, "imagenet", root=str(root), resolution=64)
    data = read_dataset(out)

    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, labels - 1)
    np.testing.assert_array_equal(data.is_test, is_val)
    np.testing.assert_allclose(data.norm_mean, _train_stats(images[~is_val])[0], rtol=1e-12)
    assert data.attrs["name"] == "imagenet64"
    assert "Imagenet64_train_part2_npz/train_data_batch_7.npz" in data.attrs["source"]


def test_imagenet_pickle_and_npz_agree(tmp_path):
    """Pickles in Imagenet16_train/ and Imagenet16_val/ and npz files in root hold the
    same data; only the checksum differs."""
    _write_imagenet(tmp_path / "a", layout="zips")
    _write_imagenet(tmp_path / "b", fmt="npz")
    imagenet.prepare_imagenet32(tmp_path / "a.h5", root=tmp_path / "a", resolution=16)
    imagenet.prepare_imagenet32(tmp_path / "b.h5", root=tmp_path / "b", resolution=16)
    a, b = read_dataset(tmp_path / "a.h5"), read_dataset(tmp_path / "b.h5")
    for key in ("images", "labels", "is_test", "norm_mean", "norm_std"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert "Imagenet16_train/train_data_batch_1" in a.attrs["source"]
    assert a.attrs["checksum"] != b.attrs["checksum"]


def test_imagenet_classes_subset(tmp_path):
    root = tmp_path / "root"
    images, labels, is_val, _ = _write_imagenet(root, per_batch=6, n_val=12)
    out = tmp_path / "sub.h5"
    imagenet.prepare_imagenet32(out, root=root, resolution=16, classes=3)
    data = read_dataset(out)

    keep = labels <= 3
    assert 0 < keep.sum() < len(labels) and (keep & is_val).any()
    np.testing.assert_array_equal(data.images, images[keep])
    np.testing.assert_array_equal(data.labels, labels[keep] - 1)
    np.testing.assert_array_equal(data.is_test, is_val[keep])
    assert set(data.labels) == {0, 1, 2}
    assert data.num_classes == 3 and data.class_names == ["class 0", "class 1", "class 2"]
    mean, std = _train_stats(images[keep & ~is_val])
    np.testing.assert_allclose(data.norm_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(data.norm_std, std, rtol=1e-12)
    assert "official labels 1..3 of 1000" in data.attrs["source"]


def test_imagenet_class_map(tmp_path):
    root = tmp_path / "root"
    _, _, _, paths = _write_imagenet(root)
    lines = [f"n{10_000_000 + k:08d} {k} name_{k}" for k in range(1000, 0, -1)]
    (root / "map_clsloc.txt").write_text("\n".join(lines) + "\n")
    imagenet.prepare_imagenet32(tmp_path / "m.h5", root=root, resolution=16, classes=2)
    data = read_dataset(tmp_path / "m.h5")
    assert data.class_names == ["n10000001 name_1", "n10000002 name_2"]
    order = [paths[f"train_data_batch_{k}"] for k in range(1, 11)]
    order += [paths["val_data"], root / "map_clsloc.txt"]
    assert data.attrs["checksum"] == _expected_checksum(order)

    (root / "map_clsloc.txt").write_text("\n".join(lines[:-1]) + "\n")  # label 1 missing
    with pytest.raises(DatasetFileError, match="map_clsloc.txt.*999 classes"):
        imagenet.prepare_imagenet32(tmp_path / "m2.h5", root=root, resolution=16)


def test_imagenet_missing_files(tmp_path):
    root = tmp_path / "nothing"
    with pytest.raises(DatasetFileError) as err:
        imagenet.prepare_imagenet32(tmp_path / "out" / "x.h5", root=root, resolution=32)
    message = str(err.value)
    assert err.value.path == root
    for name in ("train_data_batch_1", "train_data_batch_10", "val_data", "image-net.org"):
        assert name in message
    for place in (root, root / "Imagenet32_train", root / "Imagenet32_val"):
        assert str(place) in message
    assert "Imagenet32_train.zip" in message and "Imagenet32_val.zip" in message
    assert not (tmp_path / "out").exists() or _entries(tmp_path / "out") == []


def test_imagenet_missing_one_batch(tmp_path):
    root = tmp_path / "root"
    _, _, _, paths = _write_imagenet(root, layout="zips")
    paths["train_data_batch_7"].unlink()
    with pytest.raises(DatasetFileError, match=r"missing train_data_batch_7 \(") as err:
        imagenet.prepare_imagenet32(tmp_path / "x.h5", root=root, resolution=16)
    assert "Imagenet16_train" in str(err.value)
    assert _entries(tmp_path) == ["root"]


@pytest.mark.parametrize("fmt", ["pickle", "npz"])
def test_imagenet_truncated_batch(tmp_path, fmt):
    root = tmp_path / "root"
    _, _, _, paths = _write_imagenet(root, fmt=fmt, per_batch=20)
    broken = paths["train_data_batch_4"]
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    out_dir = tmp_path / "out"
    with pytest.raises(DatasetFileError, match=broken.name) as err:
        imagenet.prepare_imagenet32(out_dir / "x.h5", root=root, resolution=16)
    assert err.value.path == broken
    assert not out_dir.exists() or _entries(out_dir) == []


def test_imagenet_refuses_foreign_pickle_globals(tmp_path):
    """A batch whose pickle calls os.system is refused before anything runs."""
    import os

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    root = tmp_path / "root"
    _, _, _, paths = _write_imagenet(root)
    paths["val_data"].write_bytes(pickle.dumps({"data": Evil(), "labels": [1]}))
    with pytest.raises(DatasetFileError, match=r"val_data: refused: refusing to load global"):
        imagenet.prepare_imagenet32(tmp_path / "out" / "x.h5", root=root, resolution=16)
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or _entries(tmp_path / "out") == []


def test_imagenet_wrong_resolution(tmp_path):
    root = tmp_path / "root"
    _write_imagenet(root, size=16, fmt="npz")
    pattern = r"train_data_batch_1.npz.*768 values.*3072.*resolution: 16"
    with pytest.raises(DatasetFileError, match=pattern):
        imagenet.prepare_imagenet32(tmp_path / "x.h5", root=root, resolution=32)


def test_imagenet_zero_based_labels_refused(tmp_path):
    root = tmp_path / "root"
    _, _, _, paths = _write_imagenet(root)
    content = pickle.loads(paths["train_data_batch_2"].read_bytes())
    content["labels"][0] = 0
    paths["train_data_batch_2"].write_bytes(pickle.dumps(content))
    with pytest.raises(DatasetFileError, match=r"train_data_batch_2: labels span 0\.\..*one-based"):
        imagenet.prepare_imagenet32(tmp_path / "x.h5", root=root, resolution=16)


@pytest.mark.parametrize(
    "params, word",
    [
        (dict(resolution=24), "resolution"),
        (dict(resolution=32.0), "resolution"),
        (dict(resolution=True), "resolution"),
        (dict(classes=0), "classes"),
        (dict(classes=1001), "classes"),
        (dict(classes=2.5), "classes"),
    ],
)
def test_imagenet_bad_params(tmp_path, params, word):
    with pytest.raises(ValueError, match=word):
        imagenet.prepare_imagenet32(tmp_path / "x.h5", root=tmp_path, **params)
    assert _entries(tmp_path) == []


def test_imagenet_no_training_image_kept(tmp_path):
    root = tmp_path / "root"
    *_, paths = _write_imagenet(root)
    for k in range(1, 11):  # relabel all training images to class 5
        path = paths[f"train_data_batch_{k}"]
        content = pickle.loads(path.read_bytes())
        content["labels"] = [5] * len(content["labels"])
        path.write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match="no training image"):
        imagenet.prepare_imagenet32(tmp_path / "out" / "x.h5", root=root, resolution=16, classes=2)
    assert _entries(tmp_path / "out") == []
