"""Tests of the torchvision source: real Fashion-MNIST files as Debian installs them,
and small files in torchvision's own formats for the other classes.

The real files are Debian's package dataset-fashion-mnist (.ci/run installs it): they
go through the real code path with no network. CIFAR and SVHN cannot be downloaded
here, so the tests write small archives in their formats and pin them by replacing
torchvision's md5 table for the test, which is the only thing that differs from the
real files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import socket
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from randlabels.data import torchvision_datasets as tvd
from randlabels.data.h5file import ChecksumError, Dataset, DatasetFileError, read_dataset
from randlabels.data.sources import prepare_dataset

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _entries(folder: Path) -> list[str]:
    """Everything in a folder, hidden files included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def fashion_root() -> Path:
    missing = [name for name in FASHION_FILES if not (FASHION_ROOT / name).is_file()]
    if missing:
        pytest.fail(
            f"Debian's dataset-fashion-mnist is not installed ({', '.join(missing)} missing "
            f"in {FASHION_ROOT}): apt-get install dataset-fashion-mnist (.ci/run does)"
        )
    return FASHION_ROOT


def _idx(path: Path, offset: int) -> np.ndarray:
    """An IDX file's payload parsed independently of torchvision."""
    return np.frombuffer(gzip.decompress(path.read_bytes()), dtype=np.uint8, offset=offset)


# --------------------------------------------------------------------------- real Fashion-MNIST


def test_fashion_mnist_from_debians_files(tmp_path, fashion_root, no_network):
    before = _entries(fashion_root)
    out = tmp_path / "out" / "fmnist.h5"
    prepare_dataset(out, "torchvision", name="FashionMNIST", root=str(fashion_root), download=False)
    data = read_dataset(out)

    assert data.images.shape == (70000, 28, 28, 1) and data.images.dtype == np.uint8
    assert int(data.is_test.sum()) == 10000 and not data.is_test[:60000].any()
    train_images = _idx(fashion_root / "train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    test_labels = _idx(fashion_root / "t10k-labels-idx1-ubyte.gz", 8)
    np.testing.assert_array_equal(data.images[:60000, ..., 0], train_images)
    np.testing.assert_array_equal(data.labels[60000:], test_labels)
    assert np.bincount(data.labels[:60000]).tolist() == [6000] * 10  # balanced classes
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert data.attrs["name"] == "FashionMNIST" and str(fashion_root) in data.attrs["source"]
    assert data.attrs["checksum"].startswith("sha256:")
    train = train_images / 255.0
    np.testing.assert_allclose(data.norm_mean, [train.mean()], rtol=1e-9)
    np.testing.assert_allclose(data.norm_std, [train.std()], rtol=1e-9)
    assert _entries(fashion_root) == before  # read only: nothing written beside the files
    assert _entries(out.parent) == ["fmnist.h5"]  # no staging folder left


def test_debians_files_are_recompressed_originals(fashion_root):
    """Debian's .gz files differ from torchvision's md5 but hold the original content."""
    from torchvision.datasets import FashionMNIST

    for filename, md5 in FashionMNIST.resources:
        path = fashion_root / filename
        content = hashlib.md5(gzip.decompress(path.read_bytes())).hexdigest()
        assert _md5(path) != md5
        assert content == tvd.CONTENT_MD5["FashionMNIST"][filename.removesuffix(".gz")]


def test_a_damaged_copy_is_refused_naming_the_file(tmp_path, fashion_root):
    root = tmp_path / "root"
    root.mkdir()
    for name in FASHION_FILES:
        (root / name).write_bytes((fashion_root / name).read_bytes())
    labels = gzip.decompress((root / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels[:-1] + b"\x03"))
    out = tmp_path / "out" / "f.h5"
    with pytest.raises(ChecksumError, match="t10k-labels-idx1-ubyte.gz") as err:
        prepare_dataset(out, "torchvision", name="FashionMNIST", root=str(root), download=False)
    assert "uncompressed content" in str(err.value)
    assert _entries(out.parent) == []


def test_uncompressed_copies_in_torchvisions_layout(tmp_path, fashion_root, no_network):
    """Files copied by hand, uncompressed, where torchvision keeps them."""
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FASHION_FILES:
        (raw / name.removesuffix(".gz")).write_bytes(gzip.decompress((fashion_root / name).read_bytes()))
    out = tmp_path / "f.h5"
    prepare_dataset(out, "torchvision", name="FashionMNIST", root=str(tmp_path / "root"), download=False)
    assert len(read_dataset(out)) == 70000


# --------------------------------------------------------------------------- MNIST family, small


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file (big-endian header: magic 0x08 0x<ndim>, then the dimensions)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def small_mnist(tmp_path, monkeypatch):
    """MNIST-format files (6 train, 4 test images) in torchvision's layout, with
    torchvision's md5 table replaced by theirs."""
    from torchvision.datasets import MNIST

    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28)),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 4, 9]),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28)),
        "t10k-labels-idx1-ubyte": np.array([5, 6, 7, 8]),
    }
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    resources = []
    for filename, _md5_real in MNIST.resources:
        path = raw / filename
        path.write_bytes(gzip.compress(_idx_bytes(arrays[filename.removesuffix(".gz")])))
        resources.append((filename, _md5(path)))
    monkeypatch.setattr(MNIST, "resources", resources)
    return tmp_path / "root", arrays


