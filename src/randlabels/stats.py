"""Second-order statistics of data and weights, and the alignment scores built on them.

Pure numerics: this module imports nothing else from ``randlabels``. Every function that
takes arrays accepts numpy arrays or torch tensors (any device, any real dtype) and
computes in float64, so results do not depend on where or in which precision a model was
trained. The formulas are written out in ``docs/METHODS.md``.

Undefined quantities (a singular Σw, non-finite input) raise :class:`UndefinedStatistic`
with a human-readable ``reason`` instead of returning a faked number.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
from torch.nn import functional as F

__all__ = [
    "UndefinedStatistic",
    "to_float64",
    "weight_vectors",
    "weight_statistics",
    "StreamingCovariance",
    "patch_covariance",
    "eigh_descending",
    "random_orthonormal_basis",
    "misalignment",
    "misalignment_terms",
    "transfer_function",
]

ArrayLike = Any  # numpy array or torch tensor (kept loose: both are accepted everywhere)

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
    if isinstance(a, torch.Tensor):
        if a.is_complex():
            raise TypeError("complex tensors are not supported")
        return a.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
    arr = np.asarray(a)
    if np.iscomplexobj(arr):
        raise TypeError("complex arrays are not supported")
    return np.array(arr, dtype=np.float64, copy=True)


def _as_float64_tensor(a: ArrayLike, device: torch.device | None = None) -> torch.Tensor:
    """A float64 torch tensor of ``a`` on ``device`` (default: where ``a`` already lives)."""
    if isinstance(a, torch.Tensor):
        if a.is_complex():
            raise TypeError("complex tensors are not supported")
        t = a.detach()
    else:
        arr = np.asarray(a)
        if np.iscomplexobj(arr):
            raise TypeError("complex arrays are not supported")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    return t.to(device=device if device is not None else t.device, dtype=torch.float64)


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
    (C_in, kh, kw) order, which is the order of the patches of :func:`patch_covariance`.
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


# --------------------------------------------------------------------------- streaming


class StreamingCovariance:
    """Mean and covariance of d-dimensional samples, accumulated batch by batch.

    Keeps only the count, the mean and the centred scatter matrix Σ(x − x̄)(x − x̄)ᵀ,
    merged with the pairwise update of Chan, Golub & LeVeque (1979), so a large common
    offset in the data does not cancel catastrophically the way Σxxᵀ − n x̄x̄ᵀ would.
    State is float64 torch on the device of the first batch (CUDA stays on the GPU);
    later batches are moved to that device.
    """

    def __init__(self, dim: int) -> None:
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        self._count = 0
        self._mean: torch.Tensor | None = None  # (d,) float64
        self._scatter: torch.Tensor | None = None  # (d, d) float64, centred

    def __repr__(self) -> str:
        device = None if self._mean is None else self._mean.device
        return f"StreamingCovariance(dim={self.dim}, count={self._count}, device={device})"

    @property
    def count(self) -> int:
        """Number of samples accumulated so far."""
        return self._count

    @property
    def mean(self) -> np.ndarray:
        """Mean of the samples, float64 numpy (d,)."""
        if self._mean is None:
            raise UndefinedStatistic("mean of zero samples is undefined")
        return to_float64(self._mean)

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """Covariance, the centred scatter divided by (count − ddof); float64 numpy (d, d)."""
        if self._scatter is None or self._count <= ddof:
            raise UndefinedStatistic(
                f"covariance of {self._count} sample(s) is undefined with ddof={ddof}"
            )
        cov = to_float64(self._scatter) / (self._count - ddof)
        return _symmetrize(cov)

    def update(self, samples: ArrayLike) -> "StreamingCovariance":
        """Add a batch of samples (n, d); returns ``self`` for chaining."""
        device = self._mean.device if self._mean is not None else None
        x = _as_float64_tensor(samples, device)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"samples must have shape (n, {self.dim}), got {tuple(x.shape)}")
        n = x.shape[0]
        if n == 0:
            return self
        if not bool(torch.isfinite(x).all()):
            raise ValueError("non-finite values in samples")
        mean = x.mean(dim=0)
        centred = x - mean
        scatter = centred.T @ centred
        self._combine(n, mean, scatter)
        return self

    def update_columns(self, columns: torch.Tensor) -> "StreamingCovariance":
        """Add the samples held as columns of a (B, d, L) tensor (``F.unfold``'s layout).

        Same result as ``update`` on the (B·L, d) rows, without transposing them into
        a copy: the scatter is a batched (d×L)(L×d) product, several times faster.
        """
        x = _as_float64_tensor(columns, self._mean.device if self._mean is not None else None)
        if x.ndim != 3 or x.shape[1] != self.dim:
            raise ValueError(f"samples must have shape (B, {self.dim}, L) as columns, got {tuple(x.shape)}")
        n = x.shape[0] * x.shape[2]
        if n == 0:
            return self
        if not bool(torch.isfinite(x).all()):
            raise ValueError("non-finite values in samples")
        mean = x.mean(dim=(0, 2))
        centred = x - mean[None, :, None]
        scatter = torch.bmm(centred, centred.transpose(1, 2)).sum(dim=0)
        self._combine(n, mean, scatter)
        return self

    def merge(self, other: "StreamingCovariance") -> "StreamingCovariance":
        """Absorb another accumulator (e.g. from another worker); returns ``self``."""
        if not isinstance(other, StreamingCovariance):
            raise TypeError(f"can only merge a StreamingCovariance, not {type(other).__name__}")
        if other.dim != self.dim:
            raise ValueError(
                f"dimension mismatch: cannot merge dim {other.dim} into dim {self.dim}"
            )
        if other._count == 0:
            return self
        assert other._mean is not None and other._scatter is not None
        device = self._mean.device if self._mean is not None else other._mean.device
        self._combine(other._count, other._mean.to(device), other._scatter.to(device))
        return self

    def _combine(self, n_b: int, mean_b: torch.Tensor, scatter_b: torch.Tensor) -> None:
        """Chan et al.: n = na+nb, δ = x̄b − x̄a, x̄ = x̄a + δ·nb/n, S = Sa + Sb + δδᵀ·na·nb/n."""
        if self._count == 0 or self._mean is None or self._scatter is None:
            self._count = n_b
            self._mean = mean_b.clone()
            self._scatter = scatter_b.clone()
            return
        n_a = self._count
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._scatter = self._scatter + scatter_b + torch.outer(delta, delta) * (n_a * n_b / n)
        self._count = n


def _pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    """An int or a pair of ints as a pair, or a ValueError naming the argument."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def patch_covariance(
    batches: Iterable[ArrayLike],
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
) -> StreamingCovariance:
    """Σx of a conv layer: streaming covariance of every patch a Conv2d would see.

    Each (B, C, H, W) batch is unfolded exactly as ``torch.nn.Conv2d`` with the same
    kernel_size/stride/padding/dilation would (zero padding included, so border patches
    count with their zeros); each patch, flattened in the weight's (C_in, kh, kw) order,
    is one sample. Only one batch's patches exist in memory at a time.
    """
    kernel = _pair("kernel_size", kernel_size)
    stride_ = _pair("stride", stride)
    padding_ = _pair("padding", padding)
    dilation_ = _pair("dilation", dilation)
    if min(kernel) < 1 or min(stride_) < 1 or min(dilation_) < 1 or min(padding_) < 0:
        raise ValueError(
            "kernel_size, stride and dilation must be >= 1 and padding >= 0, got "
            f"{kernel}, {stride_}, {dilation_}, {padding_}"
        )
    acc: StreamingCovariance | None = None
    for batch in batches:
        x = _as_float64_tensor(batch)
        if x.ndim != 4:
            raise ValueError(f"batches must have shape (B, C, H, W), got {tuple(x.shape)}")
        if acc is None:
            acc = StreamingCovariance(x.shape[1] * kernel[0] * kernel[1])
        if x.shape[0] == 0:
            continue
        # (B, C·kh·kw, L): one column per patch position.
        acc.update_columns(F.unfold(x, kernel, dilation=dilation_, padding=padding_, stride=stride_))
    if acc is None:
        raise ValueError("patch_covariance needs at least one batch")
    return acc


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


