"""Layer-wise construction of an initialization from the data covariance (paper §2.5).

For ℓ = 1..k (the first k conv/linear layers in :func:`~randlabels.models.networks.weight_layers`
order, never the classifier head):

1. Σx of layer ℓ is measured on the data passed through the *already constructed*
   layers below (:func:`~randlabels.analysis.probes.layer_input_covariance`: patches for a conv
   with its own padding and stride, rows for a linear layer);
2. Σx = V diag(σ²) Vᵀ (eigenvalues below ``RANK_RTOL``·λ_max, and rounding negatives,
   count as σ = 0);
3. Σw = V diag(g(σ)²) Vᵀ, and the layer's C_out weight vectors are drawn i.i.d. from
   N(0, Σw) as w_j = V (g ⊙ z_j), z_j ~ N(0, I) — no Cholesky, so a rank-deficient
   Σx (zero-variance pixels, more dimensions than samples) is fine;
4. the rows are reshaped to the weight tensor (row-major, the weight's own
   (C_in, kh, kw) order, as :func:`~randlabels.analysis.stats.weight_vectors` flattens) and the
   whole tensor is rescaled to the ℓ2 norm the layer had on entry, i.e. its default
   He × init_scale norm when the model is freshly initialized; the bias is zeroed.

Layers above k (and the head) keep whatever they had: the fresh init. k = 0 changes
nothing. The overall scale of g is irrelevant because of step 4.

Two choices of g (``method``):

- ``"layerwise"``: g estimated from a network pre-trained on random labels
  (:func:`estimated_transfer`);
- ``"covariance"``: no training at all, the parametric stand-in
  :func:`parametric_transfer`.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from randlabels.analysis.probes import layer_input_covariance
from randlabels.analysis.stats import eigh_descending, transfer_function, weight_statistics
from randlabels.models.networks import head_prefix, weight_layers
from randlabels.seeding import stream_rng

__all__ = [
    "METHODS",
    "MAX_DIM",
    "RANK_RTOL",
    "parametric_transfer",
    "estimated_transfer",
    "constructible_layers",
    "construct_layers",
]

METHODS = ("layerwise", "covariance")

# Eigenvalues of Σx at most RANK_RTOL·λ_max are rounding (the null space of a
# rank-deficient Σx) and are treated as σ = 0.
RANK_RTOL = 1e-10

# Largest layer input dimension d accepted: Σx is a dense float64 d×d matrix
# (8·d² bytes: 2 GiB at d = 16384) and is eigendecomposed on the CPU.
MAX_DIM = 16384

BatchesFn = Callable[[], Iterable[torch.Tensor]]


def _sigma(values: np.ndarray) -> np.ndarray:
    """σ = sqrt(λ) with rounding-level eigenvalues (≤ RANK_RTOL·λ_max, or negative) set to 0."""
    values = np.asarray(values, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    if top <= 0:
        return np.zeros_like(values)
    return np.sqrt(np.where(values > RANK_RTOL * top, values, 0.0))


def parametric_transfer(sigma: np.ndarray) -> np.ndarray:
    """The training-free stand-in for the transfer function:

        g(σ) = σ / (1 + (σ/τ)²),   τ = median of the positive σ

    g rises like σ for σ ≪ τ, peaks at σ = τ (value τ/2) and falls like τ²/σ above,
    the shape of the f(σ) measured on networks trained with random labels. τ is the
    median of the layer's own σ (those > 0: a rank-deficient Σx has many σ = 0, which
    would otherwise drag τ to 0); σ ≤ 0 gives g = 0.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    positive = sigma[sigma > 0]
    if positive.size == 0:
        raise ValueError("parametric transfer function: no positive σ (the layer's inputs have zero variance)")
    tau = float(np.median(positive))
    out = sigma / (1.0 + (sigma / tau) ** 2)
    return np.where(sigma > 0, out, 0.0)