def test_mnist_in_torchvisions_layout(tmp_path, small_mnist, no_network):
    root, arrays = small_mnist
    out = tmp_path / "m.h5"
    prepare_dataset(out, "torchvision", name="MNIST", root=str(root), download=False)
    data = read_dataset(out)
    np.testing.assert_array_equal(data.images[:6, ..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.labels, [0, 1, 2, 3, 4, 9, 5, 6, 7, 8])
    np.testing.assert_array_equal(data.is_test, [False] * 6 + [True] * 4)
    assert data.num_classes == 10 and data.class_names[0] == "0 - zero"


@pytest.fixture
def mirror(tmp_path):
    """An HTTP server on the loopback address serving tmp_path/mirror (a download mirror)."""
    import functools
    import http.server
    import threading

    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_missing_files_are_downloaded_into_root(tmp_path, small_mnist, mirror, monkeypatch):
    from torchvision.datasets import MNIST

    source, arrays = small_mnist
    folder, url = mirror
    for path in (source / "MNIST" / "raw").iterdir():
        path.rename(folder / path.name)
    monkeypatch.setattr(MNIST, "mirrors", [url])
    root = tmp_path / "fresh"
    prepare_dataset(tmp_path / "m.h5", "torchvision", name="MNIST", root=str(root), download=True)
    assert sorted(p.name for p in (root / "MNIST" / "raw").glob("*.gz")) == sorted(name for name, _ in MNIST.resources)
    np.testing.assert_array_equal(read_dataset(tmp_path / "m.h5").labels[:6], arrays["train-labels-idx1-ubyte"])


def test_a_failed_download_names_the_dataset_and_root(tmp_path, small_mnist, mirror, monkeypatch):
    from torchvision.datasets import MNIST

    _folder, url = mirror  # serves nothing: every file is a 404
    monkeypatch.setattr(MNIST, "mirrors", [url])
    root = tmp_path / "fresh"
    with pytest.raises(DatasetFileError, match="torchvision MNIST: download failed") as err:
        prepare_dataset(tmp_path / "out" / "m.h5", "torchvision", name="MNIST", root=str(root), download=True)
    assert str(root) in str(err.value) and "by hand" in str(err.value)
    assert _entries(tmp_path / "out") == []


def test_wrong_md5_is_refused_before_reading(tmp_path, small_mnist, monkeypatch):
    from torchvision.datasets import MNIST

    root, _ = small_mnist
    monkeypatch.setattr(MNIST, "resources", [(name, "0" * 32) for name, _ in MNIST.resources])
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte.gz") as err:
        prepare_dataset(tmp_path / "out" / "m.h5", "torchvision", name="MNIST", root=str(root), download=False)
    assert "md5:" + "0" * 32 in str(err.value)
    assert _entries(tmp_path / "out") == []


def test_missing_files_without_download_name_both_places(tmp_path):
    root = tmp_path / "empty"
    with pytest.raises(DatasetFileError, match="download: true") as err:
        prepare_dataset(tmp_path / "k.h5", "torchvision", name="KMNIST", root=str(root), download=False)
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message and str(root / "KMNIST" / "raw") in message


def test_unknown_torchvision_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="MNIST, FashionMNIST, KMNIST, CIFAR10, CIFAR100, SVHN, STL10"):
        prepare_dataset(tmp_path / "x.h5", "torchvision", name="Fashion", root=str(tmp_path))


# --------------------------------------------------------------------------- CIFAR, SVHN (colour)


