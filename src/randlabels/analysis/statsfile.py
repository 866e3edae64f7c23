"""The HDF5 statistics file of one pre-training run, and tidy tables read from it.

Layout (readable with h5dump)::

    /                          attrs: experiment, labels, init_scale, seed, arch, format,
                               and the provenance stamp (randlabels.provenance)
    /epoch_0005/               attrs: epoch, layers (measured layer names, in order)
    /epoch_0005/<layer>/       datasets: weights, cov_x, mean_x, eigval_x, eigvec_x,
                               mean_w, cov_w, eigval_w, eigvec_w, sigma, f
                               attrs: weight_shape, misalignment_data,
                               misalignment_random, undefined_reason,
                               shared_input, random_basis_seed
    /epoch_0005/activations    compound table: module, frac_active, frac_dead,
                               mean_activation

An undefined misalignment is stored as NaN with the reason in ``undefined_reason``.
``shared_input`` says whether the layer sees the data itself (the first layer: the same
coordinates in every seed, so its filters can be pooled over seeds) and
``random_basis_seed`` seeds the random basis of ``misalignment_random``; files written
before pooling existed lack both (:func:`pooled_misalignment_table` then says so).
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

from randlabels import provenance
from randlabels.analysis.memorization import collapsed_keys
from randlabels.analysis.stats import UndefinedStatistic, misalignment, pool_filters, random_orthonormal_basis, weight_statistics
from randlabels.errors import InputFileError
from randlabels.identity import expect_identity, expected, path_wildcards
from randlabels.io import atomic_output

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
    """Write the records of :func:`randlabels.analysis.measure.measure_checkpoints`, their
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
                sub.attrs["shared_input"] = bool(getattr(layer, "shared_input", False))
                basis_seed = getattr(layer, "random_basis_seed", None)
                if basis_seed is not None:
                    sub.attrs["random_basis_seed"] = np.int64(basis_seed)
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


POOLED_COLUMNS = ["experiment", "labels", "init_scale", "epoch", "layer", "of", "basis", "misalignment",
                  "seeds", "filters", "left_out", "reason"]
# What a pooled Σw is the covariance of: the filters, or what training changed, W − W₀.
OF_WEIGHTS, OF_CHANGE = "weights", "change"


def _pooled_layer(members: list[dict], initial: list[dict] | None = None) -> tuple[float, float, int, str]:
    """(data, random, filters, reason) of one layer pooled over ``members``: each a dict
    with the seed's weights (units, d), cov_x and random_basis_seed. With ``initial``
    (the same seeds' entries at epoch 0), of the change W − W₀ instead of the weights."""
    if initial is None:
        weights = pool_filters([m["weights"] for m in members])
    else:
        weights = pool_filters([m["weights"] - start["weights"] for m, start in zip(members, initial)])
    cov_x = np.mean([np.asarray(m["cov_x"], dtype=np.float64) for m in members], axis=0)
    where = f"pooled over {len(members)} seed(s), {len(weights)} filters in {weights.shape[1]} dimensions"
    try:
        _, cov_w = weight_statistics(weights)
        data = misalignment(cov_x, cov_w)
        # The control: each pooled seed's own random basis (the one its per-seed row
        # used), applied to the pooled Σw; their mean.
        random = float(np.mean([
            misalignment(cov_x, cov_w, basis=random_orthonormal_basis(cov_w.shape[0], m["random_basis_seed"]))
            for m in members
        ]))
    except UndefinedStatistic as err:
        return np.nan, np.nan, len(weights), f"{where}: {err.reason}"
    return data, random, len(weights), ""


