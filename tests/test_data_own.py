"""Tests of the user's own images: a class-per-folder tree and arrays in .npz or HDF5."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image

from randlabels.data.h5file import DatasetFileError, read_dataset
from randlabels.data.sources import prepare_dataset


def _entries(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


# --------------------------------------------------------------------------- folder


@pytest.fixture
def image_tree(tmp_path):
    """Two classes of 6×5 images: 'cat' in grayscale PNG, 'dog' in RGB PNG."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    cats = [_save(root / "cat" / f"{k}.png", rng.integers(0, 256, (6, 5), dtype=np.uint8)) for k in range(3)]
    dogs = [_save(root / "dog" / f"{k}.png", rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)) for k in range(2)]
    return root, cats, dogs


def test_folder_reads_classes_in_sorted_order(tmp_path, image_tree):
    root, cats, dogs = image_tree
    (root / "cat" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    out = tmp_path / "out" / "pets.h5"
    prepare_dataset(out, "folder", root=str(root))
    data = read_dataset(out)

    assert data.class_names == ["cat", "dog"] and data.num_classes == 2
    np.testing.assert_array_equal(data.labels, [0, 0, 0, 1, 1])
    assert data.images.shape == (5, 6, 5, 3)  # one RGB class makes the whole set RGB
    np.testing.assert_array_equal(data.images[3], dogs[0])
    np.testing.assert_array_equal(data.images[0, ..., 0], cats[0])  # gray → R = G = B
    np.testing.assert_array_equal(data.images[0, ..., 2], cats[0])
    assert not data.is_test.any()
    assert data.attrs["checksum"].startswith("sha256:") and str(root) in data.attrs["source"]
    assert _entries(out.parent) == ["pets.h5"]


def test_folder_of_grayscale_images_keeps_one_channel(tmp_path, image_tree):
    root, cats, _ = image_tree
    out = tmp_path / "gray.h5"
    prepare_dataset(out, "folder", root=str(root), color="grayscale")
    data = read_dataset(out)
    assert data.images.shape == (5, 6, 5, 1)
    np.testing.assert_array_equal(data.images[1, ..., 0], cats[1])
    np.testing.assert_allclose(data.norm_mean, [data.images.mean() / 255.0])


def test_folder_checksum_follows_the_class_of_each_file(tmp_path, image_tree):
    root, *_ = image_tree
    prepare_dataset(tmp_path / "a.h5", "folder", root=str(root))
    (root / "dog" / "0.png").rename(root / "cat" / "9.png")
    prepare_dataset(tmp_path / "b.h5", "folder", root=str(root))
    assert read_dataset(tmp_path / "a.h5").attrs["checksum"] != read_dataset(tmp_path / "b.h5").attrs["checksum"]


def test_folder_refuses_mixed_sizes_unless_resized(tmp_path, image_tree):
    root, *_ = image_tree
    big = _save(root / "dog" / "big.png", np.full((12, 10, 3), 200, dtype=np.uint8))
    with pytest.raises(DatasetFileError, match="big.png.*resize") as err:
        prepare_dataset(tmp_path / "out" / "x.h5", "folder", root=str(root))
    assert "12x10" in str(err.value) and "6x5" in str(err.value)
    assert _entries(tmp_path / "out") == []

    prepare_dataset(tmp_path / "r.h5", "folder", root=str(root), resize=[4, 3])
    data = read_dataset(tmp_path / "r.h5")
    assert data.images.shape == (6, 4, 3, 3)
    assert big.shape == (12, 10, 3) and np.all(data.images[5] == 200)  # files sorted: big.png last; constant stays constant


@pytest.mark.parametrize(
    "make, word",
    [
        (lambda root: (root / "cat" / "notes.txt").write_text("hello"), "notes.txt: not an image file"),
        (lambda root: (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really"), "broken.png: unreadable image"),
        (lambda root: (root / "bird").mkdir(), "bird: class folder holds no image"),
    ],
    ids=["non-image", "unreadable", "empty-class"],
)
def test_folder_bad_files_are_named(tmp_path, image_tree, make, word):
    root, *_ = image_tree
    make(root)
    with pytest.raises(DatasetFileError, match=word):
        prepare_dataset(tmp_path / "out" / "x.h5", "folder", root=str(root))
    assert _entries(tmp_path / "out") == []


def test_folder_missing_or_without_classes(tmp_path):
    with pytest.raises(DatasetFileError, match="does not exist"):
        prepare_dataset(tmp_path / "x.h5", "folder", root=str(tmp_path / "nowhere"))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(DatasetFileError, match="no class sub-folders"):
        prepare_dataset(tmp_path / "x.h5", "folder", root=str(tmp_path / "flat"))


# --------------------------------------------------------------------------- arrays


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_arrays_npz_grayscale(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 4, 4), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 2])
    path = _npz(tmp_path / "mine.npz", images=images, labels=labels)
    prepare_dataset(tmp_path / "out.h5", "arrays", path=str(path))
    data = read_dataset(tmp_path / "out.h5")
    np.testing.assert_array_equal(data.images[..., 0], images)
    np.testing.assert_array_equal(data.labels, labels)
    assert data.num_classes == 3 and data.class_names == ["0", "1", "2"]
    assert data.attrs["name"] == "mine"


def test_arrays_hdf5_colour_with_names_and_test_part(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    path = tmp_path / "mine.h5"
    with h5py.File(path, "w") as h5:
        h5["images"] = images
        h5["labels"] = np.array([0, 1, 0, 1, 3, 3], dtype=np.int32)
        h5["is_test"] = np.array([False] * 4 + [True] * 2)
        h5.create_dataset("class_names", data=["a", "b", "c", "d"], dtype=h5py.string_dtype())
    prepare_dataset(tmp_path / "out.h5", "arrays", path=str(path))
    data = read_dataset(tmp_path / "out.h5")
    np.testing.assert_array_equal(data.images, images)
    assert data.class_names == ["a", "b", "c", "d"] and data.is_test.sum() == 2
    train = images[:4] / 255.0
    np.testing.assert_allclose(data.norm_mean, train.mean(axis=(0, 1, 2)))


def test_arrays_num_classes_from_config(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (4, 3, 3), dtype=np.uint8)
    path = _npz(tmp_path / "m.npz", images=images, labels=np.array([0, 1, 1, 0]))
    prepare_dataset(tmp_path / "out.h5", "arrays", path=str(path), num_classes=5)
    assert read_dataset(tmp_path / "out.h5").num_classes == 5


@pytest.mark.parametrize(
    "arrays, word",
    [
        ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.array([0, 1, 5])}, "key 'labels' holds 5, outside 0..2"),
        ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.array([0, 1, -1])}, "key 'labels' holds -1"),
        ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.array([0, 1])}, "key 'labels' has 2 entries but key 'images' 3"),
        ({"images": np.zeros((3, 4, 4), np.float32), "labels": np.array([0, 1, 1])}, "key 'images' is float32"),
        ({"images": np.zeros((3, 4, 4, 2), np.uint8), "labels": np.array([0, 1, 1])}, "key 'images' is uint8"),
        ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.array([0.0, 1.0, 1.0])}, "key 'labels' is float64"),
        ({"images": np.zeros((3, 4, 4), np.uint8)}, "lacks the array 'labels'"),
    ],
    ids=["label-too-large", "label-negative", "length-mismatch", "float-images", "two-channels", "float-labels", "no-labels"],
)
def test_arrays_bad_content_names_file_and_key(tmp_path, arrays, word):
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetFileError, match="bad.npz") as err:
        prepare_dataset(tmp_path / "out" / "x.h5", "arrays", path=str(path), num_classes=3)
    assert word in str(err.value)
    assert _entries(tmp_path / "out") == []


def test_arrays_of_constant_images_are_refused(tmp_path):
    path = _npz(tmp_path / "flat.npz", images=np.full((4, 3, 3), 7, np.uint8), labels=np.array([0, 1, 1, 0]))
    with pytest.raises(DatasetFileError, match="flat.npz: every pixel .* the value 7"):
        prepare_dataset(tmp_path / "out" / "x.h5", "arrays", path=str(path))
    assert _entries(tmp_path / "out") == []


def test_arrays_refuse_pickled_objects_and_unknown_files(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, images=np.array([object()], dtype=object), labels=np.array([0]))
    with pytest.raises(DatasetFileError, match="obj.npz: unreadable array file"):
        prepare_dataset(tmp_path / "x.h5", "arrays", path=str(path))
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DatasetFileError, match="expected .npz, .h5 or .hdf5"):
        prepare_dataset(tmp_path / "x.h5", "arrays", path=str(tmp_path / "data.csv"))
    with pytest.raises(DatasetFileError, match="does not exist"):
        prepare_dataset(tmp_path / "x.h5", "arrays", path=str(tmp_path / "none.npz"))
