"""The paper's synthetic setting: Gaussian vectors with labels independent of x."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from randlabels.data.h5file import check_int, write_dataset
from randlabels.errors import InputFileError
from randlabels.seeding import stream_rng


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
    per_seed: bool = False,
    draw_seed: int | None = None,
) -> None:
    """Write x ~ N(0, diag(variances)) with labels drawn independently of x.

    The paper's synthetic setting (linear spectrum 0.1..3.0 in 30 dimensions) is
    ``spectrum={"kind": "linear", "low": 0.1, "high": 3.0}``. The labels carry no
    information about x by construction: they come uniformly from the same seeded
    generator, after x. The normalization stored is the identity, so training sees
    the exact covariance.

    ``per_seed=True``: the file holds the draw of one experiment seed, ``draw_seed``,
    from that seed's own stream ``stream_rng(draw_seed, "gaussian-data", seed)``; the
    workflow prepares one file per experiment seed, so adding a seed leaves the other
    seeds' files, and all that was computed from them, as they are. The file records
    ``draw_seed`` (:func:`check_draw`).
    """
    check_int("dim", dim, 1)
    check_int("n_samples", n_samples, 2)
    check_int("num_classes", num_classes, 2)
    check_int("seed", seed, 0)
    values = _gaussian_variances(int(dim), variances, spectrum)
    if not isinstance(per_seed, (bool, np.bool_)):
        raise ValueError(f"'per_seed' must be true or false, got {per_seed!r}")
    if per_seed:
        if draw_seed is None:
            raise ValueError("'per_seed' needs the experiment seed to draw for ('draw_seed'), got none")
        check_int("draw_seed", draw_seed, 0)
        rng = stream_rng(int(draw_seed), "gaussian-data", int(seed))
    elif draw_seed is not None:
        raise ValueError("'draw_seed' is only used with per_seed: true")
    else:
        rng = np.random.default_rng(int(seed))
    x, labels = _draw(rng, n_samples, values, num_classes)
    if spectrum is None:
        how = "explicit variances"
    else:
        how = f"linear spectrum {float(spectrum['low'])}..{float(spectrum['high'])}"
    extra = {}
    if per_seed:
        how += f"; the draw of experiment seed {int(draw_seed)}"
        extra["draw_seed"] = int(draw_seed)
    write_dataset(
        out_path,
        images=x,
        labels=labels,
        is_test=np.zeros(len(labels), dtype=bool),
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
            **extra,
        },
    )


def _draw(rng: np.random.Generator, n_samples: int, values: np.ndarray, num_classes: int):
    """One sample: x ~ N(0, diag(values)) (float32), then labels uniform over the classes."""
    x = (rng.standard_normal((int(n_samples), len(values))) * np.sqrt(values)).astype(np.float32)
    labels = rng.integers(0, int(num_classes), size=int(n_samples), dtype=np.int64)
    return x, labels


def check_draw(attrs: Mapping[str, Any], seed: int, source: str | os.PathLike = "the dataset") -> None:
    """Refuse to split a per-seed draw (``draw_seed`` among the file's attributes) for
    another experiment seed than its own, naming the file; any other dataset passes."""
    if "draw_seed" in attrs and int(attrs["draw_seed"]) != int(seed):
        raise InputFileError(
            source,
            f"is the per-seed draw of seed {int(attrs['draw_seed'])}, not of seed {int(seed)}; each seed of a "
            "per_seed dataset reads its own file (results/data/NAME/seedS.h5)",
        )
