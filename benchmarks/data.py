"""Dataset preparation: the library's sources against torchvision's usual loading.

- **Fashion-MNIST, 70,000 images** (Debian's dataset-fashion-mnist files, re-compressed
  originals): ``randlabels.data.sources.prepare_dataset(..., "torchvision",
  name="FashionMNIST")`` (checksums, staging, reading, normalization statistics and the
  HDF5 file included) against the way one usually gets the arrays: torchvision's
  ``FashionMNIST`` with ``ToTensor`` over a DataLoader (batch 1000, no workers), its
  batches concatenated, for the train and the test part (on files already in
  torchvision's layout, no checksum, no file written).
- **Image folder, 10,000 small images** (28×28 grayscale PNGs in 10 class folders,
  written once): ``prepare_dataset(..., "folder")`` against torchvision's
  ``ImageFolder`` with ``ToTensor`` over the same DataLoader.

Trials alternate, library then baseline; the figures are medians. The library's work
is a superset of the baseline's (it also verifies, hashes and writes), so a ratio near
1 means its extra guarantees cost little.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import Sizes, log, median, timed
from randlabels.data.sources import prepare_dataset

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _stacked(dataset) -> torch.Tensor:
    loader = torch.utils.data.DataLoader(dataset, batch_size=1000, num_workers=0)
    return torch.cat([images for images, _labels in loader])


def _fashion_baseline(root: Path) -> int:
    from torchvision import datasets, transforms

    parts = [datasets.FashionMNIST(str(root), train=train, transform=transforms.ToTensor()) for train in (True, False)]
    return sum(len(_stacked(part)) for part in parts)


def _folder_baseline(root: Path) -> int:
    from torchvision import datasets, transforms

    return len(_stacked(datasets.ImageFolder(str(root), transform=transforms.Compose([transforms.Grayscale(), transforms.ToTensor()]))))


def _write_folder(root: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(n):
        folder = root / f"class{k % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{k:05d}.png")


def _compare(name: str, images: int, library, baseline, trials: int) -> dict:
    cpu = torch.device("cpu")
    library_times, baseline_times = [], []
    for _ in range(trials):
        library_times.append(timed(library, cpu))
        baseline_times.append(timed(baseline, cpu))
    row = {
        "dataset": name,
        "images": images,
        "library_seconds": median(library_times),
        "baseline_seconds": median(baseline_times),
        "ratio": median(baseline_times) / median(library_times),
        "library_trial_seconds": library_times,
        "baseline_trial_seconds": baseline_times,
    }
    log(f"  {name}: library {row['library_seconds']:.1f} s, baseline {row['baseline_seconds']:.1f} s, "
        f"baseline / library {row['ratio']:.2f}")
    return row


def run(device: torch.device, sizes: Sizes) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="randlabels-bench-data-") as tmp:
        tmp = Path(tmp)
        if all((FASHION_ROOT / f"{name}.gz").is_file() for name in FASHION_FILES):
            log("data preparation: Fashion-MNIST, 70,000 images")
            raw = tmp / "torchvision" / "FashionMNIST" / "raw"  # the baseline's layout, uncompressed once
            raw.mkdir(parents=True)
            for name in FASHION_FILES:
                (raw / name).write_bytes(gzip.decompress((FASHION_ROOT / f"{name}.gz").read_bytes()))
            rows.append(_compare(
                "Fashion-MNIST (torchvision source)", 70_000,
                lambda: prepare_dataset(tmp / "fashion.h5", "torchvision", name="FashionMNIST", root=str(FASHION_ROOT), download=False),
                lambda: _fashion_baseline(tmp / "torchvision"),
                sizes.data_trials,
            ))
        else:
            log(f"data preparation: Fashion-MNIST skipped ({FASHION_ROOT} lacks the files: apt-get install dataset-fashion-mnist)")
        log(f"data preparation: image folder, {sizes.data_folder_images:,} PNGs")
        _write_folder(tmp / "folder", sizes.data_folder_images)
        rows.append(_compare(
            "image folder (folder source)", sizes.data_folder_images,
            lambda: prepare_dataset(tmp / "folder.h5", "folder", root=str(tmp / "folder")),
            lambda: _folder_baseline(tmp / "folder"),
            sizes.data_trials,
        ))
        shutil.rmtree(tmp / "folder", ignore_errors=True)
    return rows
