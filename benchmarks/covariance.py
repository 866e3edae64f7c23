"""Σx of a first conv layer: the library's streaming patch covariance against numpy.

Library: :func:`randlabels.analysis.covariance.patch_covariance` over the images in batches of 512
(the statistics stage's default batch size), on the benchmark's device, with the
padding of a 'same' convolution (k // 2), so every image gives 32 × 32 patches.
Baseline, the way one writes it with numpy: each chunk of 256 images to float64,
zero-padded, cut into k × k patches with ``sliding_window_view`` (im2col), then
XᵀX and the column sums accumulated, and cov = (XᵀX − n μμᵀ) / (n − 1) at the end;
always on the CPU. Both are float64 and are checked to agree.

Figures: patches per second, and the seconds for all patches of 50,000 CIFAR-sized
images (measured when the run holds 50,000 images, else extrapolated linearly from
the patches/s of the images it holds).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from benchmarks.common import Sizes, log, median, random_images, synchronize, timed
from randlabels.analysis.covariance import patch_covariance

LIBRARY_BATCH, NUMPY_CHUNK, FULL_IMAGES = 512, 256, 50_000


def numpy_patch_covariance(images: np.ndarray, k: int) -> np.ndarray:
    """Covariance of all k×k patches ('same' padding) of uint8 NHWC images, in numpy."""
    n_images, height, width, channels = images.shape
    d = channels * k * k
    pad = k // 2
    xtx, total, count = np.zeros((d, d)), np.zeros(d), 0
    for start in range(0, n_images, NUMPY_CHUNK):
        chunk = images[start : start + NUMPY_CHUNK].astype(np.float64)
        chunk = np.pad(chunk, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        windows = sliding_window_view(chunk, (k, k), axis=(1, 2))  # (B, H, W, C, k, k)
        x = windows.reshape(-1, d)  # one row per patch, in the weight's (C, kh, kw) order
        xtx += x.T @ x
        total += x.sum(axis=0)
        count += len(x)
    mean = total / count
    return (xtx - count * np.outer(mean, mean)) / (count - 1)


def library_patch_covariance(images: torch.Tensor, k: int) -> np.ndarray:
    """The library's streaming covariance over uint8 NHWC images held on the device."""
    batches = (images[i : i + LIBRARY_BATCH].permute(0, 3, 1, 2) for i in range(0, len(images), LIBRARY_BATCH))
    accumulator = patch_covariance(batches, k, padding=k // 2)
    synchronize(images.device)
    return accumulator.covariance()


def run(device: torch.device, sizes: Sizes) -> list[dict]:
    images, _ = random_images(sizes.covariance_images)
    on_device = torch.from_numpy(images).to(device)
    patches = len(images) * images.shape[1] * images.shape[2]
    rows = []
    for k in (3, 5):
        log(f"patch covariance: {k}x{k}, {len(images)} images, {sizes.covariance_trials} trials each")
        library_patch_covariance(on_device[:LIBRARY_BATCH], k)  # warm-up (CUDA context, kernels)
        library_times, numpy_times = [], []
        results = {}
        for _ in range(sizes.covariance_trials):  # alternating
            library_times.append(timed(lambda: results.__setitem__("library", library_patch_covariance(on_device, k)), device))
            numpy_times.append(timed(lambda: results.__setitem__("numpy", numpy_patch_covariance(images, k)), torch.device("cpu")))
        scale = np.abs(results["numpy"]).max()
        agreement = float(np.abs(results["library"] - results["numpy"]).max() / scale)
        library_rate = patches / median(library_times)
        numpy_rate = patches / median(numpy_times)
        full_patches = FULL_IMAGES * images.shape[1] * images.shape[2]
        row = {
            "kernel": k,
            "dim": 3 * k * k,
            "images": len(images),
            "patches": patches,
            "library_device": device.type,
            "library_patches_per_s": library_rate,
            "numpy_patches_per_s": numpy_rate,
            "ratio": library_rate / numpy_rate,
            "library_seconds": median(library_times),
            "numpy_seconds": median(numpy_times),
            "library_seconds_50k": full_patches / library_rate,
            "numpy_seconds_50k": full_patches / numpy_rate,
            "seconds_50k_extrapolated": len(images) != FULL_IMAGES,
            "max_relative_difference": agreement,
            "library_trial_seconds": library_times,
            "numpy_trial_seconds": numpy_times,
        }
        log(f"  library {library_rate / 1e6:.2f} M patches/s, numpy {numpy_rate / 1e6:.2f} M patches/s, "
            f"ratio {row['ratio']:.2f}, agree to {agreement:.1e}")
        rows.append(row)
    return rows
