"""Measurements of a live model on data: layer-input covariance and ReLU activity.

Forward hooks capture what a layer receives, so Σx is computed from the inputs exactly
as that layer sees them (after the layers below, with its own padding and stride).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from .stats import StreamingCovariance


def _layer_samples(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The vectors one unit's weights multiply: patches for a conv, rows for a linear."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError("grouped convolutions are not supported for Σx")
        patches = F.unfold(
            inputs, module.kernel_size, dilation=module.dilation,
            padding=module.padding, stride=module.stride,
        )  # (B, C·kh·kw, L), flattened in the weight's (C_in, kh, kw) order
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    if isinstance(module, nn.Linear):
        return inputs.reshape(-1, inputs.shape[-1])
    raise ValueError(f"Σx is defined for Conv2d and Linear layers, not {type(module).__name__}")


@torch.no_grad()
def layer_input_covariance(
    model: nn.Module, layer: str, batches: Iterable[torch.Tensor]
) -> StreamingCovariance:
    """Streaming covariance of the input vectors of ``layer`` over ``batches``."""
    module = dict(model.named_modules())[layer]
    dim = module.weight[0].numel()
    accumulator = StreamingCovariance(dim)

    def hook(_module, args):
        accumulator.update(_layer_samples(module, args[0].float()))

    handle = module.register_forward_pre_hook(hook)
    was_training = model.training
    model.eval()
    try:
        for inputs in batches:
            model(inputs)
    finally:
        handle.remove()
        model.train(was_training)
    return accumulator


@torch.no_grad()
def activation_statistics(model: nn.Module, batches: Iterable[torch.Tensor]) -> pd.DataFrame:
    """Per ReLU module: mean fraction of active units, fraction never active, mean activation.

    A unit is one channel of a conv feature map or one feature of a linear layer;
    "active" counts positive values over samples (and positions), "never active" is
    a unit that is positive nowhere on the data.
    """
    relus = {name: m for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
    sums: dict[str, dict] = {}

    def make_hook(name):
        def hook(_module, _args, output):
            out = output.float()
            units = out.transpose(0, 1).reshape(out.shape[1], -1) if out.dim() > 2 else out.T
            active = units > 0
            entry = sums.setdefault(name, {"active": 0.0, "values": 0.0, "count": 0, "ever": torch.zeros(units.shape[0], dtype=torch.bool, device=out.device)})
            entry["active"] += active.sum().item()
            entry["values"] += out.sum().item()
            entry["count"] += active.numel()
            entry["ever"] |= active.any(dim=1)
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in relus.items()]
    was_training = model.training
    model.eval()
    try:
        for inputs in batches:
            model(inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    rows = [
        {
            "module": name,
            "frac_active": e["active"] / e["count"],
            "frac_dead": 1.0 - e["ever"].float().mean().item(),
            "mean_activation": e["values"] / e["count"],
        }
        for name, e in sums.items()
    ]
    return pd.DataFrame(rows, columns=["module", "frac_active", "frac_dead", "mean_activation"])
