"""The paper's synthetic setting: Gaussian vectors with labels independent of x."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from randlabels.data.h5file import check_int, write_dataset


def _gaussian_variances(
    dim: int, variances: Sequence[float] | None, spectrum: Mapping[str, Any] | None
) -> np.ndarray:
    """The diagonal of Σx from either an explicit list or a spectrum description."""
    if (variances is None) == (spectrum is None):
        raise ValueError("give exactly one of 'variances' and 'spectrum'")
    if variances is not None:
        values = np.asarray(variances, dtype=np.float64)
        if values.ndim != 1 or len(values) != dim:
            raise ValueError(
                f"'variances' must be a list of dim={dim} numbers, got shape {values.shape}"
            )
    else:
        if not isinstance(spectrum, Mapping) or set(spectrum) != {"kind", "low", "high"}:
            raise ValueError(
                f"'spectrum' must be a mapping with keys kind, low, high; got {spectrum!r}"
            )
        if spectrum["kind"] != "linear":
            raise ValueError(f"'spectrum' kind must be 'linear', got {spectrum['kind']!r}")
        values = np.linspace(float(spectrum["low"]), float(spectrum["high"]), dim)
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        name = "variances" if variances is not None else "spectrum"
        raise ValueError(f"'{name}' must give finite positive variances, got {values.tolist()}")
    return values


def prepare_gaussian(
    out_path: str | os.PathLike,
    *,
    dim: int,
    variances: Sequence[float] | None = None,
    spectrum: Mapping[str, Any] | None = None,
    n_samples: int,
    seed: int,
    num_classes: int = 10,
) -> None:
    """Write x ~ N(0, diag(variances)) with labels drawn independently of x.

    The paper's synthetic setting (linear spectrum 0.1..3.0 in 30 dimensions) is
    ``spectrum={"kind": "linear", "low": 0.1, "high": 3.0}``. The labels carry no
    information about x by construction: they come uniformly from the same seeded
    generator, after x. The normalization stored is the identity, so training sees
    the exact covariance.
    """
    check_int("dim", dim, 1)
    check_int("n_samples", n_samples, 2)
    check_int("num_classes", num_classes, 2)
    check_int("seed", seed, 0)
    values = _gaussian_variances(int(dim), variances, spectrum)

    rng = np.random.default_rng(int(seed))
    x = (rng.standard_normal((int(n_samples), int(dim))) * np.sqrt(values)).astype(np.float32)
    labels = rng.integers(0, int(num_classes), size=int(n_samples), dtype=np.int64)
    if spectrum is None:
        how = "explicit variances"
    else:
        how = f"linear spectrum {float(spectrum['low'])}..{float(spectrum['high'])}"
    write_dataset(
        out_path,
        images=x,
        labels=labels,
        is_test=np.zeros(int(n_samples), dtype=bool),
        class_names=[f"class {k}" for k in range(int(num_classes))],
        attrs={
            "name": "gaussian",
            "kind": "vector",
            "source": (
                f"synthetic N(0, diag(variances)) ({how}), labels uniform over "
                f"{int(num_classes)} classes independent of x, seed {int(seed)}"
            ),
            "checksum": "",
            "num_classes": int(num_classes),
            "norm_mean": np.zeros(int(dim), dtype=np.float64),
            "norm_std": np.ones(int(dim), dtype=np.float64),
            "dim": int(dim),
            "variances": values,
            "n_samples": int(n_samples),
            "seed": int(seed),
        },
    )
