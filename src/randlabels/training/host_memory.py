"""Let a CPU job reuse the host memory it frees, instead of having the kernel zero it again.

A job on the CPU evaluates in batches whose activations are hundreds of MB (the first
layer of ``fmnist_cnn`` gives 411 MB for 2,048 Fashion-MNIST images). glibc's malloc
serves every block above its mmap threshold (at most 32 MiB by default) with a fresh
``mmap`` and unmaps it when it is freed, so each batch faults in and zero-fills the
same amount of memory again: about 40 % of such a job's time went to page faults
(benchmarks/host_memory.py, docs/PERFORMANCE.md). Raising the mmap and trim thresholds
keeps those blocks in the heap for the next batch. The price is memory: what a job
has freed stays with it until it ends (0.4–0.5 GB more at the peak of the Fashion-MNIST
jobs).

Only glibc has these settings; elsewhere (musl, macOS) :func:`keep_freed_memory` does
nothing and says so. The numbers a job computes do not change.
"""

from __future__ import annotations

import ctypes

# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Blocks up to this size come from the heap, and this much freed memory at its top is
# kept rather than given back: above the largest transient block of the CPU configs
# (VGG16's first layer on 2,048 CIFAR images: 537 MB).
KEEP_BYTES = 1 << 30


def keep_freed_memory(limit: int = KEEP_BYTES) -> bool:
    """Serve blocks of up to ``limit`` bytes from the heap and keep up to ``limit`` freed
    bytes in it, for the rest of this process; whether the C library took the settings
    (False where it has no ``mallopt`` or refuses them)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already uses
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, limit) == 1 and mallopt(M_TRIM_THRESHOLD, limit) == 1
