"""Independent, reproducible random streams derived from one experiment seed.

Each use of randomness (split, labels, initialization, batch order, sampling) gets its
own stream, so adding a stage or changing one setting never shifts another's numbers.
"""

from __future__ import annotations

import zlib

import numpy as np

def stream_seed(seed: int, *purpose: str | int) -> int:
    """A 63-bit seed for ``purpose`` (e.g. "init", 1.0) under experiment seed ``seed``."""
    words = [int(seed)] + [zlib.crc32(str(p).encode()) for p in purpose]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def stream_rng(seed: int, *purpose: str | int) -> np.random.Generator:
    """A numpy generator for ``purpose`` under experiment seed ``seed``."""
    return np.random.default_rng(stream_seed(seed, *purpose))
