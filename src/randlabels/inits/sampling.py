"""Gaussian approximation of a layer's filters: fit N(μw, Σw), draw new filters.

Pure numerics (numpy): it knows nothing about models or training.
"""

from __future__ import annotations

import numpy as np

from randlabels.analysis.stats import to_float64, weight_statistics


def fit_gaussian(vectors, zero_mean: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(μw, Σw) of weight vectors (units × d, pooled over seeds if stacked); μw = 0 on request."""
    mean, cov = weight_statistics(to_float64(vectors))
    if zero_mean:
        mean = np.zeros_like(mean)
    return mean, cov


def sample_gaussian(mean: np.ndarray, cov: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``count`` vectors from N(mean, cov) (count × d), float64.

    Uses the eigendecomposition, so a rank-deficient Σw (fewer filters than
    dimensions) still gives samples in its support; round-off negatives are zeroed.
    """
    mean = np.asarray(mean, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
        raise ValueError("cannot sample: non-finite entries in the fitted mean or covariance")
    eigval, eigvec = np.linalg.eigh((cov + cov.T) / 2)
    if eigval.min() < -1e-9 * max(np.abs(eigval).max(), 1e-300):
        raise ValueError(f"cannot sample: covariance is not positive semi-definite (eigenvalue {eigval.min():.3g})")
    root = eigvec * np.sqrt(np.clip(eigval, 0.0, None))
    noise = rng.standard_normal((count, len(mean)))
    return mean + noise @ root.T
