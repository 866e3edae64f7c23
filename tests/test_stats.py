"""Closed-form tests of randlabels.analysis.stats: every expected value is derived independently."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from randlabels.analysis import covariance
from randlabels.analysis.covariance import StreamingCovariance, patch_covariance
from randlabels.analysis.stats import (
    UndefinedStatistic,
    eigh_descending,
    misalignment,
    misalignment_terms,
    pool_filters,
    random_orthonormal_basis,
    to_float64,
    transfer_function,
    weight_statistics,
    weight_vectors,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _random_spd(d: int, seed: int) -> np.ndarray:
    """A generic symmetric positive definite matrix (well conditioned)."""
    a = _rng(seed).standard_normal((d, d))
    return a @ a.T + 0.5 * np.eye(d)


def _rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


# --------------------------------------------------------------------------- conversion


def test_to_float64_copies_torch_and_numpy():
    t = torch.arange(6, dtype=torch.float32, requires_grad=True).reshape(2, 3)
    a = to_float64(t)
    assert a.dtype == np.float64 and a.shape == (2, 3)
    np.testing.assert_array_equal(a, np.arange(6.0).reshape(2, 3))
    src = np.ones(3)
    out = to_float64(src)
    out[0] = 5.0
    assert src[0] == 1.0  # a copy, not a view
    t64 = torch.zeros(2, dtype=torch.float64)
    out64 = to_float64(t64)
    out64[0] = 1.0
    assert t64[0].item() == 0.0


# --------------------------------------------------------------------------- misalignment


@pytest.mark.parametrize("d", [2, 5, 27])
def test_aligned_covariances_have_zero_misalignment(d):
    v = random_orthonormal_basis(d, seed=d)
    a = _rng(1).uniform(0.1, 3.0, d)
    b = _rng(2).uniform(0.1, 3.0, d)
    cov_w = v @ np.diag(a) @ v.T
    cov_x = v @ np.diag(b) @ v.T
    assert misalignment(cov_x, cov_w) == pytest.approx(0.0, abs=1e-9)
    # The eigenbasis of Σw as explicit basis is also a zero-score basis.
    assert misalignment(cov_x, cov_w, basis=v) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("theta", [0.0, 0.3, np.pi / 4, 1.2])
def test_two_dimensional_closed_form(theta):
    a, b = 2.0, 0.5
    cov_w = np.diag([a, b])
    rot = _rotation(theta)
    c, s = np.cos(theta), np.sin(theta)
    # Direction 1 = (c, s), direction 2 = (-s, c).
    t1 = np.sqrt((a * c**2 + b * s**2) * (c**2 / a + s**2 / b)) - 1
    t2 = np.sqrt((a * s**2 + b * c**2) * (s**2 / a + c**2 / b)) - 1
    terms = misalignment_terms(np.eye(2), cov_w, basis=rot)
    np.testing.assert_allclose(terms, [t1, t2], rtol=1e-12, atol=1e-14)
    assert misalignment(np.eye(2), cov_w, basis=rot) == pytest.approx(t1 + t2, rel=1e-12, abs=1e-14)
    # Same value when the directions come from Σx's eigenvectors (larger eigenvalue on (c, s)).
    cov_x = rot @ np.diag([3.0, 1.0]) @ rot.T
    np.testing.assert_allclose(misalignment_terms(cov_x, cov_w), [t1, t2], rtol=1e-10, atol=1e-12)
    if 0 < theta < np.pi / 2:
        assert t1 + t2 > 0


def test_terms_follow_direction_order():
    # In 2-D both terms are equal (swap c and s); embed in 3-D with an aligned third axis
    # so the order of the terms (descending Σx eigenvalue) is visible.
    a, b, theta = 2.0, 0.5, 0.4
    c, s = np.cos(theta), np.sin(theta)
    t = np.sqrt((a * c**2 + b * s**2) * (c**2 / a + s**2 / b)) - 1
    rot = np.eye(3)
    rot[:2, :2] = _rotation(theta)
    cov_w = np.diag([a, b, 1.0])
    np.testing.assert_allclose(
        misalignment_terms(np.eye(3), cov_w, basis=rot), [t, t, 0.0], atol=1e-12
    )
    # Σx's largest eigenvalue along e3, then the two rotated directions.
    cov_x = rot @ np.diag([2.0, 1.0, 5.0]) @ rot.T
    np.testing.assert_allclose(misalignment_terms(cov_x, cov_w), [0.0, t, t], atol=1e-10)
    assert t > 0


def test_misalignment_positive_for_generic_and_scale_invariant():
    cov_x = _random_spd(10, seed=3)
    cov_w = _random_spd(10, seed=4)
    m = misalignment(cov_x, cov_w)
    assert m > 0.1
    assert misalignment(cov_x, 7.5 * cov_w) == pytest.approx(m, rel=1e-10)
    assert misalignment(cov_x, 1e-4 * cov_w) == pytest.approx(m, rel=1e-10)
    # Scaling Σx does not change its eigenvectors either.
    assert misalignment(3.0 * cov_x, cov_w) == pytest.approx(m, rel=1e-10)
    terms = misalignment_terms(cov_x, cov_w)
    assert terms.shape == (10,) and (terms >= 0).all()
    assert terms.sum() == pytest.approx(m, rel=1e-14)


def test_misalignment_invariant_under_joint_rotation():
    cov_x, cov_w = _random_spd(6, seed=5), _random_spd(6, seed=6)
    q = random_orthonormal_basis(6, seed=9)
    m = misalignment(cov_x, cov_w)
    assert misalignment(q @ cov_x @ q.T, q @ cov_w @ q.T) == pytest.approx(m, rel=1e-9)


def test_misalignment_matches_direct_formula_with_explicit_inverse():
    cov_x, cov_w = _random_spd(8, seed=7), _random_spd(8, seed=8)
    _, v = np.linalg.eigh(cov_x)
    inv = np.linalg.inv(cov_w)
    expected = sum(
        np.sqrt((v[:, i] @ cov_w @ v[:, i]) * (v[:, i] @ inv @ v[:, i])) - 1 for i in range(8)
    )
    assert misalignment(cov_x, cov_w) == pytest.approx(expected, rel=1e-10)
    basis = random_orthonormal_basis(8, seed=1)
    expected_b = sum(
        np.sqrt((basis[:, i] @ cov_w @ basis[:, i]) * (basis[:, i] @ inv @ basis[:, i])) - 1
        for i in range(8)
    )
    assert misalignment(np.eye(8), cov_w, basis=basis) == pytest.approx(expected_b, rel=1e-10)


def test_singular_cov_w_is_undefined():
    d = 12
    filters = _rng(0).standard_normal((d - 3, d))  # fewer filters than dimensions
    _, cov_w = weight_statistics(filters)
    with pytest.raises(UndefinedStatistic) as info:
        misalignment(np.eye(d), cov_w)
    assert "singular" in info.value.reason
    assert isinstance(info.value, ValueError)


def test_ill_conditioned_and_nonpositive_cov_w_are_undefined():
    with pytest.raises(UndefinedStatistic) as info:
        misalignment(np.eye(3), np.diag([1.0, 1.0, 1e-12]))
    assert "ill-conditioned" in info.value.reason
    # A looser rtol makes the same matrix acceptable: the tolerance is really used.
    assert misalignment(np.eye(3), np.diag([1.0, 1.0, 1e-12]), rtol=1e-13) == pytest.approx(0.0)
    with pytest.raises(UndefinedStatistic):
        misalignment(np.eye(2), np.diag([1.0, -1.0]))
    with pytest.raises(UndefinedStatistic):
        misalignment(np.eye(2), np.zeros((2, 2)))
    with pytest.raises(UndefinedStatistic):
        misalignment(np.eye(2), -np.eye(2))


def test_nan_in_cov_w_is_undefined():
    cov_w = np.eye(3)
    cov_w[1, 2] = np.nan
    with pytest.raises(UndefinedStatistic) as info:
        misalignment(np.eye(3), cov_w)
    assert "non-finite entries in Σw" in info.value.reason
    with pytest.raises(UndefinedStatistic):
        transfer_function(np.eye(3), cov_w)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError) as info:
        misalignment(np.eye(3), np.eye(4))
    assert "(3, 3)" in str(info.value) and "(4, 4)" in str(info.value)
    assert not isinstance(info.value, UndefinedStatistic)
    with pytest.raises(ValueError):
        misalignment(np.eye(3), np.eye(3), basis=np.eye(2))
    with pytest.raises(ValueError):
        misalignment(np.eye(3), np.ones((3, 2)))
    with pytest.raises(ValueError, match="orthonormal"):
        misalignment(np.eye(2), np.eye(2), basis=np.array([[1.0, 1.0], [0.0, 1.0]]))


# --------------------------------------------------------------------------- transfer function


def test_transfer_function_recovers_known_spectrum():
    d = 7
    v = random_orthonormal_basis(d, seed=11)
    sigma = np.array([0.3, 2.0, 1.1, 0.05, 1.7, 0.8, 1.4])
    g = np.array([1.0, 0.2, 0.7, 2.5, 0.4, 0.9, 0.1])
    cov_x = v @ np.diag(sigma**2) @ v.T
    cov_w = v @ np.diag(g**2) @ v.T
    s_out, f_out = transfer_function(cov_x, cov_w)
    order = np.argsort(-sigma)
    np.testing.assert_allclose(s_out, sigma[order], rtol=1e-10)
    np.testing.assert_allclose(f_out, g[order], rtol=1e-10)
    assert (np.diff(s_out) <= 0).all()


def test_transfer_function_clips_rounding_and_allows_singular_w():
    # Rank-1 Σx: its zero eigenvalues come out of eigh as ±rounding, must give σ = 0.
    u = np.array([[1.0], [2.0], [-1.0]]) / np.sqrt(6)
    cov_x = 4.0 * u @ u.T
    cov_w = np.diag([1.0, 0.0, 0.0])  # singular is fine: no inverse needed
    sigma, f = transfer_function(cov_x, cov_w)
    np.testing.assert_allclose(sigma, [2.0, 0.0, 0.0], atol=1e-7)
    assert np.isfinite(f).all() and (sigma >= 0).all()
    assert f[0] == pytest.approx(np.sqrt(1.0 / 6.0), rel=1e-10)
    with pytest.raises(ValueError):
        transfer_function(np.diag([1.0, -1.0]), np.eye(2))


def test_given_spectra_give_the_same_statistics_without_a_new_eigendecomposition(monkeypatch):
    """A caller's eigh_descending of Σx and Σw (measure_layer's, once per layer) stands
    in for the functions' own: the same σ, f and misalignments, and no eigh is run."""
    d = 9
    cov_x, cov_w = _random_spd(d, seed=5), _random_spd(d, seed=6)
    basis = random_orthonormal_basis(d, seed=7)
    expected = (transfer_function(cov_x, cov_w), misalignment_terms(cov_x, cov_w),
                misalignment_terms(cov_x, cov_w, basis=basis))
    eig_x, eig_w = eigh_descending(cov_x), eigh_descending(cov_w)

    def no_eigh(*args, **kwargs):
        raise AssertionError("an eigendecomposition was recomputed")

    monkeypatch.setattr(np.linalg, "eigh", no_eigh)
    monkeypatch.setattr(np.linalg, "eigvalsh", no_eigh)
    sigma, f = transfer_function(cov_x, cov_w, eig_x=eig_x, eig_w=eig_w)
    np.testing.assert_allclose(sigma, expected[0][0], rtol=1e-12)
    np.testing.assert_allclose(f, expected[0][1], rtol=1e-12)
    np.testing.assert_allclose(misalignment_terms(cov_x, cov_w, eig_x=eig_x, eig_w=eig_w), expected[1],
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(misalignment_terms(cov_x, cov_w, basis=basis, eig_w=eig_w), expected[2],
                               rtol=1e-10, atol=1e-12)
    assert misalignment(cov_x, cov_w, eig_x=eig_x, eig_w=eig_w) == pytest.approx(expected[1].sum(), rel=1e-10)


# --------------------------------------------------------------------------- eigen, bases


def test_eigh_descending_order_and_sign_convention():
    d = 6
    v = random_orthonormal_basis(d, seed=4)
    lam = np.array([0.5, 3.0, 1.0, 2.0, 0.1, 4.0])
    cov = v @ np.diag(lam) @ v.T
    values, vectors = eigh_descending(cov)
    np.testing.assert_allclose(values, np.sort(lam)[::-1], rtol=1e-12)
    np.testing.assert_allclose(cov @ vectors, vectors * values, atol=1e-12)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(d), atol=1e-12)
    pivot = np.argmax(np.abs(vectors), axis=0)
    assert (vectors[pivot, np.arange(d)] > 0).all()
    # Matches the generating eigenvectors, each with the convention's sign.
    expected = v[:, np.argsort(-lam)]
    expected = expected * np.sign(expected[np.argmax(np.abs(expected), axis=0), np.arange(d)])
    np.testing.assert_allclose(vectors, expected, atol=1e-10)


