"""Measurements of a live model on data: layer-input covariance and ReLU activity.

Forward hooks capture what a layer receives, so Σx is computed from the inputs exactly
as that layer sees them (after the layers below, with its own padding and stride).
ReLU activity is hooked on ``nn.ReLU`` modules: a functional ``F.relu`` in a forward
is invisible to it, and a ReLU module applied twice would mix two activations under
one name (which is why models/networks.py gives each ResNet block two ReLU modules).
"""

from __future__ import annotations

from typing import Callable, Iterable

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from randlabels.analysis.covariance import StreamingCovariance


def _explicit_padding(module: nn.Conv2d, inputs: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The conv's input padded as the layer pads it, and the padding left to unfold.

    Numeric zero padding is left to unfold (as before); padding "same"/"valid" and a
    padding_mode other than zeros (reflect, replicate, circular) are applied here,
    exactly as ``nn.Conv2d`` does ("same": the odd extra row/column at the end).
    """
    if not isinstance(module.padding, str) and module.padding_mode == "zeros":
        return inputs, module.padding
    if module.padding == "valid":
        pads = [0, 0, 0, 0]
    elif module.padding == "same":
        pads = []
        for d, k in zip(reversed(module.dilation), reversed(module.kernel_size)):  # F.pad: last dim first
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
    else:
        (ph, pw) = module.padding
        pads = [pw, pw, ph, ph]
    if any(pads):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        inputs = F.pad(inputs, pads, mode=mode)
    return inputs, (0, 0)


def _layer_samples(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The vectors one unit's weights multiply: patches for a conv, rows for a linear."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError(
                f"grouped convolutions (groups = {module.groups}) are not supported for Σx: "
                "a unit's weights see only its group's channels"
            )
        inputs, padding = _explicit_padding(module, inputs)
        patches = F.unfold(
            inputs, module.kernel_size, dilation=module.dilation,
            padding=padding, stride=module.stride,
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

    Only ``nn.ReLU`` modules are seen (not ``F.relu`` calls). A ReLU module applied
    more than once in one forward pass (a shared module) raises ValueError: its rows
    would mix different activations.
    """
    relus = {name: m for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
    sums: dict[str, dict] = {}
    calls: dict[str, int] = {}

    def make_hook(name):
        def hook(_module, _args, output):
            out = output.float()
            units = out.transpose(0, 1).reshape(out.shape[1], -1) if out.dim() > 2 else out.T
            active = units > 0
            calls[name] = calls.get(name, 0) + 1
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
            calls.clear()
            model(inputs)
            reused = sorted(name for name, n in calls.items() if n > 1)
            if reused:
                raise ValueError(
                    f"ReLU module(s) {', '.join(reused)} ran more than once in one forward "
                    "pass; their activation statistics would mix different activations "
                    "(give each activation its own nn.ReLU)"
                )
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


ACTIVATION_STATISTICS = ("frac_active", "frac_dead", "mean_activation")


def activation_probe(batches_fn: Callable[[], Iterable[torch.Tensor]]) -> Callable[[nn.Module], dict[str, float]]:
    """A learning-curve probe (engine's ``probe``) measuring ReLU activity.

    ``batches_fn()`` yields input batches (already on the model's device), afresh on
    each call. The probe runs :func:`activation_statistics` on them and returns one
    value per column ``"{statistic}:{module}"``, statistic in frac_active, frac_dead,
    mean_activation and module the ReLU module's name. The model's mode is restored.
    """

    def probe(model: nn.Module) -> dict[str, float]:
        table = activation_statistics(model, batches_fn())
        return {
            f"{statistic}:{row['module']}": float(row[statistic])
            for row in table.to_dict("records")
            for statistic in ACTIVATION_STATISTICS
        }

    return probe
