"""Second-order statistics of data and weights, and the alignment scores built on them.

Pure numerics, in numpy: this module imports nothing else from ``randlabels``, nor torch
(the aggregation jobs that use it start without it). Every function that takes arrays
accepts numpy arrays or torch tensors (any device, any real dtype) and computes in
float64, so results do not depend on where or in which precision a model was trained.
The covariances measured on the device (of samples, of a convolution's patches) are
:mod:`randlabels.analysis.covariance`'s. The formulas are written out in ``docs/METHODS.md``.

Undefined quantities (a singular Σw, non-finite input) raise :class:`UndefinedStatistic`
with a human-readable ``reason`` instead of returning a faked number.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable

import numpy as np

__all__ = [
    "UndefinedStatistic",
    "to_float64",
    "weight_vectors",
    "weight_statistics",
    "pool_filters",
    "eigh_descending",
    "random_orthonormal_basis",
    "misalignment",
    "misalignment_terms",
    "transfer_function",
]

ArrayLike = Any  # numpy array or torch tensor (kept loose: both are accepted everywhere)
Spectrum = tuple[np.ndarray, np.ndarray]  # (values, vectors) as eigh_descending returns them

# Relative tolerance below which a negative eigenvalue / quadratic form of a covariance is
# treated as rounding error (clipped to 0) rather than as a sign the input is not PSD.
_PSD_RTOL = 1e-9


class UndefinedStatistic(ValueError):
    """A statistic is mathematically undefined for its input (e.g. Σw is singular).

    Subclasses ValueError so generic input-validation handlers still catch it, while
    callers that report "undefined" (rather than crash) can catch exactly this.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- conversion


def to_float64(a: ArrayLike) -> np.ndarray:
    """A float64 numpy copy of ``a`` (torch tensors are detached and moved to the CPU).

    Always copies, so callers may modify the result without touching the source.
    """
    if _is_tensor(a):
        if a.is_complex():
            raise TypeError("complex tensors are not supported")
        return a.detach().cpu().double().numpy().copy()
    arr = np.asarray(a)
    if np.iscomplexobj(arr):
        raise TypeError("complex arrays are not supported")
    return np.array(arr, dtype=np.float64, copy=True)


def _is_tensor(a: ArrayLike) -> bool:
    """Whether ``a`` is a torch tensor; without importing torch (if torch was never
    imported, nothing can be a tensor)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(a, torch.Tensor)


def _square_matrix(name: str, a: ArrayLike) -> np.ndarray:
    """``a`` as a float64 (d, d) matrix, or a ValueError naming it."""
    m = to_float64(a)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {m.shape}")
    if m.shape[0] == 0:
        raise ValueError(f"{name} must not be empty")
    return m


def _symmetrize(m: np.ndarray) -> np.ndarray:
    """(A + Aᵀ)/2: removes rounding asymmetry before an eigendecomposition."""
    return 0.5 * (m + m.T)


# --------------------------------------------------------------------------- weights


def weight_vectors(weight: ArrayLike) -> np.ndarray:
    """One row per unit: (C_out, d) with d = C_in·kh·kw for a conv, ``in`` for a linear.

    Flattened with a row-major ``reshape(C_out, -1)``, i.e. in the tensor's own
    (C_in, kh, kw) order, which is the order of the patches of
    :func:`~randlabels.analysis.covariance.patch_covariance`.
    """
    w = to_float64(weight)
    if w.ndim < 2:
        raise ValueError(f"a weight tensor needs at least 2 dimensions, got shape {w.shape}")
    return w.reshape(w.shape[0], -1)


def weight_statistics(weight: ArrayLike, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(μw (d,), Σw (d, d)): mean and mean-centred covariance of the units' weight vectors.

    ``weight`` is a layer's weight tensor (conv or linear), or an already stacked
    (units, d) matrix, e.g. filters pooled over seeds — a 2-D input is always read as
    (units, d). Σw divides the centred scatter by (units − ddof).
    """
    vectors = weight_vectors(weight)
    n, _ = vectors.shape
    if not np.isfinite(vectors).all():
        raise UndefinedStatistic("non-finite entries in the weights")
    if n <= ddof:
        raise UndefinedStatistic(
            f"covariance of {n} weight vector(s) is undefined with ddof={ddof}"
        )
    mu = vectors.mean(axis=0)
    centred = vectors - mu
    cov = centred.T @ centred / (n - ddof)
    return mu, _symmetrize(cov)