def test_eigh_descending_symmetrizes():
    cov = _random_spd(5, seed=2)
    skew = _rng(3).standard_normal((5, 5))
    skew = skew - skew.T
    values1, vectors1 = eigh_descending(cov)
    values2, vectors2 = eigh_descending(cov + skew)  # (A + Aᵀ)/2 removes the skew part exactly
    np.testing.assert_allclose(values1, values2, rtol=1e-12)
    np.testing.assert_allclose(vectors1, vectors2, atol=1e-12)


def test_random_orthonormal_basis_orthonormal_and_deterministic():
    q = random_orthonormal_basis(20, seed=123)
    np.testing.assert_allclose(q.T @ q, np.eye(20), atol=1e-12)
    np.testing.assert_allclose(q @ q.T, np.eye(20), atol=1e-12)
    np.testing.assert_array_equal(q, random_orthonormal_basis(20, seed=123))
    assert not np.allclose(q, random_orthonormal_basis(20, seed=124))


def test_random_orthonormal_basis_is_haar_on_average():
    # For Haar Q, E[Q_11] = 0 and E[Q_11²] = 1/d; QR without the sign fix has E[Q_11] < 0.
    d, n = 3, 4000
    first = np.array([random_orthonormal_basis(d, seed=s)[0, 0] for s in range(n)])
    assert abs(first.mean()) < 4 * np.sqrt(1 / d / n)
    assert first.var() == pytest.approx(1 / d, rel=0.1)


