"""What a model spec names, without torch: the built-in architectures, their options
and defaults, the name of an own factory, and the weight layers of each built-in
network. The config check runs at every Snakemake start and asks only this module, so
that a dry run does not import torch (about 2 s); randlabels.models.networks builds the networks.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Sequence

ARCHITECTURES = ("cnn2", "fc", "vgg16", "vgg16_bn", "resnet18")

# ``arch`` naming the user's own factory: "package.module:function". The schema's
# pattern for model.arch is the same (workflow/schemas/config.schema.yaml).
FACTORY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
# Arguments the workflow gives a factory; a spec may not set them as options.
FACTORY_ARGUMENTS = ("input_shape", "num_classes")
# Initialization conventions of the conv/linear weights (option ``init``, default "he";
# randlabels.models.networks.initialize): He normal (fan-in, ReLU gain, std √2/√fan_in) and
# LeCun normal (std 1/√fan_in); either multiplied by the run's init_scale. Every spec
# takes it, an own model's too (the workflow's key, not passed to the factory).
INIT_CONVENTIONS = ("he", "lecun")
DEFAULT_INIT = "he"
# Built-in networks whose every hidden conv layer is followed by batch norm: multiplying
# those weights by init_scale leaves the features they compute unchanged in training
# (batch norm divides the scale out), so init_scale acts only through the classifier and
# the effective learning rate. tests/test_models.py measures this table. An init-scale
# experiment on one of them is an ablation (the config check warns). Each with its
# plain counterpart, where there is one.
SCALE_INVARIANT = {"vgg16_bn": "vgg16", "resnet18": None}
_DEFAULTS = {
    "cnn2": {"filters": 256, "kernel_size": 3, "hidden": 64, "pool": 1, "upper_width": 1.0, "init": DEFAULT_INIT},
    "fc": {"widths": [2048, 256], "upper_width": 1.0, "init": DEFAULT_INIT},
    "vgg16": {"upper_width": 1.0, "init": DEFAULT_INIT},
    "vgg16_bn": {"upper_width": 1.0, "init": DEFAULT_INIT},
    "resnet18": {"upper_width": 1.0, "init": DEFAULT_INIT},
}


def is_factory(arch) -> bool:
    """Whether ``arch`` names the user's own factory, ``"package.module:function"``."""
    return isinstance(arch, str) and FACTORY_PATTERN.fullmatch(arch) is not None


def model_options(spec: dict) -> dict:
    """The spec with the architecture's defaults filled in; unknown names are refused.

    A factory's spec is returned as it is (its options are the factory's to check),
    except that it may not set the factory's own arguments (``FACTORY_ARGUMENTS``);
    its ``init``, if given, is checked like a built-in network's.
    """
    arch = spec.get("arch")
    if is_factory(arch):
        given = [name for name in FACTORY_ARGUMENTS if name in spec]
        if given:
            raise ValueError(
                f"model option(s) {given} are the factory's arguments, set by the workflow "
                "(the dataset's input shape, the number of classes); remove them from the config"
            )
        if "init" in spec:
            check_init(spec["init"])
        return dict(spec)
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {arch!r}; valid names: {', '.join(ARCHITECTURES)}, "
            "or your own factory as 'package.module:function'"
        )
    options = {**_DEFAULTS[arch], **{k: v for k, v in spec.items() if k != "arch"}}
    unknown = set(options) - set(_DEFAULTS[arch])
    if unknown:
        raise ValueError(
            f"model option(s) {sorted(unknown)} do not apply to arch {arch!r}; "
            f"it takes {sorted(_DEFAULTS[arch]) or 'no options'}"
        )
    check_upper_width(options["upper_width"])
    check_init(options["init"])
    return {"arch": arch, **options}


def init_convention(spec: dict) -> str:
    """The initialization convention a spec names (``init``; default "he"), checked."""
    value = spec.get("init", DEFAULT_INIT)
    check_init(value)
    return value


def check_init(value) -> None:
    """``init`` must name one of ``INIT_CONVENTIONS``."""
    if value not in INIT_CONVENTIONS:
        raise ValueError(
            f"model option init must be one of {', '.join(INIT_CONVENTIONS)} (he: std √2/√fan_in, "
            f"lecun: std 1/√fan_in, either × init_scale), got {value!r}"
        )


def check_upper_width(value) -> None:
    """``upper_width`` must be a finite number > 0 (see the module docstring)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"model option upper_width must be a finite number > 0 (1.0 = the standard "
            f"widths, 2.0 = upper layers twice as wide), got {value!r}"
        )


def resolve_layer_name(layers: Sequence[str], name: str) -> str:
    """:func:`resolve_layer` on a model's :func:`weight_layers` (the config check
    knows them for the built-in networks without building one)."""
    if not layers:
        raise ValueError("the model has no conv (Conv2d) or linear layer")
    if name == "first":
        return layers[0]
    if name == "last":
        return layers[-1]
    if name not in layers:
        close = difflib.get_close_matches(str(name), layers, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"no conv/linear layer {name!r}{hint}; the model's layers (module paths, in "
            f"order; or 'first' / 'last'): {', '.join(layers)}"
        )
    return name


# The layout of torchvision's VGG16 feature extractor (cfg "D"): channels of each 3×3
# conv, "M" for a max-pool. A conv is followed by a ReLU (vgg16) or a BatchNorm and a
# ReLU (vgg16_bn), which is what numbers the modules of ``features``.
_VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def builtin_layers(spec: dict) -> list[str]:
    """The weight layers (:func:`randlabels.models.networks.weight_layers`) a built-in network
    has, from its spec alone: without building it, so without torchvision's import
    (seconds per Snakefile parse) and without the input shape, which names no layer.
    tests/test_config.py checks them against the built networks."""
    options = model_options(spec)
    arch = options["arch"]
    if arch == "cnn2":
        return ["conv1", "fc1", "classifier"]
    if arch == "fc":
        return [f"fc{i}" for i in range(1, len(options["widths"]) + 1)] + ["classifier"]
    if arch in ("vgg16", "vgg16_bn"):
        per_conv = 3 if arch == "vgg16_bn" else 2
        layers, index = [], 0
        for entry in _VGG16_CONFIG:
            if entry != "M":
                layers.append(f"features.{index}")
            index += 1 if entry == "M" else per_conv
        return layers + ["classifier"]
    if arch == "resnet18":
        layers = ["conv1"]
        for stage in range(1, 5):
            for block in range(2):
                layers += [f"layer{stage}.{block}.conv1", f"layer{stage}.{block}.conv2"]
                if stage > 1 and block == 0:  # stride 2: a projection shortcut
                    layers.append(f"layer{stage}.{block}.downsample.0")
        return layers + ["fc"]
    raise ValueError(f"not a built-in architecture: {arch!r}")


def scale_invariance(spec: dict) -> str | None:
    """Why ``init_scale`` does not change what ``spec``'s hidden layers compute (None
    where it does): the note the config check and the figures give."""
    arch = spec.get("arch")
    if arch not in SCALE_INVARIANT:
        return None
    return (
        f"{arch} has batch norm after every hidden conv layer, which divides init_scale out: "
        "the scale acts only through the classifier and the effective learning rate"
    )