def _py2_pickle(obj) -> bytes:
    """Pickle ``obj`` the way Python 2's cPickle (protocol 2) wrote the CIFAR batches.

    Python 2 ``str`` (here: ``bytes``) becomes BINSTRING, which Python 3 reads back
    as bytes under ``encoding="bytes"``; uint8 arrays refer to
    ``numpy.core.multiarray._reconstruct`` as numpy 1.x did. Python 3's pickler
    cannot produce this, so the opcodes are written by hand.
    """
    out = bytearray(b"\x80\x02")  # PROTO 2

    def string(data: bytes) -> None:
        if len(data) < 256:
            out.extend(b"U" + bytes([len(data)]) + data)  # SHORT_BINSTRING
        else:
            out.extend(b"T" + struct.pack("<i", len(data)) + data)  # BINSTRING

    def emit(value) -> None:
        if value is None:
            out.extend(b"N")
        elif isinstance(value, bool):
            out.extend(b"\x88" if value else b"\x89")
        elif isinstance(value, int):
            out.extend(b"J" + struct.pack("<i", value))
        elif isinstance(value, bytes):
            string(value)
        elif isinstance(value, tuple):
            out.extend(b"(")
            for item in value:
                emit(item)
            out.extend(b"t")
        elif isinstance(value, list):
            out.extend(b"](")
            for item in value:
                emit(item)
            out.extend(b"e")
        elif isinstance(value, dict):
            out.extend(b"}(")
            for key, item in value.items():
                emit(key)
                emit(item)
            out.extend(b"u")
        elif isinstance(value, np.ndarray):
            assert value.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\n")
            out.extend(b"cnumpy\nndarray\n")
            emit((0,))
            string(b"b")
            out.extend(b"\x87R")  # TUPLE3, REDUCE
            out.extend(b"(")  # state: (version, shape, dtype, fortran, raw bytes)
            emit(1)
            emit(tuple(value.shape))
            out.extend(b"cnumpy\ndtype\n")
            string(b"u1")
            emit(0)
            emit(1)
            out.extend(b"\x87R")
            emit((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")  # BUILD (dtype state)
            emit(False)
            string(np.ascontiguousarray(value).tobytes())
            out.extend(b"tb")  # close the state tuple, BUILD (array state)
        else:
            raise TypeError(type(value))

    emit(obj)
    out.extend(b".")
    return bytes(out)


def _tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _cifar10_members(rng: np.random.Generator, per_batch: int = 4, n_test: int = 3):
    """Members of a small CIFAR-10 archive (Python 2 pickles) and the arrays in it."""
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    members, rows, labels = {}, [], []
    batches = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    for batch in batches:
        n = n_test if batch == "test_batch" else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        batch_labels = [int(v) for v in rng.integers(0, 10, size=n)]
        members[f"cifar-10-batches-py/{batch}"] = _py2_pickle(
            {
                b"batch_label": batch.encode(),
                b"labels": batch_labels,
                b"data": data,
                b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            }
        )
        rows.append(data)
        labels.extend(batch_labels)
    members["cifar-10-batches-py/batches.meta"] = _py2_pickle(
        {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}
    )
    members["cifar-10-batches-py/readme.html"] = b"<html></html>"
    return members, np.concatenate(rows), np.asarray(labels), [n.decode() for n in names]


def _cifar100_members(rng: np.random.Generator, n_train: int = 7, n_test: int = 3):
    """Members of a small CIFAR-100 archive, pickled by Python 3 (str keys)."""
    fine = [f"fine_{k}" for k in range(100)]
    members, rows, labels = {}, [], []
    for part, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine_labels = [int(v) for v in rng.integers(0, 100, size=n)]
        members[f"cifar-100-python/{part}"] = pickle.dumps(
            {
                "data": data,
                "fine_labels": fine_labels,
                "coarse_labels": [v // 5 for v in fine_labels],
            },
            protocol=2,
        )
        rows.append(data)
        labels.extend(fine_labels)
    members["cifar-100-python/meta"] = pickle.dumps(
        {"fine_label_names": fine, "coarse_label_names": [f"coarse_{k}" for k in range(20)]}
    )
    return members, np.concatenate(rows), np.asarray(labels), fine


@pytest.fixture
def cifar10_archive(tmp_path):
    """A small CIFAR-10 archive under its official file name, plus what it holds."""
    members, rows, labels, names = _cifar10_members(np.random.default_rng(1))
    path = _tar_gz(tmp_path / "src" / "cifar-10-python.tar.gz", members)
    return path, rows, labels, names


def _check_cifar(data: Dataset, rows: np.ndarray, labels: np.ndarray, n_test: int) -> None:
    """Images are the CHW rows in NHWC order, train first, test last."""
    n = len(rows)
    assert data.images.shape == (n, 32, 32, 3) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images, rows.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
    # One pixel by hand: channel c, row h, column w sits at c*1024 + h*32 + w.
    assert data.images[2, 5, 7, 1] == rows[2, 1 * 1024 + 5 * 32 + 7]
    assert data.images[-1, 31, 0, 2] == rows[-1, 2 * 1024 + 31 * 32 + 0]
    np.testing.assert_array_equal(data.labels, labels)
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.is_test, np.arange(n) >= n - n_test)
    train = rows[: n - n_test].reshape(-1, 3, 1024) / 255.0
    np.testing.assert_allclose(data.norm_mean, train.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(data.norm_std, train.std(axis=(0, 2)), rtol=1e-12)




def _pin_cifar(monkeypatch, cls, archive: Path, members: dict[str, bytes]) -> None:
    """Replace torchvision's md5 table of ``cls`` by the md5s of a test archive."""
    md5 = {name.split("/")[-1]: hashlib.md5(payload).hexdigest() for name, payload in members.items()}
    monkeypatch.setattr(cls, "tgz_md5", _md5(archive))
    monkeypatch.setattr(cls, "train_list", [[name, md5[name]] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, md5[name]] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5[cls.meta["filename"]]})


def test_cifar10_archive_on_disk(tmp_path, cifar10_archive, monkeypatch, no_network):
    from torchvision.datasets import CIFAR10

    archive, rows, labels, names = cifar10_archive
    members, *_ = _cifar10_members(np.random.default_rng(1))
    _pin_cifar(monkeypatch, CIFAR10, archive, members)
    out = tmp_path / "out" / "cifar10.h5"
    prepare_dataset(out, "torchvision", name="CIFAR10", root=str(archive.parent), download=False)
    data = read_dataset(out)

    _check_cifar(data, rows, labels, n_test=3)
    assert data.class_names == names and data.num_classes == 10
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert data.attrs["checksum"] == f"sha256:{sha}"
    assert _entries(out.parent) == ["cifar10.h5"]
    assert _entries(archive.parent) == ["cifar-10-python.tar.gz"]  # nothing extracted into root


def test_cifar100_archive_on_disk(tmp_path, monkeypatch, no_network):
    from torchvision.datasets import CIFAR100

    members, rows, labels, fine = _cifar100_members(np.random.default_rng(2))
    archive = _tar_gz(tmp_path / "root" / "cifar-100-python.tar.gz", members)
    _pin_cifar(monkeypatch, CIFAR100, archive, members)
    out = tmp_path / "c100.h5"
    prepare_dataset(out, "torchvision", name="CIFAR100", root=str(archive.parent), download=False)
    data = read_dataset(out)
    _check_cifar(data, rows, labels, n_test=3)
    assert data.num_classes == 100 and data.class_names == fine


def test_cifar_with_torchvisions_md5_refuses_a_foreign_archive(tmp_path, cifar10_archive):
    archive, *_ = cifar10_archive
    with pytest.raises(ChecksumError, match="cifar-10-python.tar.gz") as err:
        prepare_dataset(tmp_path / "out" / "c.h5", "torchvision", name="CIFAR10", root=str(archive.parent), download=False)
    assert _md5(archive) in str(err.value)
    assert _entries(tmp_path / "out") == []


def test_svhn_mat_files(tmp_path, monkeypatch, no_network):
    """SVHN: colour images stored H×W×C×N with labels 1..10 (10 is the digit 0)."""
    import scipy.io
    from torchvision.datasets import SVHN

    rng = np.random.default_rng(3)
    root = tmp_path / "root"
    root.mkdir()
    parts, split_list = {}, {}
    for part, n in (("train", 5), ("test", 3)):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(1, 11, n)
        filename = SVHN.split_list[part][1]
        scipy.io.savemat(root / filename, {"X": images.transpose(1, 2, 3, 0), "y": labels[:, None]})
        split_list[part] = [SVHN.split_list[part][0], filename, _md5(root / filename)]
        parts[part] = (images, labels % 10)
    monkeypatch.setattr(SVHN, "split_list", {**SVHN.split_list, **split_list})
    out = tmp_path / "svhn.h5"
    prepare_dataset(out, "torchvision", name="SVHN", root=str(root), download=False)
    data = read_dataset(out)
    np.testing.assert_array_equal(data.images, np.concatenate([parts["train"][0], parts["test"][0]]))
    np.testing.assert_array_equal(data.labels, np.concatenate([parts["train"][1], parts["test"][1]]))
    assert data.is_test.sum() == 3 and data.class_names == [str(k) for k in range(10)]
