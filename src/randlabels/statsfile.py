"""The HDF5 statistics file of one pre-training run, and tidy tables read from it.

Layout (readable with h5dump)::

    /                          attrs: experiment, labels, init_scale, seed, arch, format,
                               and the provenance stamp (randlabels.provenance)
    /epoch_0005/               attrs: epoch, layers (measured layer names, in order)
    /epoch_0005/<layer>/       datasets: weights, cov_x, mean_x, eigval_x, eigvec_x,
                               mean_w, cov_w, eigval_w, eigvec_w, sigma, f
                               attrs: weight_shape, misalignment_data,
                               misalignment_random, undefined_reason
    /epoch_0005/activations    compound table: module, frac_active, frac_dead,
                               mean_activation

An undefined misalignment is stored as NaN with the reason in ``undefined_reason``.
Arrays of 64 KiB and more are gzip-compressed (with HDF5's shuffle filter); all are
stored as the root attribute ``precision`` says, float64 (the default) or float32.
The root attributes experiment, labels, init_scale and seed are the file's identity
(:mod:`randlabels.identity`), which its readers check against the file's path
(:func:`expect_path_identities`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterable

import h5py
import numpy as np
import pandas as pd

from .errors import InputFileError
from .identity import expect_identity, expected, path_wildcards
from . import provenance
from .io import atomic_output

FORMAT = "randlabels-stats/1"
ARRAYS = ("weights", "cov_x", "mean_x", "eigval_x", "eigvec_x", "mean_w", "cov_w", "eigval_w", "eigvec_w", "sigma", "f")


PRECISIONS = ("float64", "float32")


# Arrays below this size are stored plain: HDF5 compresses in chunks, whose index
# outweighs the gain on small arrays (a digits run's file grew 2.5x when all were).
COMPRESS_FROM_BYTES = 64 * 1024


def _array(group, name: str, values, dtype: str) -> None:
    """One dataset, gzip-compressed when large (covariances of wide layers)."""
    values = np.asarray(values, dtype=dtype)
    if values.ndim == 0 or values.nbytes < COMPRESS_FROM_BYTES:
        group.create_dataset(name, data=values)
    else:
        group.create_dataset(name, data=values, compression="gzip", compression_opts=4, shuffle=True)


def write_stats(path: str | os.PathLike, records, attrs: dict, precision: str = "float64") -> None:
    """Write the records of :func:`randlabels.measure.measure_checkpoints`, their
    arrays as ``precision`` (float64 or float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["precision"] = precision
        for key, value in attrs.items():
            f.attrs[key] = value
        provenance.stamp_into(f.attrs)
        for record in records:
            group = f.create_group(f"epoch_{record.epoch:04d}")
            group.attrs["epoch"] = record.epoch
            group.attrs["layers"] = [layer.layer for layer in record.layers]
            for layer in record.layers:
                sub = group.create_group(layer.layer)
                for name in ARRAYS:
                    _array(sub, name, getattr(layer, name), precision)
                sub.attrs["weight_shape"] = np.asarray(layer.weight_shape, dtype=np.int64)
                sub.attrs["misalignment_data"] = layer.misalignment_data
                sub.attrs["misalignment_random"] = layer.misalignment_random
                sub.attrs["undefined_reason"] = layer.undefined_reason
            if record.activations is not None:
                table = record.activations
                dtype = np.dtype([("module", h5py.string_dtype()), ("frac_active", "f8"), ("frac_dead", "f8"), ("mean_activation", "f8")])
                rows = np.array([tuple(r) for r in table[list(dtype.names)].itertuples(index=False)], dtype=dtype)
                group.create_dataset("activations", data=rows)


@contextlib.contextmanager
def _open(path):
    """An open statistics file; a damaged one raises an error that names it."""
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise InputFileError(path, f"not a readable statistics file ({err})") from err
    with f:
        if f.attrs.get("format") != FORMAT:
            raise InputFileError(path, f"not a randlabels statistics file (format {FORMAT})")
        try:
            yield f
        except (OSError, KeyError, RuntimeError) as err:  # what h5py raises on truncated data
            raise InputFileError(path, f"damaged or incomplete statistics file ({type(err).__name__}: {err})") from err


def _run_columns(f) -> dict:
    return {
        "experiment": str(f.attrs["experiment"]),
        "labels": str(f.attrs["labels"]),
        "init_scale": float(f.attrs["init_scale"]),
        "seed": int(f.attrs["seed"]),
        "diverged": bool(f.attrs.get("diverged", False)),
    }


def identity(path: str | os.PathLike) -> dict:
    """The run a statistics file was written for: experiment, labels, init_scale, seed
    (``None`` for what it does not record)."""
    with _open(path) as f:
        return {key: f.attrs.get(key) for key in ("experiment", "labels", "init_scale", "seed")}


def expect_path_identities(paths: Iterable[str | os.PathLike], template: str) -> None:
    """Refuse any of ``paths`` whose recorded identity differs from what its path says
    in ``template`` (``plan.PATHS["stats"]``): a file copied over another run's."""
    for path in paths:
        expect_identity(identity(path), expected(path_wildcards(template, path)), path)


def _epochs(f):
    for name in sorted(k for k in f if k.startswith("epoch_")):
        yield int(f[name].attrs["epoch"]), f[name]


def _layers(group):
    for name, item in group.items():
        if isinstance(item, h5py.Group):
            yield name, item


def misalignment_table(paths: Iterable[str]) -> pd.DataFrame:
    """Tidy rows: one per run, epoch, layer and basis (data | random)."""
    rows = []
    for path in paths:
        with _open(path) as f:
            run = _run_columns(f)
            for epoch, group in _epochs(f):
                for layer, sub in _layers(group):
                    for basis in ("data", "random"):
                        rows.append({
                            **run, "epoch": epoch, "layer": layer, "basis": basis,
                            "misalignment": float(sub.attrs[f"misalignment_{basis}"]),
                            "reason": str(sub.attrs["undefined_reason"]),
                        })
    return pd.DataFrame(rows)


def transfer_function_table(paths: Iterable[str]) -> pd.DataFrame:
    """Tidy rows: one per run, epoch, layer and eigen-direction of Σx."""
    frames = []
    for path in paths:
        with _open(path) as f:
            run = _run_columns(f)
            for epoch, group in _epochs(f):
                for layer, sub in _layers(group):
                    sigma, fvalues = sub["sigma"][()], sub["f"][()]
                    frames.append(pd.DataFrame({
                        **run, "epoch": epoch, "layer": layer,
                        "index": np.arange(len(sigma)), "sigma": sigma, "f": fvalues,
                    }))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def activation_table(paths: Iterable[str]) -> pd.DataFrame:
    """Tidy rows: one per run, epoch and ReLU module."""
    frames = []
    for path in paths:
        with _open(path) as f:
            run = _run_columns(f)
            for epoch, group in _epochs(f):
                if "activations" not in group:
                    continue
                table = pd.DataFrame(group["activations"][()])
                table["module"] = table["module"].map(lambda v: v.decode() if isinstance(v, bytes) else v)
                frames.append(table.assign(**run, epoch=epoch))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_layer(path: str | os.PathLike, epoch: int, layer: str) -> dict:
    """All arrays and attributes of one layer at one epoch."""
    with _open(path) as f:
        key = f"epoch_{epoch:04d}"
        if key not in f or layer not in f[key]:
            raise InputFileError(path, f"no statistics for layer {layer!r} at epoch {epoch}")
        sub = f[key][layer]
        data = {name: sub[name][()] for name in ARRAYS}
        data.update({k: sub.attrs[k] for k in sub.attrs})
        return data


def last_epoch(path: str | os.PathLike) -> int:
    """The latest epoch stored in a statistics file."""
    with _open(path) as f:
        return max(epoch for epoch, _ in _epochs(f))


def first_layer_name(path: str | os.PathLike) -> str:
    """Name of the first measured layer (in the order written) of a statistics file."""
    with _open(path) as f:
        for _, group in _epochs(f):
            if len(group.attrs.get("layers", [])):
                return str(group.attrs["layers"][0])
    raise InputFileError(path, "contains no layer statistics")