def pooled_misalignment_table(paths: Iterable[str], runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Misalignment of Σw pooled over the seeds of each (experiment, labels, init_scale).

    Tidy rows (:data:`POOLED_COLUMNS`): one per configuration, epoch, layer, ``of`` and
    basis (data | random). The filters of one layer of every seed are stacked into one
    weight matrix (``pool_filters``), Σw is that matrix's covariance, Σx the mean of the
    seeds' Σx; the random-basis score is the mean over the pooled seeds' own random
    bases. ``of`` says what is stacked: ``weights``, the filters, or (after epoch 0)
    ``change``, each filter minus itself at epoch 0, the same seeds pooled.
    Left out of the pool (``left_out`` names them and why): diverged runs, runs that
    ``runs`` (the pre-training metrics table) flags collapsed, and at an epoch and layer
    any seed whose weights or Σx are not finite. ``seeds`` counts the seeds pooled,
    ``filters`` their filters. Only a layer that sees the data itself (the first layer,
    ``shared_input``) is pooled: a deeper layer's inputs are each seed's own units, not
    shared coordinates; its rows are NaN with the reason, as are those of a pooled Σw
    that is still singular and of files written before pooling existed.
    """
    collapsed = collapsed_keys(runs)
    groups: dict[tuple, list] = {}
    for path in paths:
        with _open(path) as f:
            run = _run_columns(f)
            key = (run["experiment"], run["labels"], run["init_scale"])
            status = ("diverged" if run["diverged"]
                      else "collapsed" if (*key, run["seed"]) in collapsed else "")
            layers = {}
            for epoch, group in _epochs(f):
                for layer, sub in _layers(group):
                    entry = {"shared_input": sub.attrs.get("shared_input"),
                             "random_basis_seed": sub.attrs.get("random_basis_seed")}
                    if entry["shared_input"] is not None and bool(entry["shared_input"]) and not status:
                        entry["weights"] = sub["weights"][()]
                        entry["cov_x"] = sub["cov_x"][()]
                    layers[(epoch, layer)] = entry
            groups.setdefault(key, []).append({"path": str(path), "seed": run["seed"], "status": status,
                                               "layers": layers})
    rows = []
    for (experiment, labels, init_scale), seeds in groups.items():
        seeds = sorted(seeds, key=lambda s: s["seed"])
        cells = list(dict.fromkeys(cell for s in seeds for cell in s["layers"]))
        for epoch, layer in sorted(cells, key=lambda c: c[0]):
            left_out, members, member_seeds, reason = [], [], [], ""
            entries = [(s, s["layers"].get((epoch, layer))) for s in seeds]
            old = [s["path"] for s, e in entries if e is not None
                   and (e["shared_input"] is None or e["random_basis_seed"] is None)]
            if old:
                reason = (f"statistics file(s) {', '.join(old)} written before pooled misalignment "
                          "existed (no shared_input / random_basis_seed): rerun rule statistics")
            elif not all(bool(e["shared_input"]) for _, e in entries if e is not None):
                reason = (f"layer {layer} is not pooled: its inputs are each seed's own lower-layer "
                          "units, not coordinates the seeds share (only a layer that sees the data itself is)")
            for s, e in entries:
                if e is None:
                    left_out.append(f"seed {s['seed']}: no epoch {epoch}")
                elif s["status"]:
                    left_out.append(f"seed {s['seed']}: {s['status']}")
                elif not reason:
                    if not np.isfinite(e["weights"]).all():
                        left_out.append(f"seed {s['seed']}: non-finite weights")
                    elif not np.isfinite(e["cov_x"]).all():
                        left_out.append(f"seed {s['seed']}: non-finite Σx")
                    else:
                        members.append(e)
                        member_seeds.append(s)
            if not reason and not members:
                reason = "no seed left to pool" + (f" ({'; '.join(left_out)})" if left_out else "")
            for of in (OF_WEIGHTS, OF_CHANGE) if epoch > 0 else (OF_WEIGHTS,):
                filters, data, random, why = 0, np.nan, np.nan, reason
                initial = None
                if of == OF_CHANGE:
                    initial = [s["layers"].get((0, layer)) for s in member_seeds]
                    if not why and any(start is None or "weights" not in start for start in initial):
                        why = f"no epoch 0 of layer {layer} to subtract"
                if not why:
                    data, random, filters, why = _pooled_layer(members, initial)
                for basis, value in (("data", data), ("random", random)):
                    rows.append({
                        "experiment": experiment, "labels": labels, "init_scale": init_scale, "epoch": epoch,
                        "layer": layer, "of": of, "basis": basis, "misalignment": float(value),
                        "seeds": len(members), "filters": int(filters), "left_out": "; ".join(left_out),
                        "reason": why,
                    })
    return pd.DataFrame(rows, columns=POOLED_COLUMNS)


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
    """All arrays and attributes of one layer at one epoch, and under ``run`` the run's
    experiment, labels, init_scale, seed and whether it diverged."""
    with _open(path) as f:
        key = f"epoch_{epoch:04d}"
        if key not in f or layer not in f[key]:
            raise InputFileError(path, f"no statistics for layer {layer!r} at epoch {epoch}")
        sub = f[key][layer]
        data = {name: sub[name][()] for name in ARRAYS}
        data.update({k: sub.attrs[k] for k in sub.attrs})
        data["run"] = _run_columns(f)
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
