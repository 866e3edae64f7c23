"""Initialization variants for downstream training, built from checkpoints.

- scratch: a fresh He × init_scale initialization;
- pretrained: the pre-trained weights, each weight tensor rescaled to the ℓ2 norm it
  had at initialization (PAPER.md); biases and batch-norm tensors are kept as trained,
  since a zero initial norm cannot be rescaled to;
- pretrained_norescale: the pre-trained weights as they are;
- gaussian: a fresh initialization whose chosen layer is replaced by filters sampled
  from the Gaussian fitted to the pre-trained filters (made by the sampling stage).
The classifier is re-initialized by default: the downstream labels have no relation
to the upstream (random) ones, and their number may differ.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .errors import InputFileError
from .io import load_torch, save_torch
from .models import build_model, head_prefix, initialize

VARIANTS = ("scratch", "pretrained", "pretrained_norescale", "gaussian")
CHECKPOINT_FORMAT = "randlabels-checkpoints/1"
INIT_FORMAT = "randlabels-init/1"


def fresh_model(spec: dict, input_shape, num_classes: int, init_scale: float, seed: int) -> nn.Module:
    """A model with its He × init_scale initialization for ``seed``."""
    return initialize(build_model(spec, input_shape, num_classes), init_scale, seed)


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
        if reset_head and (key == head or key.startswith(head + ".")):
            state[key] = fresh_state[key].clone()
        elif rescale and trained.is_floating_point() and trained.dim() > 1:
            trained_norm = trained.double().norm()
            if trained_norm == 0:
                raise ValueError(f"cannot rescale {key}: its pre-trained norm is 0")
            state[key] = (trained.double() * (init_state[key].double().norm() / trained_norm)).to(trained.dtype)
        else:
            state[key] = trained.clone()
    return state


def load_into(model: nn.Module, state: dict, source: str | os.PathLike) -> nn.Module:
    """Load ``state`` into ``model``; a shape or key mismatch names the file it came from."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise InputFileError(source, f"checkpoint does not fit the configured model: {err}") from err
    return model


def save_checkpoints(path, *, spec, input_shape, num_classes, init_scale, seed, labels, states, diverged) -> None:
    """Write the checkpoint set of one pre-training run (epoch → state dict)."""
    save_torch(
        {
            "format": CHECKPOINT_FORMAT,
            "spec": dict(spec),
            "input_shape": list(input_shape),
            "num_classes": int(num_classes),
            "init_scale": float(init_scale),
            "seed": int(seed),
            "labels": labels,
            "states": {int(e): s for e, s in states.items()},
            "diverged": bool(diverged),
        },
        path,
    )


def read_checkpoints(path) -> dict:
    """Load a checkpoint set, checking that it is one."""
    data = load_torch(path)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise InputFileError(path, f"not a randlabels checkpoint set (format {CHECKPOINT_FORMAT})")
    return data


def save_init(path, *, spec, input_shape, num_classes, state, description: str, source_diverged: bool = False) -> None:
    """Write an initialization checkpoint (consumed by fine-tuning).

    ``source_diverged``: built from a pre-training that diverged (from its last finite
    checkpoint); fine-tuning carries the flag into its table.
    """
    save_torch(
        {
            "format": INIT_FORMAT,
            "spec": dict(spec),
            "input_shape": list(input_shape),
            "num_classes": int(num_classes),
            "state": state,
            "description": description,
            "source_diverged": bool(source_diverged),
        },
        path,
    )


def read_init(path) -> dict:
    """Load an initialization checkpoint, checking that it is one."""
    data = load_torch(path)
    if not isinstance(data, dict) or data.get("format") != INIT_FORMAT:
        raise InputFileError(path, f"not a randlabels initialization (format {INIT_FORMAT})")
    return data


__all__ = [
    "VARIANTS",
    "clone_state",
    "fresh_model",
    "head_prefix",
    "load_into",
    "read_checkpoints",
    "read_init",
    "save_checkpoints",
    "save_init",
    "transferred_state",
]