def _interpolator(sigma_points: np.ndarray, f_points: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """g(σ): linear interpolation of (log σ_i, f_i), constant beyond the ends, g(σ ≤ 0) = f at the smallest σ_i."""
    keep = sigma_points > 0
    if not keep.any():
        raise ValueError("cannot estimate the transfer function: no positive σ in the pre-trained network's Σx")
    log_s = np.log(sigma_points[keep])
    f = np.asarray(f_points, dtype=np.float64)[keep]
    # np.interp needs increasing abscissae: average f over (numerically) equal σ.
    xs, inverse = np.unique(log_s, return_inverse=True)
    ys = np.bincount(inverse, weights=f) / np.bincount(inverse)

    def g(sigma: np.ndarray) -> np.ndarray:
        sigma = np.asarray(sigma, dtype=np.float64)
        with np.errstate(divide="ignore"):
            x = np.where(sigma > 0, np.log(np.where(sigma > 0, sigma, 1.0)), -np.inf)
        return np.interp(x, xs, ys, left=ys[0], right=ys[-1])

    g.points = (np.exp(xs), ys)  # for diagnostics and plots
    return g


def _check_dim(layer: str, module: nn.Module, max_dim: int) -> int:
    dim = module.weight[0].numel()
    if dim > max_dim:
        raise ValueError(
            f"layer {layer} has input dimension d = {dim}: its Σx would be a dense "
            f"{dim}×{dim} float64 matrix ({8 * dim * dim / 2**30:.1f} GiB) to eigendecompose; "
            f"the limit is d <= {max_dim} (construct fewer layers, or shrink the layer's input)"
        )
    return dim


def estimated_transfer(
    pretrained: nn.Module, layer: str, batches_fn: BatchesFn, max_dim: int = MAX_DIM
) -> Callable[[np.ndarray], np.ndarray]:
    """g(σ) measured on a pre-trained network at ``layer``.

    Σx' is the covariance of the layer's inputs in ``pretrained`` (its own layers
    below) over ``batches_fn()``; Σw' the covariance of its filters at ``layer``;
    (σ'_i, f_i) = :func:`~randlabels.analysis.stats.transfer_function` (Σx', Σw'), i.e.
    f_i = sqrt(v'_iᵀ Σw' v'_i). The returned g interpolates the points (σ'_i, f_i)
    linearly in log σ (σ'_i at rounding level, see ``RANK_RTOL``, are dropped), is
    constant beyond the smallest and largest σ', and maps σ ≤ 0 to the value at the
    smallest σ'. ``g.points`` holds the (σ', f) points used.
    """
    modules = dict(pretrained.named_modules())
    if layer not in modules or not isinstance(modules[layer], (nn.Conv2d, nn.Linear)):
        raise ValueError(f"the pre-trained network has no conv/linear layer {layer!r}")
    _check_dim(layer, modules[layer], max_dim)
    cov_x = layer_input_covariance(pretrained, layer, batches_fn()).covariance()
    _, cov_w = weight_statistics(modules[layer].weight)
    sigma, f = transfer_function(cov_x, cov_w)
    return _interpolator(_sigma(sigma**2), f)  # with the rank cut applied


def constructible_layers(model: nn.Module) -> list[str]:
    """The weight layers construction may replace: all conv/linear layers but the head."""
    head = head_prefix(model)
    return [name for name in weight_layers(model) if name != head]


@torch.no_grad()
def construct_layers(
    model: nn.Module,
    k: int,
    method: str,
    batches_fn: BatchesFn,
    seed: int,
    pretrained: nn.Module | None = None,
    max_dim: int = MAX_DIM,
) -> dict[str, dict]:
    """Replace the first ``k`` non-head weight layers of ``model`` (in place), bottom up.

    ``model`` should be freshly initialized (He × init_scale): each constructed tensor
    is rescaled to the norm its layer has on entry. ``batches_fn()`` yields normalized
    input batches on the model's device (called once per layer, and once more per layer
    for ``pretrained``). ``method`` is "layerwise" (g from ``pretrained``, which must be
    given, on the same device, with the same layer names) or "covariance" (the
    parametric g). Layer ℓ's Gaussian draw uses the generator
    ``stream_rng(seed, "construct", layer_name)``, so it is deterministic per seed.

    Returns, per constructed layer name: dim, units, samples (the input vectors in
    Σx), rank (σ > 0), sigma_max, norm (the tensor's final ℓ2 norm) and seconds.
    """
    if method not in METHODS:
        raise ValueError(f"unknown construction method {method!r}; valid: {', '.join(METHODS)}")
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise ValueError(f"depth k must be a non-negative integer, got {k!r}")
    k = int(k)
    layers = constructible_layers(model)
    if k > len(layers):
        raise ValueError(
            f"cannot construct {k} layer(s): the model has {len(layers)} weight layer(s) "
            f"below the classifier ({', '.join(layers)})"
        )
    if method == "layerwise" and pretrained is None:
        raise ValueError("method 'layerwise' needs a pre-trained network to estimate g from")
    modules = dict(model.named_modules())
    for name in layers[:k]:  # refuse before anything is changed
        _check_dim(name, modules[name], max_dim)

    diagnostics: dict[str, dict] = {}
    for name in layers[:k]:
        start = time.perf_counter()
        module = modules[name]
        weight = module.weight
        target_norm = float(weight.detach().double().norm())
        accumulator = layer_input_covariance(model, name, batches_fn())
        values, vectors = eigh_descending(accumulator.covariance())
        sigma = _sigma(values)
        if method == "covariance":
            g = parametric_transfer(sigma)
        else:
            g = estimated_transfer(pretrained, name, batches_fn, max_dim=max_dim)(sigma)
        if not np.isfinite(g).all() or not (g > 0).any():
            raise ValueError(f"layer {name}: the transfer function is zero or non-finite on every direction of Σx")
        units, dim = weight.shape[0], vectors.shape[0]
        z = stream_rng(seed, "construct", name).standard_normal((units, dim))
        rows = (z * g) @ vectors.T  # w_j = V (g ⊙ z_j): covariance V diag(g²) Vᵀ
        sampled = torch.from_numpy(rows.reshape(tuple(weight.shape)))
        sampled_norm = float(sampled.norm())
        if sampled_norm > 0:
            sampled = sampled * (target_norm / sampled_norm)
        weight.copy_(sampled.to(dtype=weight.dtype, device=weight.device))
        if module.bias is not None:
            module.bias.zero_()
        diagnostics[name] = {
            "dim": int(dim),
            "units": int(units),
            "samples": int(accumulator.count),
            "rank": int((sigma > 0).sum()),
            "sigma_max": float(sigma.max()),
            "norm": float(weight.detach().double().norm()),
            "seconds": time.perf_counter() - start,
        }
    return diagnostics
