"""Tests of randlabels.inits.sampling: the fitted Gaussian and draws from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from randlabels.inits.sampling import fit_gaussian, sample_gaussian

MEAN = np.array([1.0, -2.0, 0.5])
COV = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]])


def test_sample_recovers_mean_and_covariance():
    n = 200_000
    x = sample_gaussian(MEAN, COV, n, np.random.default_rng(0))
    assert x.shape == (n, 3) and x.dtype == np.float64
    # standard error of the mean_i: sqrt(Σ_ii / n) <= sqrt(2 / 2e5) ≈ 3.2e-3; 5 sigma is 0.016
    np.testing.assert_allclose(x.mean(axis=0), MEAN, atol=0.016)
    # standard error of a sample covariance entry: sqrt((Σ_ii Σ_jj + Σ_ij²) / n)
    # <= sqrt((4 + 0.36) / 2e5) ≈ 4.7e-3; 5 sigma is 0.024
    np.testing.assert_allclose(np.cov(x, rowvar=False), COV, atol=0.024)


def test_sample_is_deterministic_per_seed():
    a = sample_gaussian(MEAN, COV, 50, np.random.default_rng(7))
    b = sample_gaussian(MEAN, COV, 50, np.random.default_rng(7))
    c = sample_gaussian(MEAN, COV, 50, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_zero_covariance_gives_the_mean():
    x = sample_gaussian(MEAN, np.zeros((3, 3)), 4, np.random.default_rng(0))
    np.testing.assert_array_equal(x, np.tile(MEAN, (4, 1)))


def test_rank_deficient_covariance_samples_in_column_space():
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.standard_normal((5, 2)))[0]  # orthonormal 5×2
    cov = basis @ np.diag([3.0, 0.5]) @ basis.T  # rank 2 in 5 dimensions
    mean = rng.standard_normal(5)
    x = sample_gaussian(mean, cov, 20_000, np.random.default_rng(2))
    centred = x - mean
    # The component outside span(basis) is round-off only. eigh returns the null-space
    # eigenvalues as ±O(d·eps·λmax) ≈ 3e-15; the positive ones survive the clipping and
    # contribute sqrt(3e-15) ≈ 6e-8 per unit of noise (|noise| < 6 here): bound 1e-6,
    # against an in-span spread of order 1.
    outside = centred - centred @ basis @ basis.T
    assert np.abs(outside).max() < 1e-6
    # and the variance inside it is the prescribed one (SE sqrt(2/n)·λ ≈ 0.03 for λ = 3)
    np.testing.assert_allclose(np.var(centred @ basis, axis=0), [3.0, 0.5], rtol=0.05)


def test_covariance_fitted_from_fewer_vectors_than_dimensions():
    vectors = np.random.default_rng(3).standard_normal((3, 6))  # 3 filters, 6 dims: rank 2
    mean, cov = fit_gaussian(vectors)
    x = sample_gaussian(mean, cov, 100, np.random.default_rng(0))
    assert np.all(np.isfinite(x))
    # samples are mean + combination of the centred filters
    span = (vectors - mean).T
    coef, *_ = np.linalg.lstsq(span, (x - mean).T, rcond=None)
    # same round-off bound as above (null-space eigenvalues ~ d·eps·λmax)
    np.testing.assert_allclose(span @ coef, (x - mean).T, atol=1e-6)
    assert np.abs(x - mean).max() > 0.1  # the samples do vary inside the span


@pytest.mark.parametrize("where", ["mean", "cov"])
def test_rejects_nan(where):
    mean, cov = MEAN.copy(), COV.copy()
    if where == "mean":
        mean[1] = np.nan
    else:
        cov[0, 2] = cov[2, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        sample_gaussian(mean, cov, 3, np.random.default_rng(0))


def test_fit_gaussian_matches_numpy_and_zero_mean():
    vectors = np.random.default_rng(4).standard_normal((40, 3)) + np.array([5.0, 0.0, -1.0])
    mean, cov = fit_gaussian(vectors)
    np.testing.assert_allclose(mean, vectors.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(vectors, rowvar=False), rtol=1e-12)
    mean0, cov0 = fit_gaussian(vectors, zero_mean=True)
    np.testing.assert_array_equal(mean0, np.zeros(3))
    np.testing.assert_array_equal(cov0, cov)  # the covariance stays mean-centred


def test_fit_gaussian_reads_conv_weights_as_units():
    weight = torch.randn(8, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    mean, cov = fit_gaussian(weight)
    flat = weight.reshape(8, -1).double().numpy()
    assert mean.shape == (18,) and cov.shape == (18, 18)
    np.testing.assert_allclose(mean, flat.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(cov, np.cov(flat, rowvar=False), rtol=1e-10, atol=1e-14)