def _directions(x: np.ndarray, basis: ArrayLike | None) -> np.ndarray:
    """The unit directions v_i as columns: eigenvectors of Σx, or the given basis."""
    d = x.shape[0]
    if basis is None:
        if not np.isfinite(x).all():
            raise UndefinedStatistic("non-finite entries in Σx")
        return eigh_descending(x)[1]
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
) -> np.ndarray:
    """Per-direction terms sqrt((vᵀΣw v)(vᵀΣw⁻¹ v)) − 1, one per direction v_i.

    Directions are the unit eigenvectors of Σx in descending eigenvalue order, or the
    columns of ``basis`` (the random-basis control; Σx is then only shape-checked).
    Σw⁻¹ comes from Σw's eigendecomposition; if Σw is not positive definite to relative
    tolerance ``rtol`` the score is undefined (UndefinedStatistic), never pseudo-inverted.
    """
    x, w = _check_pair(cov_x, cov_w)
    if not np.isfinite(w).all():
        raise UndefinedStatistic("non-finite entries in Σw")
    directions = _directions(x, basis)

    lam, u = np.linalg.eigh(_symmetrize(w))  # ascending
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
                f"(fewer weight vectors than dimensions?)"
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
) -> float:
    """M(Σx, Σw) = Σ_i [sqrt((v_iᵀΣw v_i)(v_iᵀΣw⁻¹v_i)) − 1]; 0 iff Σw is aligned with Σx.

    See :func:`misalignment_terms` for the directions, ``basis`` and ``rtol``.
    """
    return float(misalignment_terms(cov_x, cov_w, basis=basis, rtol=rtol).sum())


def _clip_rounding(values: np.ndarray, scale: float, what: str) -> np.ndarray:
    """Clip negatives that are rounding (|v| <= _PSD_RTOL·scale) to 0; reject larger ones."""
    if scale > 0 and float(values.min()) < -_PSD_RTOL * scale:
        raise ValueError(f"{what} is not positive semi-definite: value {values.min():.3g}")
    return np.maximum(values, 0.0)


def transfer_function(cov_x: ArrayLike, cov_w: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(σ, f): σ_i = sqrt(λ_i(Σx)) in descending order and f_i = sqrt(v_iᵀ Σw v_i).

    The paper's Definition 3: how much weight variance lies along each data direction.
    Σw may be singular here (no inverse is needed). Tiny negative eigenvalues from
    rounding are clipped to 0.
    """
    x, w = _check_pair(cov_x, cov_w)
    if not np.isfinite(x).all():
        raise UndefinedStatistic("non-finite entries in Σx")
    if not np.isfinite(w).all():
        raise UndefinedStatistic("non-finite entries in Σw")
    values, vectors = eigh_descending(x)
    scale_x = float(np.abs(values).max())
    sigma = np.sqrt(_clip_rounding(values, scale_x, "Σx"))
    w = _symmetrize(w)
    quad = np.einsum("ji,jk,ki->i", vectors, w, vectors)
    scale_w = float(np.abs(np.linalg.eigvalsh(w)).max()) if w.size else 0.0
    f = np.sqrt(_clip_rounding(quad, scale_w, "Σw"))
    return sigma, f