# --------------------------------------------------------------------------- weights


def test_weight_vectors_order_matches_conv_flattening():
    w = torch.randn(4, 3, 2, 5, generator=torch.Generator().manual_seed(0))
    vec = weight_vectors(w)
    assert vec.shape == (4, 30)
    # Entry (c, i, j) of filter o sits at column c·kh·kw + i·kw + j.
    for o, c, i, j in [(0, 0, 0, 0), (1, 2, 1, 4), (3, 1, 0, 3), (2, 2, 1, 0)]:
        assert vec[o, c * 10 + i * 5 + j] == pytest.approx(w[o, c, i, j].item())
    lin = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(weight_vectors(lin), lin)
    with pytest.raises(ValueError):
        weight_vectors(np.ones(3))


def _explicit_patches(x: np.ndarray, k, stride, padding, dilation) -> np.ndarray:
    """All patches by a plain loop, flattened in (C, kh, kw) order, ordered (b, row, col)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = k, stride, padding, dilation
    b, c, h, w = x.shape
    xp = np.zeros((b, c, h + 2 * ph, w + 2 * pw))
    xp[:, :, ph : ph + h, pw : pw + w] = x
    out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for n in range(b):
        for r in range(out_h):
            for s in range(out_w):
                patch = np.empty((c, kh, kw))
                for i in range(kh):
                    for j in range(kw):
                        patch[:, i, j] = xp[n, :, r * sh + i * dh, s * sw + j * dw]
                rows.append(patch.reshape(-1))
    return np.array(rows)


@pytest.mark.parametrize(
    "k, stride, padding, dilation",
    [
        ((3, 3), (1, 1), (1, 1), (1, 1)),
        ((3, 3), (2, 2), (1, 1), (1, 1)),
        ((2, 3), (2, 1), (0, 1), (2, 1)),
    ],
)
def test_conv_output_equals_patches_times_weight_vectors(k, stride, padding, dilation):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 7, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 3, *k, generator=gen, dtype=torch.float64)
    out = F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)
    patches = _explicit_patches(x.numpy(), k, stride, padding, dilation)
    via_patches = patches @ weight_vectors(w).T  # (B·L, C_out)
    expected = out.permute(0, 2, 3, 1).reshape(-1, 5).numpy()
    np.testing.assert_allclose(via_patches, expected, rtol=1e-12, atol=1e-12)
    unfolded = F.unfold(x, k, dilation=dilation, padding=padding, stride=stride)
    np.testing.assert_allclose(
        unfolded.transpose(1, 2).reshape(-1, patches.shape[1]).numpy(), patches, atol=0
    )


def test_weight_statistics_exact_on_small_sample():
    vectors = _rng(5).standard_normal((9, 4)) + np.array([1.0, -2.0, 0.0, 3.0])
    mu, cov = weight_statistics(vectors)
    np.testing.assert_allclose(mu, vectors.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(cov, np.cov(vectors, rowvar=False, ddof=1), rtol=1e-12)
    _, cov0 = weight_statistics(vectors, ddof=0)
    np.testing.assert_allclose(cov0, np.cov(vectors, rowvar=False, ddof=0), rtol=1e-12)
    # A conv weight is flattened per filter first.
    conv = vectors.reshape(9, 1, 2, 2)
    np.testing.assert_allclose(weight_statistics(torch.from_numpy(conv))[1], cov, rtol=1e-14)
    with pytest.raises(UndefinedStatistic):
        weight_statistics(vectors[:1])
    bad = vectors.copy()
    bad[0, 0] = np.inf
    with pytest.raises(UndefinedStatistic):
        weight_statistics(bad)


def test_weight_statistics_recovers_gaussian():
    d, n = 5, 200_000
    mean = np.array([0.5, -1.0, 0.0, 2.0, 0.1])
    cov = _random_spd(d, seed=12) / 5
    samples = _rng(13).multivariate_normal(mean, cov, size=n)
    mu, cov_hat = weight_statistics(samples)
    # Standard errors: sd(μ̂_i) = sqrt(Σ_ii / n); sd(Σ̂_ij) = sqrt((Σ_ii Σ_jj + Σ_ij²) / n).
    # Allow 5 standard errors per entry (a fixed seed; failure would mean a wrong formula).
    se_mu = np.sqrt(np.diag(cov) / n)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert (np.abs(mu - mean) < 5 * se_mu).all()
    assert (np.abs(cov_hat - cov) < 5 * se_cov).all()


# --------------------------------------------------------------------------- streaming


def test_streaming_covariance_matches_one_shot_with_large_offset():
    rng = _rng(21)
    d = 6
    mix = rng.standard_normal((d, d))
    data = rng.standard_normal((5000, d)) @ mix + 1e6  # large common offset
    acc = StreamingCovariance(d)
    sizes = rng.integers(1, 400, size=40)
    start = 0
    for size in sizes:
        acc.update(data[start : start + size])
        start += size
    acc.update(data[start:])
    assert acc.count == 5000
    expected = np.cov(data, rowvar=False, ddof=1)
    np.testing.assert_allclose(
        acc.covariance(), expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max()
    )
    np.testing.assert_allclose(acc.mean, data.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(
        acc.covariance(ddof=0), np.cov(data, rowvar=False, ddof=0), rtol=1e-10, atol=1e-9
    )


def test_streaming_single_samples_and_merge():
    rng = _rng(22)
    data = rng.standard_normal((300, 4)) * [1.0, 10.0, 0.1, 3.0] + 50.0
    left, right, whole = StreamingCovariance(4), StreamingCovariance(4), StreamingCovariance(4)
    for row in data[:10]:  # one sample per batch: scatter of each batch is zero
        left.update(row[None, :])
    left.update(data[10:120])
    right.update(torch.from_numpy(data[120:]))
    whole.update(data)
    left.merge(right)
    assert left.count == whole.count == 300
    np.testing.assert_allclose(left.covariance(), whole.covariance(), rtol=1e-12)
    np.testing.assert_allclose(left.mean, whole.mean, rtol=1e-14)
    # Merging into an empty accumulator copies; merging an empty one changes nothing.
    empty = StreamingCovariance(4).merge(whole)
    np.testing.assert_allclose(empty.covariance(), whole.covariance(), rtol=1e-15)
    whole.merge(StreamingCovariance(4))
    assert whole.count == 300


def test_streaming_covariance_validation():
    acc = StreamingCovariance(3)
    with pytest.raises(UndefinedStatistic):
        acc.covariance()
    with pytest.raises(UndefinedStatistic):
        _ = acc.mean
    with pytest.raises(ValueError, match="\\(n, 3\\)"):
        acc.update(np.ones((4, 2)))
    with pytest.raises(ValueError, match="non-finite values in samples"):
        acc.update(np.array([[1.0, np.nan, 0.0]]))
    with pytest.raises(ValueError, match="dimension mismatch"):
        acc.merge(StreamingCovariance(2))
    acc.update(np.ones((1, 3)))
    with pytest.raises(UndefinedStatistic):
        acc.covariance(ddof=1)  # count 1 <= ddof
    np.testing.assert_array_equal(acc.covariance(ddof=0), np.zeros((3, 3)))
    with pytest.raises(ValueError):
        StreamingCovariance(0)


def test_torch_and_numpy_inputs_agree():
    rng = _rng(31)
    data = rng.standard_normal((200, 5)).astype(np.float32)
    a, b = StreamingCovariance(5), StreamingCovariance(5)
    a.update(data)
    b.update(torch.from_numpy(data))
    np.testing.assert_array_equal(a.covariance(), b.covariance())
    cov_x, cov_w = _random_spd(5, seed=1), _random_spd(5, seed=2)
    tx, tw = torch.from_numpy(cov_x).float(), torch.from_numpy(cov_w).float()
    nx, nw = tx.double().numpy(), tw.double().numpy()
    assert misalignment(tx, tw) == misalignment(nx, nw)
    basis = random_orthonormal_basis(5, seed=0)
    assert misalignment(tx, tw, basis=torch.from_numpy(basis)) == misalignment(nx, nw, basis=basis)
    for got, want in zip(transfer_function(tx, tw), transfer_function(nx, nw)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(eigh_descending(tx), eigh_descending(nx)):
        np.testing.assert_array_equal(got, want)
    w = torch.randn(8, 2, 3, 3, requires_grad=True)
    for got, want in zip(weight_statistics(w), weight_statistics(w.detach().numpy())):
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- patches


@pytest.mark.parametrize(
    "k, stride, padding, dilation",
    [(3, 2, 1, 1), (3, 1, 0, 1), ((2, 3), (1, 2), (1, 0), 1), (3, 1, 2, 2)],
)
def test_patch_covariance_matches_explicit_loop(k, stride, padding, dilation):
    rng = _rng(41)
    batches = [rng.standard_normal((n, 3, 8, 7)) + 2.0 for n in (2, 3, 1)]
    acc = patch_covariance((torch.from_numpy(x) for x in batches), k, stride, padding, dilation)
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    patches = np.concatenate(
        [
            _explicit_patches(x, pair(k), pair(stride), pair(padding), pair(dilation))
            for x in batches
        ]
    )
    assert acc.dim == patches.shape[1] == 3 * pair(k)[0] * pair(k)[1]
    assert acc.count == patches.shape[0]
    np.testing.assert_allclose(acc.mean, patches.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        acc.covariance(), np.cov(patches, rowvar=False), rtol=1e-10, atol=1e-12
    )
    # numpy batches give the same accumulator as torch batches.
    acc_np = patch_covariance(iter(batches), k, stride, padding, dilation)
    np.testing.assert_allclose(acc_np.covariance(), acc.covariance(), rtol=1e-14)


def test_patch_covariance_padding_counts_zeros():
    # A constant image of ones, 1×1 channel, 3×3 kernel, padding 1 on a 2×2 image:
    # every one of the 4 patches has exactly 4 ones (the in-image pixels) and 5 zeros.
    x = np.ones((1, 1, 2, 2))
    acc = patch_covariance([x], 3, padding=1)
    assert acc.count == 4
    np.testing.assert_allclose(acc.mean.sum(), 4.0)
    np.testing.assert_allclose(
        acc.mean.reshape(3, 3), [[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]
    )


def test_patch_covariance_validation():
    with pytest.raises(ValueError):
        patch_covariance([], 3)
    with pytest.raises(ValueError):
        patch_covariance([np.ones((2, 3, 4))], 3)
    with pytest.raises(ValueError):
        patch_covariance([np.ones((1, 1, 4, 4))], 3, padding="same")
    with pytest.raises(ValueError, match="samples must have shape"):
        patch_covariance([np.ones((1, 1, 4, 4)), np.ones((1, 2, 4, 4))], 3)


# The exact path for integer images (uint8 pixels) and the float64 path for float ones.

# (kernel, stride, padding, dilation): 'same' 3×3 and 5×5, rectangular kernels, strides,
# asymmetric padding, dilation in either direction.
PATCH_GEOMETRIES = [
    (3, 1, 1, 1),
    (5, 1, 2, 1),
    ((2, 3), (1, 2), (1, 0), 1),
    (3, 2, 1, 1),
    (3, 1, 2, 2),
    ((3, 1), 1, (0, 2), (1, 2)),
    ((1, 4), (2, 3), 0, (1, 2)),
]


def _unfolded_rows(batches, k, stride, padding, dilation) -> np.ndarray:
    """Every patch as a float64 row, by torch's own unfold (Conv2d's im2col)."""
    rows = []
    for x in batches:
        cols = F.unfold(torch.as_tensor(np.asarray(x, dtype=np.float64)), k,
                        dilation=dilation, padding=padding, stride=stride)
        rows.append(cols.transpose(1, 2).reshape(-1, cols.shape[1]).numpy())
    return np.concatenate(rows)


def _exact_integer_moments(batches, k, stride, padding, dilation):
    """Mean and covariance of integer patches from exact int64 sums, each rounded once."""
    patches = _unfolded_rows(batches, k, stride, padding, dilation)
    p = np.rint(patches).astype(np.int64)
    assert (p == patches).all()
    n = p.shape[0]
    total = p.sum(axis=0)
    # n(n−1)·cov = n·Σxxᵀ − (Σx)(Σx)ᵀ, exactly in int64 for these sizes.
    scaled = n * (p.T @ p) - np.outer(total, total)
    return total / n, scaled / (n * (n - 1))


def _uint8_batches(seed: int, sizes=(2, 5, 1), shape=(3, 9, 11)) -> list[np.ndarray]:
    rng = _rng(seed)
    batches = [rng.integers(0, 256, (n, *shape), dtype=np.uint8) for n in sizes]
    batches[0][0] = 255  # the extremes of the range, where float32 exactness is tightest
    batches[-1][-1] = 0
    return batches


@pytest.mark.parametrize("k, stride, padding, dilation", PATCH_GEOMETRIES)
def test_patch_covariance_uint8_is_exact(k, stride, padding, dilation):
    batches = _uint8_batches(61)
    acc = patch_covariance((torch.from_numpy(b) for b in batches), k, stride, padding, dilation)
    mean, cov = _exact_integer_moments(batches, k, stride, padding, dilation)
    assert acc.count == sum(
        _unfolded_rows([b[:1]], k, stride, padding, dilation).shape[0] * len(b) for b in batches
    )
    np.testing.assert_allclose(acc.mean, mean, rtol=1e-15, atol=0)
    # Exact sums; the batch centring and the merge of three batches round a few times.
    np.testing.assert_allclose(acc.covariance(), cov, rtol=1e-13, atol=1e-13 * np.abs(cov).max())
    # The float64 computation of the same pixels as floats agrees.
    as_float = patch_covariance([b.astype(np.float64) for b in batches], k, stride, padding, dilation)
    np.testing.assert_allclose(as_float.covariance(), cov, rtol=1e-11, atol=1e-12 * np.abs(cov).max())


def test_uint8_images_take_the_float32_path_on_the_cpu():
    # The fast path is used where it is exact: uint8 on the CPU with IEEE float32 matmuls.
    images = torch.zeros((4, 3, 8, 8), dtype=torch.uint8)
    dtype, centres, per_product = covariance._patch_plan(images, True, 32)
    assert dtype == torch.float32 and per_product == 32  # 32 rows of 32 patches: K = 1024
    assert centres.tolist() == [127.0] * 3  # |pixel − 127| <= 128, padding zeros included
    assert covariance._patch_plan(images.float(), True, 32)[0] == torch.float64
    wide = torch.zeros((1, 1, 4, 4), dtype=torch.int32)
    wide[0, 0, 0, 0] = 10**6
    assert covariance._patch_plan(wide, False, 4)[0] == torch.float64  # (5e5)² > 2**24
    constant = torch.full((1, 1, 4, 4), 10**6, dtype=torch.int32)
    assert covariance._patch_plan(constant, False, 4)[0] == torch.float32  # centred: all zeros
    # A small range far from zero: the pixels themselves are not exact in float32.
    assert covariance._patch_plan(constant + 2**24, False, 4)[0] == torch.float64


def test_patch_covariance_exact_for_integers_far_from_zero():
    rng = _rng(71)
    for offset in (2**24 - 100, 2**26 + 1, -(2**30)):
        # One batch: merging batches means ~1e9 apart is not exact (Chan's update).
        batches = [(rng.integers(0, 200, (8, 2, 7, 7)) + offset).astype(np.int64)]
        acc = patch_covariance(batches, 3)  # no padding: only the pixels' range matters
        # (The exact reference, in int64, on the pixels less the offset: same covariance.)
        mean, cov = _exact_integer_moments([b - offset for b in batches], 3, 1, 0, 1)
        np.testing.assert_allclose(acc.mean, mean + offset, rtol=1e-15)
        np.testing.assert_allclose(acc.covariance(), cov, rtol=1e-12, atol=1e-13 * np.abs(cov).max())
    bf16 = torch.from_numpy(_uint8_batches(72)[0]).to(torch.bfloat16)  # integers, exact in bf16
    np.testing.assert_allclose(
        patch_covariance([bf16], 3, padding=1).covariance(),
        patch_covariance([bf16.to(torch.uint8)], 3, padding=1).covariance(),
        rtol=1e-12,
        atol=1e-9,
    )


@pytest.mark.parametrize("k, stride, padding, dilation", PATCH_GEOMETRIES)
def test_patch_covariance_float_inputs_match_float64(k, stride, padding, dilation):
    rng = _rng(62)
    pixels = _uint8_batches(63)
    mean = np.array([0.4914, 0.4822, 0.4465])[:, None, None]
    std = np.array([0.2470, 0.2435, 0.2616])[:, None, None]
    normalized = [((b / 255.0 - mean) / std).astype(np.float32) for b in pixels]  # as trained on
    shifted = [rng.standard_normal((n, 3, 9, 11)) * [[[2.0]], [[0.5]], [[1.0]]] + 40.0 for n in (3, 2)]
    for batches in (normalized, shifted):
        acc = patch_covariance((torch.from_numpy(b) for b in batches), k, stride, padding, dilation)
        patches = _unfolded_rows(batches, k, stride, padding, dilation)
        assert acc.count == patches.shape[0]
        np.testing.assert_allclose(acc.mean, patches.mean(axis=0), rtol=1e-12, atol=1e-12)
        cov = np.cov(patches, rowvar=False)
        np.testing.assert_allclose(acc.covariance(), cov, rtol=1e-10, atol=1e-12 * np.abs(cov).max())


@pytest.mark.parametrize("k, stride, padding, dilation", [PATCH_GEOMETRIES[0], PATCH_GEOMETRIES[4]])
def test_patch_covariance_streaming_equals_one_batch(k, stride, padding, dilation):
    pixels = np.concatenate(_uint8_batches(64, sizes=(3, 1, 7, 5)))
    floats = pixels / 255.0 - 0.5
    for data, rtol in ((pixels, 1e-14), (floats, 1e-12)):
        whole = patch_covariance([data], k, stride, padding, dilation)
        parts = patch_covariance(np.split(data, [3, 4, 11]), k, stride, padding, dilation)
        assert parts.count == whole.count
        np.testing.assert_allclose(parts.mean, whole.mean, rtol=rtol, atol=1e-15)
        scale = np.abs(whole.covariance()).max()
        np.testing.assert_allclose(parts.covariance(), whole.covariance(), rtol=rtol, atol=rtol * scale)
    # Integer and float batches mix in one stream.
    mixed = patch_covariance([pixels[:8], pixels[8:].astype(np.float32)], k, stride, padding, dilation)
    whole = patch_covariance([pixels], k, stride, padding, dilation)
    np.testing.assert_allclose(mixed.covariance(), whole.covariance(), rtol=1e-12)


def test_patch_covariance_input_layouts_and_dtypes_agree():
    nchw = np.concatenate(_uint8_batches(65, shape=(3, 10, 10)))
    nhwc = np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))
    ref = patch_covariance([torch.from_numpy(nchw)], 3, padding=1).covariance()
    same = [
        nchw,  # numpy
        torch.from_numpy(nhwc).permute(0, 3, 1, 2),  # a channels-last view, as the benchmark's
        nhwc.transpose(0, 3, 1, 2),  # a non-contiguous numpy view
        torch.from_numpy(nchw.astype(np.int16)),  # same range: same centre, same sums
        nchw.astype(np.int64),
    ]
    for batch in same:
        np.testing.assert_array_equal(patch_covariance([batch], 3, padding=1).covariance(), ref)
    bits = _rng(66).integers(0, 2, (4, 2, 6, 6)).astype(bool)
    np.testing.assert_allclose(
        patch_covariance([bits], 3, padding=1).covariance(),
        _exact_integer_moments([bits.astype(np.int64)], 3, 1, 1, 1)[1],
        rtol=1e-14,
        atol=1e-15,
    )


def test_patch_covariance_wide_integers_fall_back_to_float64():
    rng = _rng(67)
    batches = [rng.integers(-(10**6), 10**6, (3, 2, 7, 7), dtype=np.int32) for _ in range(2)]
    acc = patch_covariance(batches, 3, padding=1)
    mean, cov = _exact_integer_moments(batches, 3, 1, 1, 1)
    np.testing.assert_allclose(acc.mean, mean, rtol=1e-14, atol=1e-9)
    np.testing.assert_allclose(acc.covariance(), cov, rtol=1e-12, atol=1e-12 * np.abs(cov).max())


@pytest.mark.parametrize(
    "k, stride, padding, dilation, budget",
    [(*PATCH_GEOMETRIES[1], 2**15), (*PATCH_GEOMETRIES[5], 2**10)],
)
def test_patch_covariance_slices_and_fallbacks_agree(monkeypatch, k, stride, padding, dilation, budget):
    pixels = _uint8_batches(68, sizes=(13, 6))
    floats = [b / 255.0 for b in pixels]
    ref_int = patch_covariance(pixels, k, stride, padding, dilation).covariance()
    ref_float = patch_covariance(floats, k, stride, padding, dilation).covariance()
    # Small slices: several per batch, the last one partly empty (its zero images add nothing).
    slice_sizes = []
    buffer = covariance._buffer

    def spy(workspace, name, shape, dtype, device):
        if name == "padded":
            slice_sizes.append(shape[0])
        return buffer(workspace, name, shape, dtype, device)

    monkeypatch.setattr(covariance, "_buffer", spy)
    monkeypatch.setattr(covariance, "_SLICE_ELEMENTS", budget)
    cov = patch_covariance(pixels, k, stride, padding, dilation).covariance()
    np.testing.assert_array_equal(cov, ref_int)
    assert slice_sizes[0] < 13  # the batch of 13 images was cut into slices
    np.testing.assert_allclose(
        patch_covariance(floats, k, stride, padding, dilation).covariance(), ref_float, rtol=1e-12
    )
    # No IEEE float32 matmuls: the integer path runs in float64, just as exact.
    monkeypatch.setattr(covariance, "_float32_matmul_is_ieee", lambda device: False)
    cov = patch_covariance(pixels, k, stride, padding, dilation).covariance()
    np.testing.assert_array_equal(cov, ref_int)
    # Budget below one group's products: whole patches are unfolded instead (float64).
    monkeypatch.setattr(covariance, "_SLICE_ELEMENTS", 64)
    np.testing.assert_allclose(
        patch_covariance(pixels, k, stride, padding, dilation).covariance(), ref_int, rtol=1e-12
    )
    np.testing.assert_allclose(
        patch_covariance(floats, k, stride, padding, dilation).covariance(), ref_float, rtol=1e-12
    )


def test_patch_covariance_reuses_buffers_across_batches_exactly(monkeypatch):
    # Equal batches share the buffers; the zero padding kept in the buffer's borders must
    # follow partial slices (zeroed images) and changes of the centre between batches.
    monkeypatch.setattr(covariance, "_SLICE_ELEMENTS", 2**14)
    rng = _rng(70)
    pixels = [rng.integers(0, 256, (13, 3, 9, 11), dtype=np.uint8) for _ in range(3)]
    wide = [  # int16 batches: each its own range, hence its own centre
        rng.integers(lo, hi, (13, 3, 9, 11)).astype(np.int16)
        for lo, hi in ((0, 256), (-300, 50), (1000, 1100))
    ]
    for batches in (pixels, wide):
        for k, padding in ((3, 1), (5, (2, 1))):
            acc = patch_covariance(batches, k, padding=padding)
            mean, cov = _exact_integer_moments(batches, k, 1, padding, 1)
            np.testing.assert_allclose(acc.mean, mean, rtol=1e-14)
            np.testing.assert_allclose(acc.covariance(), cov, rtol=1e-12, atol=1e-13 * np.abs(cov).max())


def test_float32_fast_path_respects_matmul_precision(monkeypatch):
    assert covariance._float32_matmul_is_ieee(torch.device("cpu"))
    assert not covariance._float32_matmul_is_ieee(torch.device("cuda"))  # TF32 may be on there
    pixels = _uint8_batches(69)
    ref = patch_covariance(pixels, 3, padding=1).covariance()
    matmul = torch.backends.mkldnn.matmul  # settings behind __getattr__: no monkeypatch
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "bf16"  # oneDNN may round float32 matmul inputs to bf16
        assert not covariance._float32_matmul_is_ieee(torch.device("cpu"))
        np.testing.assert_array_equal(patch_covariance(pixels, 3, padding=1).covariance(), ref)
    finally:
        matmul.fp32_precision = before
    assert covariance._float32_matmul_is_ieee(torch.device("cpu"))


def test_patch_covariance_rejects_small_images_and_non_finite_values():
    with pytest.raises(ValueError, match="smaller than the kernel"):
        patch_covariance([np.ones((1, 1, 2, 2), dtype=np.uint8)], 3)
    with pytest.raises(ValueError, match="non-finite values in samples"):
        patch_covariance([np.full((1, 1, 4, 4), np.nan)], 3, padding=1)
    with pytest.raises(TypeError):
        patch_covariance([np.ones((1, 1, 4, 4), dtype=complex)], 3)


@pytest.mark.gpu  # deselected by default; `make test-gpu` runs it on a CUDA machine
def test_cuda_accumulation_matches_cpu():
    rng = _rng(51)
    batches = [rng.standard_normal((4, 3, 16, 16)).astype(np.float32) for _ in range(3)]
    cpu = patch_covariance((torch.from_numpy(b) for b in batches), 3, padding=1)
    gpu = patch_covariance((torch.from_numpy(b).cuda() for b in batches), 3, padding=1)
    assert gpu._mean is not None and gpu._mean.is_cuda
    np.testing.assert_allclose(gpu.covariance(), cpu.covariance(), rtol=1e-10, atol=1e-12)
    assert misalignment(torch.from_numpy(cpu.covariance()).cuda(), np.eye(27)) >= 0


# --------------------------------------------------------------------------- pooled filters


def test_pool_filters_stacks_the_weight_vectors_of_each_network():
    a = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    b = _rng(1).standard_normal((5, 2, 3, 3))
    pooled = pool_filters(w for w in (a, b))  # any iterable, torch or numpy
    assert pooled.shape == (9, 18) and pooled.dtype == np.float64
    np.testing.assert_array_equal(pooled, np.concatenate([weight_vectors(a), weight_vectors(b)]))
    with pytest.raises(ValueError, match=r"different dimensions d: shapes \(4, 2, 3, 3\), \(3, 1, 3, 3\)"):
        pool_filters([a, np.ones((3, 1, 3, 3))])
    with pytest.raises(ValueError, match="at least one"):
        pool_filters([])


def test_pooling_two_singular_networks_gives_the_closed_form_misalignment():
    """Network A's filters ±s·e1 and B's ±t·e2: each Σw has rank 1 in d = 2; pooled, the
    4 filters have mean 0 and Σw = diag(2s², 2t²)/3. Against Σx with eigenvectors
    (e1 ± e2)/√2 each term is (a+b)/(2√(ab)) − 1 for Σw = diag(a, b), so
    M = (a+b)/√(ab) − 2 = (s − t)²/(s t); against a diagonal Σx, M = 0."""
    s, t = 0.5, 2.0
    net_a = np.array([[s, 0.0], [-s, 0.0]])
    net_b = np.array([[0.0, t], [0.0, -t]])
    cov_x = _rotation(np.pi / 4) @ np.diag([3.0, 1.0]) @ _rotation(np.pi / 4).T
    for net in (net_a, net_b):
        with pytest.raises(UndefinedStatistic, match="singular") as info:
            misalignment(cov_x, weight_statistics(net)[1])
        assert "pool_filters" in info.value.reason and "at least 3 weight vectors" in info.value.reason
    mean, cov_w = weight_statistics(pool_filters([net_a, net_b]))
    np.testing.assert_allclose(mean, 0.0, atol=1e-15)
    np.testing.assert_allclose(cov_w, np.diag([2 * s**2, 2 * t**2]) / 3, rtol=1e-15)
    assert misalignment(cov_x, cov_w) == pytest.approx((s - t) ** 2 / (s * t), rel=1e-12)
    assert misalignment(np.diag([3.0, 1.0]), cov_w) == pytest.approx(0.0, abs=1e-15)


def test_pooled_misalignment_is_the_definition_on_all_filters():
    """Pooling is no new statistic: one network's filters pooled alone give the same score,
    and pooled networks give M of the stacked filters' Σw, checked with an explicit inverse."""
    d = 12
    cov_x = _random_spd(d, 3)
    full = _rng(4).standard_normal((40, d))
    assert misalignment(cov_x, weight_statistics(pool_filters([full]))[1]) == misalignment(
        cov_x, weight_statistics(full)[1]
    )
    networks = [_rng(10 + r).standard_normal((9, d)) + r for r in range(2)]  # 9 < d each, own means
    with pytest.raises(UndefinedStatistic, match=f"at least {d + 1} weight vectors"):
        misalignment(cov_x, weight_statistics(networks[0])[1])
    stacked = np.vstack(networks)
    centred = stacked - stacked.mean(axis=0)
    cov_w = centred.T @ centred / (len(stacked) - 1)  # centred on the pooled mean
    _, v = np.linalg.eigh(cov_x)
    inv = np.linalg.inv(cov_w)
    expected = sum(np.sqrt((v[:, i] @ cov_w @ v[:, i]) * (v[:, i] @ inv @ v[:, i])) - 1 for i in range(d))
    assert misalignment(cov_x, weight_statistics(pool_filters(networks))[1]) == pytest.approx(
        expected, rel=1e-9
    )
