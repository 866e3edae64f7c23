"""Statistics of one checkpoint set: per epoch and per layer, Σx, Σw, misalignment, f(σ).

This is the glue between a model, its checkpoints and the pure numerics of
:mod:`randlabels.analysis.stats`; the HDF5 layout lives in :mod:`randlabels.analysis.statsfile`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from randlabels.analysis.probes import activation_statistics, layer_input_covariance
from randlabels.errors import ResourceError
from randlabels.models.networks import resolve_layer, weight_layers
from randlabels.seeding import stream_seed
from randlabels.analysis.stats import (
    UndefinedStatistic,
    eigh_descending,
    misalignment,
    random_orthonormal_basis,
    transfer_function,
    weight_statistics,
    weight_vectors,
)


@dataclass
class LayerRecord:
    """Everything measured for one layer at one checkpoint (arrays are float64)."""

    layer: str
    weight_shape: tuple[int, ...]
    weights: np.ndarray  # (units, d)
    cov_x: np.ndarray
    mean_x: np.ndarray
    eigval_x: np.ndarray
    eigvec_x: np.ndarray
    mean_w: np.ndarray
    cov_w: np.ndarray
    eigval_w: np.ndarray
    eigvec_w: np.ndarray
    sigma: np.ndarray
    f: np.ndarray
    misalignment_data: float
    misalignment_random: float
    undefined_reason: str = ""
    # What pooling over seeds needs (statsfile.pooled_misalignment_table): whether the
    # layer's inputs are the data themselves, in the same coordinates in every seed (the
    # first layer), and the seed of the random basis the control above used.
    shared_input: bool = False
    random_basis_seed: int | None = None


@dataclass
class CheckpointRecord:
    epoch: int
    layers: list[LayerRecord] = field(default_factory=list)
    activations: pd.DataFrame | None = None


def measure_layer(
    cov_x: np.ndarray, mean_x: np.ndarray, weight: torch.Tensor, layer: str, basis: np.ndarray,
    *, shared_input: bool = False, random_basis_seed: int | None = None,
) -> LayerRecord:
    """Weight statistics of ``weight`` against the data covariance ``cov_x``.

    ``shared_input`` and ``random_basis_seed`` are only recorded (see :class:`LayerRecord`).
    """
    mean_w, cov_w = weight_statistics(weight)
    eig_x = eigh_descending(cov_x)
    eig_w = eigh_descending(cov_w)
    (eigval_x, eigvec_x), (eigval_w, eigvec_w) = eig_x, eig_w
    sigma, f = transfer_function(cov_x, cov_w, eig_x=eig_x, eig_w=eig_w)
    reason = ""
    try:
        m_data = misalignment(cov_x, cov_w, eig_x=eig_x, eig_w=eig_w)
        m_random = misalignment(cov_x, cov_w, basis=basis, eig_w=eig_w)
    except UndefinedStatistic as err:
        m_data = m_random = math.nan
        reason = err.reason
    return LayerRecord(
        layer=layer,
        weight_shape=tuple(weight.shape),
        weights=weight_vectors(weight),
        cov_x=cov_x,
        mean_x=mean_x,
        eigval_x=eigval_x,
        eigvec_x=eigvec_x,
        mean_w=mean_w,
        cov_w=cov_w,
        eigval_w=eigval_w,
        eigvec_w=eigvec_w,
        sigma=sigma,
        f=f,
        misalignment_data=m_data,
        misalignment_random=m_random,
        undefined_reason=reason,
        shared_input=bool(shared_input),
        random_basis_seed=None if random_basis_seed is None else int(random_basis_seed),
    )


def _sees_raw_inputs(model: nn.Module, first: str) -> bool:
    """Whether nothing with state can act before layer ``first``: no parameter or
    buffer on a module registered before it (its ancestors, the model itself, earlier
    siblings). True for the built-in networks; an own model with, e.g., a learned input
    scale or an input batch norm has its first layer's Σx measured at every checkpoint.
    """
    for name, module in model.named_modules():
        if name == first:
            return True
        if next(module.parameters(recurse=False), None) is not None or next(module.buffers(recurse=False), None) is not None:
            return False
    return True


# The d×d float64 matrices one layer's measurement holds at once (Σx's running scatter
# and its copy, Σx's eigenvectors, Σw, the random basis, eigh's workspace), for
# :func:`check_layer_sizes`.
MATRICES_PER_LAYER = 6


def layer_memory_bytes(dim: int) -> int:
    """About the most memory measuring a layer of input dimension ``dim`` takes."""
    return MATRICES_PER_LAYER * dim * dim * 8


def check_layer_sizes(model: nn.Module, names: Iterable[str], memory_mb: float | None, where: str) -> None:
    """Refuse, before any data pass, a layer whose d×d statistics cannot fit in the
    job's memory (``memory_mb``; None: no limit), naming the config key ``where``.

    A linear layer after a large feature map has a huge input dimension (the 2-layer
    CNN's hidden layer after 256 filters on 32×32 images: d = 262 144, so Σx alone
    is 512 GiB); without this check the job dies in the allocator after the training.
    """
    if memory_mb is None:
        return
    modules = dict(model.named_modules())
    for name in names:
        dim = modules[name].weight[0].numel()
        needed = layer_memory_bytes(dim)
        if needed > memory_mb * 2**20:
            raise ResourceError(
                f"{where}: layer {name} has {dim} input dimensions, so its statistics "
                f"(Σx, Σw and their eigenvectors, d×d float64 each) need about "
                f"{needed / 2**30:.3g} GiB, more than this job's {memory_mb / 1024:.3g} GiB "
                "(resources.light.mem_mb). Leave the layer out of stats.layers, or raise the "
                "memory if the layer is worth it."
            )


def measure_checkpoints(
    model: nn.Module,
    states: dict[int, dict],
    layers: Iterable[str],
    batches: Callable[[], Iterable[torch.Tensor]],
    seed: int,
    load: Callable[[nn.Module, dict], None],
    log: logging.Logger | None = None,
    memory_mb: float | None = None,
    where: str = "stats.layers",
) -> list[CheckpointRecord]:
    """Measure every checkpoint in ``states`` (epoch → state dict).

    Layers too large for ``memory_mb`` are refused first (:func:`check_layer_sizes`,
    whose message names the config key ``where``).

    ``batches()`` yields the normalized upstream inputs afresh for each pass. The
    first layer's Σx does not depend on the weights and is computed once (unless
    parameters or buffers come before it, see :func:`_sees_raw_inputs`); deeper
    layers see the data through the checkpoint's own lower layers.
    """
    log = log or logging.getLogger("randlabels")
    names = [resolve_layer(model, layer) for layer in layers]
    check_layer_sizes(model, names, memory_mb, where)
    first = weight_layers(model)[0]
    if not _sees_raw_inputs(model, first):
        first = None  # an own model with parameters before its first layer: measure it afresh
    cached: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    bases: dict[str, tuple[int, np.ndarray]] = {}  # one random basis per layer, for every checkpoint
    records = []
    for epoch in sorted(states):
        load(model, states[epoch])
        record = CheckpointRecord(epoch=epoch)
        for name in names:
            if name in cached:
                cov_x, mean_x = cached[name]
            else:
                accumulator = layer_input_covariance(model, name, batches())
                cov_x, mean_x = accumulator.covariance(), accumulator.mean
                if name == first:
                    cached[name] = (cov_x, mean_x)
            weight = dict(model.named_modules())[name].weight.detach().cpu()
            if name not in bases:
                basis_seed = stream_seed(seed, "random-basis", name)
                bases[name] = basis_seed, random_orthonormal_basis(weight[0].numel(), basis_seed)
            basis_seed, basis = bases[name]
            # Only the first layer (nothing with state before it) sees the data in the
            # same coordinates in every seed: its filters can be pooled over seeds.
            layer_record = measure_layer(cov_x, mean_x, weight, name, basis,
                                         shared_input=name == first, random_basis_seed=basis_seed)
            record.layers.append(layer_record)
            log.info(
                "epoch %d  layer %s  misalignment %.4g (random basis %.4g)%s",
                epoch, name, layer_record.misalignment_data, layer_record.misalignment_random,
                f"  undefined: {layer_record.undefined_reason}" if layer_record.undefined_reason else "",
            )
        record.activations = activation_statistics(model, batches())
        records.append(record)
    return records
