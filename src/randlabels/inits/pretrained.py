"""Weight transfer from a pre-trained network into a fresh one (the checkpoint and
initialization files it starts from are :mod:`randlabels.training.checkpoints`').

:func:`transferred_state` carries every pre-trained weight tensor (rescaled to the ℓ2
norm it had at initialization, or not), :func:`partial_state` only some layer groups
(:func:`layer_groups`); which variant uses which is randlabels.inits.variants' to say.
Biases and batch-norm tensors are kept as trained, since a zero initial norm cannot be
rescaled to. The classifier is re-initialized by default: the downstream labels have
no relation to the upstream (random) ones, and their number may differ.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from randlabels.errors import InputFileError
from randlabels.models.networks import build_model, head_prefix, initialize, weight_layers
from randlabels.seeding import stream_seed


def fresh_model(
    spec: dict, input_shape, num_classes: int, init_scale: float, seed: int, where: str = "model"
) -> nn.Module:
    """A model with its He × init_scale initialization for ``seed``.

    The model is built with torch's global generator seeded from ``seed`` (and restored
    afterwards), so parameters the He rule does not cover (an own model's, see
    :func:`~randlabels.models.networks.uncovered_parameters`) are deterministic per seed too.
    ``where`` names the spec's config key in a build error.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, "model-factory"))
        model = build_model(spec, input_shape, num_classes, where)
    return initialize(model, init_scale, seed)


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of a model's state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def transferred_state(
    init_state: dict,
    trained_state: dict,
    fresh_state: dict,
    head: str,
    rescale: bool,
    reset_head: bool = True,
) -> dict[str, torch.Tensor]:
    """Pre-trained state for downstream use (see module docstring)."""
    state = {}
    for key, trained in trained_state.items():
        if reset_head and _in_head(key, head):
            state[key] = fresh_state[key].clone()
        else:
            state[key] = _carried(key, init_state, trained, rescale)
    return state


def _in_head(key: str, head: str) -> bool:
    return key == head or key.startswith(head + ".")


def _carried(key: str, init_state: dict, trained: torch.Tensor, rescale: bool) -> torch.Tensor:
    """A pre-trained tensor as carried downstream: weight tensors (floating, dim > 1)
    rescaled to their initial ℓ2 norm if ``rescale``, everything else copied."""
    if rescale and trained.is_floating_point() and trained.dim() > 1:
        trained_norm = trained.double().norm()
        if trained_norm == 0:
            raise ValueError(f"cannot rescale {key}: its pre-trained norm is 0")
        return (trained.double() * (init_state[key].double().norm() / trained_norm)).to(trained.dtype)
    return trained.clone()


# --------------------------------------------------------------------------- partial transfer


def layer_groups(model: nn.Module) -> list[list[str]]:
    """The model's non-head weight layers in forward order, each as its state-dict keys.

    One group per conv/linear module of :func:`~randlabels.models.networks.weight_layers` (the
    head, the last one, excluded), in that order: the module's weight and bias, plus
    the parameters and buffers (running mean/var, batch counter) of a BatchNorm that
    directly follows it, i.e. the next module with state in registration order, with
    as many features as the layer has outputs. For the architectures here:

    - cnn2, fc: one group per conv/linear layer (no batch norm);
    - vgg16_bn: ``features.i`` with ``features.i+1`` (its BatchNorm);
    - resnet18: the stem ``conv1`` with ``bn1``; in every block ``conv1`` with ``bn1``
      and ``conv2`` with ``bn2`` as two layers; a projection shortcut
      (``downsample.0`` conv with ``downsample.1`` BatchNorm) is a layer of its own,
      placed after its block's conv2 (registration order; it runs in parallel with
      the block's convs). So "first1" is the stem, and layer4 ends with
      ``layer4.1.conv2``.

    A state key that is neither in a group nor in the head raises ValueError (it would
    otherwise be silently left out of partial transfers).
    """
    head = head_prefix(model)
    layer_names = set(weight_layers(model)) - {head}
    state_keys = list(model.state_dict().keys())
    key_set = set(state_keys)
    groups: list[list[str]] = []
    open_layer: nn.Module | None = None  # the last layer, while a BatchNorm may follow it
    for name, module in model.named_modules():
        own = [f"{name}.{k}" if name else k for k, _ in module.named_parameters(recurse=False)]
        own += [f"{name}.{k}" if name else k for k, _ in module.named_buffers(recurse=False)]
        own = [k for k in own if k in key_set]  # persistent buffers only
        if name in layer_names:
            groups.append(own)
            open_layer = module
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and open_layer is not None and (
            module.num_features == _out_features(open_layer)
        ):
            groups[-1].extend(own)
            open_layer = None
        elif own:
            open_layer = None
    grouped = {k for group in groups for k in group}
    orphans = [k for k in state_keys if k not in grouped and not _in_head(k, head)]
    if orphans:
        raise ValueError(
            f"state keys belong to no layer group (not a conv/linear layer or a batch norm "
            f"directly after one): {', '.join(orphans)}; partial transfer (firstK/lastK) "
            "needs every parameter and buffer below the classifier to belong to one"
        )
    return groups


def _out_features(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def partial_state(
    init_state: dict,
    trained_state: dict,
    fresh_state: dict,
    groups: list[list[str]],
    rescale: bool = True,
    head: str | None = None,
) -> dict[str, torch.Tensor]:
    """The fresh state with the keys of ``groups`` taken from the pre-trained state.

    Those keys are carried as in "pretrained" (weight tensors rescaled to their initial
    norm if ``rescale``, biases and batch-norm tensors copied); every other key, the
    head included, is a copy of the fresh state. Groups come from :func:`layer_groups`
    and never contain the head; given ``head`` (its prefix), that is checked.
    """
    wanted = [k for group in groups for k in group]
    if len(set(wanted)) != len(wanted):
        raise ValueError("layer groups overlap: a state key appears twice")
    missing = [k for k in wanted if k not in fresh_state or k not in trained_state or k not in init_state]
    if missing:
        raise ValueError(f"layer-group keys missing from the states: {', '.join(missing)}")
    if head is not None:
        in_head = [k for k in wanted if _in_head(k, head)]
        if in_head:
            raise ValueError(f"the head is always fresh, but groups contain {', '.join(in_head)}")
    state = {key: value.clone() for key, value in fresh_state.items()}
    for key in wanted:
        state[key] = _carried(key, init_state, trained_state[key], rescale)
    return state


def load_into(model: nn.Module, state: dict, source: str | os.PathLike) -> nn.Module:
    """Load ``state`` into ``model``; a shape or key mismatch names the file it came from."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise InputFileError(source, f"checkpoint does not fit the configured model: {err}") from err
    return model


__all__ = [
    "clone_state",
    "fresh_model",
    "head_prefix",
    "layer_groups",
    "load_into",
    "partial_state",
    "transferred_state",
]