def pool_filters(weights: Iterable[ArrayLike]) -> np.ndarray:
    """The weight vectors of the same layer of several networks, stacked: (Σ units, d).

    One layer with n ≤ d units has a singular Σw (rank ≤ n − 1) and no misalignment;
    pooling its filters over networks (seeds), as the paper did, gives the same
    definition an invertible Σw. Pass the result to :func:`weight_statistics`.
    """
    blocks, shapes = [], []
    for w in weights:
        shapes.append(tuple(w.shape) if _is_tensor(w) else np.shape(w))
        blocks.append(weight_vectors(w))
    if not blocks:
        raise ValueError("pool_filters needs at least one weight tensor")
    if len({b.shape[1] for b in blocks}) > 1:
        raise ValueError(
            "cannot pool weights of different dimensions d: shapes "
            + ", ".join(str(shape) for shape in shapes)
        )
    return np.concatenate(blocks, axis=0)


# --------------------------------------------------------------------------- spectra


def eigh_descending(cov: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and unit eigenvectors as columns of a symmetric matrix.

    The input is symmetrized first. Signs are fixed so each eigenvector's entry of
    largest absolute value is positive (first such entry on ties), making eigenvectors
    comparable across runs and plots.
    """
    m = _square_matrix("cov", cov)
    if not np.isfinite(m).all():
        raise ValueError("non-finite entries in the matrix")
    values, vectors = np.linalg.eigh(_symmetrize(m))
    values = values[::-1].copy()
    vectors = vectors[:, ::-1].copy()
    pivot = np.argmax(np.abs(vectors), axis=0)
    signs = np.where(vectors[pivot, np.arange(vectors.shape[1])] < 0, -1.0, 1.0)
    return values, vectors * signs


def random_orthonormal_basis(dim: int, seed: int) -> np.ndarray:
    """A Haar-distributed orthogonal (dim, dim) matrix whose columns are the basis.

    QR of a standard Gaussian matrix, with each column of Q multiplied by the sign of
    the matching diagonal entry of R (without it Q is not Haar-distributed).
    Deterministic for a given seed.
    """
    if int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    rng = np.random.default_rng(seed)
    gaussian = rng.standard_normal((int(dim), int(dim)))
    q, r = np.linalg.qr(gaussian)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0  # probability zero; keeps the basis orthonormal regardless
    return q * signs


def _check_pair(cov_x: ArrayLike, cov_w: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both covariances as float64 square matrices of the same shape."""
    x = _square_matrix("Σx", cov_x)
    w = _square_matrix("Σw", cov_w)
    if x.shape != w.shape:
        raise ValueError(f"shape mismatch: Σx has shape {x.shape}, Σw has shape {w.shape}")
    return x, w


def _directions(x: np.ndarray, basis: ArrayLike | None, eig_x: Spectrum | None) -> np.ndarray:
    """The unit directions v_i as columns: eigenvectors of Σx, or the given basis."""
    d = x.shape[0]
    if basis is None:
        if not np.isfinite(x).all():
            raise UndefinedStatistic("non-finite entries in Σx")
        return (eig_x if eig_x is not None else eigh_descending(x))[1]
    b = to_float64(basis)
    if b.shape != (d, d):
        raise ValueError(f"basis must have shape {(d, d)} to match Σx, got {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError("non-finite entries in basis")
    if not np.allclose(b.T @ b, np.eye(d), rtol=0.0, atol=1e-8):
        raise ValueError("basis columns must be orthonormal")
    return b


def misalignment_terms(
    cov_x: ArrayLike,
    cov_w: ArrayLike,
    basis: ArrayLike | None = None,
    rtol: float = 1e-10,
    *,
    eig_x: Spectrum | None = None,
    eig_w: Spectrum | None = None,
) -> np.ndarray:
    """Per-direction terms sqrt((vᵀΣw v)(vᵀΣw⁻¹ v)) − 1, one per direction v_i.

    Directions are the unit eigenvectors of Σx in descending eigenvalue order, or the
    columns of ``basis`` (the random-basis control; Σx is then only shape-checked).
    Σw⁻¹ comes from Σw's eigendecomposition; if Σw is not positive definite to relative
    tolerance ``rtol`` the score is undefined (UndefinedStatistic), never pseudo-inverted.
    ``eig_x`` and ``eig_w``, :func:`eigh_descending` of Σx and Σw when the caller has
    them already, spare recomputing them (a d×d eigendecomposition each).
    """
    x, w = _check_pair(cov_x, cov_w)
    if not np.isfinite(w).all():
        raise UndefinedStatistic("non-finite entries in Σw")
    directions = _directions(x, basis, eig_x)

    if eig_w is None:
        lam, u = np.linalg.eigh(_symmetrize(w))  # ascending
    else:
        lam, u = eig_w[0][::-1], eig_w[1][:, ::-1]  # ascending; the signs do not matter here
    d = lam.shape[0]
    lam_min, lam_max = float(lam[0]), float(lam[-1])
    if lam_max <= 0:
        raise UndefinedStatistic(
            f"Σw is not positive definite: largest eigenvalue {lam_max:.3g} <= 0"
        )
    if lam_min <= rtol * lam_max:
        # Distinguish an exactly singular Σw (rank-deficient, e.g. fewer weight vectors
        # than dimensions) from a merely ill-conditioned one, for a useful reason.
        rank_tol = d * np.finfo(np.float64).eps * lam_max
        rank = int(np.sum(lam > rank_tol))
        if lam_min < -rank_tol:
            reason = (
                f"Σw is not positive semi-definite: smallest eigenvalue {lam_min:.3g} "
                f"(largest {lam_max:.3g})"
            )
        elif rank < d:
            reason = (
                f"Σw is singular: numerical rank {rank} < {d} dimensions "
                f"(fewer weight vectors than dimensions?); pool the filters of several "
                f"networks into one Σw, weight_statistics(pool_filters([...])), at least "
                f"{d + 1} weight vectors in all (docs/METHODS.md, Pooled filters)"
            )
        else:
            reason = (
                f"Σw is ill-conditioned: condition number {lam_max / lam_min:.3g} "
                f"> {1 / rtol:.3g}"
            )
        raise UndefinedStatistic(reason)

    # Coordinates of each direction in Σw's eigenbasis: vᵀΣw v = Σ_j λ_j p_j², and
    # vᵀΣw⁻¹v = Σ_j p_j² / λ_j — no explicit inverse is formed.
    p2 = (u.T @ directions) ** 2
    quad = lam @ p2
    quad_inv = (1.0 / lam) @ p2
    terms = np.sqrt(quad * quad_inv) - 1.0
    # Cauchy–Schwarz makes every term >= 0; anything below is rounding.
    return np.maximum(terms, 0.0)


def misalignment(
    cov_x: ArrayLike,
    cov_w: ArrayLike,
    basis: ArrayLike | None = None,
    rtol: float = 1e-10,
    *,
    eig_x: Spectrum | None = None,
    eig_w: Spectrum | None = None,
) -> float:
    """M(Σx, Σw) = Σ_i [sqrt((v_iᵀΣw v_i)(v_iᵀΣw⁻¹v_i)) − 1]; 0 iff Σw is aligned with Σx.

    See :func:`misalignment_terms` for the directions, ``basis``, ``rtol``, ``eig_x``
    and ``eig_w``.
    """
    return float(misalignment_terms(cov_x, cov_w, basis=basis, rtol=rtol, eig_x=eig_x, eig_w=eig_w).sum())


def _clip_rounding(values: np.ndarray, scale: float, what: str) -> np.ndarray:
    """Clip negatives that are rounding (|v| <= _PSD_RTOL·scale) to 0; reject larger ones."""
    if scale > 0 and float(values.min()) < -_PSD_RTOL * scale:
        raise ValueError(f"{what} is not positive semi-definite: value {values.min():.3g}")
    return np.maximum(values, 0.0)


def transfer_function(
    cov_x: ArrayLike, cov_w: ArrayLike, *, eig_x: Spectrum | None = None, eig_w: Spectrum | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(σ, f): σ_i = sqrt(λ_i(Σx)) in descending order and f_i = sqrt(v_iᵀ Σw v_i).

    The paper's Definition 3: how much weight variance lies along each data direction.
    Σw may be singular here (no inverse is needed). Tiny negative eigenvalues from
    rounding are clipped to 0. ``eig_x`` and ``eig_w`` as in :func:`misalignment_terms`.
    """
    x, w = _check_pair(cov_x, cov_w)
    if not np.isfinite(x).all():
        raise UndefinedStatistic("non-finite entries in Σx")
    if not np.isfinite(w).all():
        raise UndefinedStatistic("non-finite entries in Σw")
    values, vectors = eig_x if eig_x is not None else eigh_descending(x)
    scale_x = float(np.abs(values).max())
    sigma = np.sqrt(_clip_rounding(values, scale_x, "Σx"))
    w = _symmetrize(w)
    quad = np.sum(vectors * (w @ vectors), axis=0)  # v_iᵀ Σw v_i; a matrix product, not einsum's O(d³) loop
    if not w.size:
        scale_w = 0.0
    else:
        scale_w = float(np.abs(eig_w[0] if eig_w is not None else np.linalg.eigvalsh(w)).max())
    f = np.sqrt(_clip_rounding(quad, scale_w, "Σw"))
    return sigma, f
