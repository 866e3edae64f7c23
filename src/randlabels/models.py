"""The networks of the paper, built from one plain-dict spec, and their initialization.

A model spec is a dict such as ``{"arch": "cnn2", "filters": 256, "kernel_size": 3,
"hidden": 64}``; :func:`build_model` adds the input shape and the number of classes.
The spec travels inside every checkpoint so that any checkpoint can be rebuilt alone.

Initialization (PAPER.md): every conv/linear weight is drawn from He (Kaiming normal,
fan-in, ReLU gain) and multiplied by ``init_scale``; biases are zero; batch-norm layers
start at weight 1, bias 0.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

ARCHITECTURES = ("cnn2", "fc", "vgg16", "vgg16_bn", "resnet18")

_DEFAULTS = {
    "cnn2": {"filters": 256, "kernel_size": 3, "hidden": 64, "pool": 1},
    "fc": {"widths": [2048, 256]},
    "vgg16": {},
    "vgg16_bn": {},
    "resnet18": {},
}


def model_options(spec: dict) -> dict:
    """The spec with the architecture's defaults filled in; unknown names are refused."""
    arch = spec.get("arch")
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {arch!r}; valid names: {', '.join(ARCHITECTURES)}"
        )
    options = {**_DEFAULTS[arch], **{k: v for k, v in spec.items() if k != "arch"}}
    unknown = set(options) - set(_DEFAULTS[arch])
    if unknown:
        raise ValueError(
            f"model option(s) {sorted(unknown)} do not apply to arch {arch!r}; "
            f"it takes {sorted(_DEFAULTS[arch]) or 'no options'}"
        )
    return {"arch": arch, **options}


def build_model(
    spec: dict, input_shape: Sequence[int], num_classes: int
) -> nn.Module:
    """Build an (uninitialized) model for inputs of ``input_shape`` = (C, H, W) or (D,)."""
    opts = model_options(spec)
    arch = opts["arch"]
    shape = tuple(int(s) for s in input_shape)
    if arch == "fc":
        return _fully_connected(shape, opts["widths"], num_classes)
    if len(shape) != 3:
        raise ValueError(
            f"arch {arch!r} needs image inputs (C, H, W), got shape {shape}; "
            "use arch 'fc' for vector data"
        )
    if arch == "cnn2":
        return _two_layer_cnn(shape, opts, num_classes)
    if arch in ("vgg16", "vgg16_bn"):
        return _vgg16_cifar(shape, num_classes, batch_norm=arch == "vgg16_bn")
    return _resnet18_cifar(shape, num_classes)


def _two_layer_cnn(shape: tuple, opts: dict, num_classes: int) -> nn.Sequential:
    """Conv (k×k, F filters, 'same' padding) → ReLU → [max-pool] → FC hidden → ReLU → classifier."""
    channels, height, width = shape
    k, filters, pool = int(opts["kernel_size"]), int(opts["filters"]), int(opts["pool"])
    if k % 2 == 0:
        raise ValueError(f"cnn2 kernel_size must be odd for 'same' padding, got {k}")
    layers: "OrderedDict[str, nn.Module]" = OrderedDict(
        conv1=nn.Conv2d(channels, filters, k, padding=k // 2),
        relu1=nn.ReLU(),
    )
    if pool > 1:
        layers["pool1"] = nn.MaxPool2d(pool)
        height, width = height // pool, width // pool
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(filters * height * width, int(opts["hidden"]))
    layers["relu2"] = nn.ReLU()
    layers["classifier"] = nn.Linear(int(opts["hidden"]), num_classes)
    return nn.Sequential(layers)


def _fully_connected(shape: tuple, widths: Sequence[int], num_classes: int) -> nn.Sequential:
    """Flatten → (Linear → ReLU) per hidden width → classifier."""
    in_features = 1
    for s in shape:
        in_features *= s
    layers: "OrderedDict[str, nn.Module]" = OrderedDict(flatten=nn.Flatten())
    for i, width in enumerate(widths, start=1):
        layers[f"fc{i}"] = nn.Linear(in_features, int(width))
        layers[f"relu{i}"] = nn.ReLU()
        in_features = int(width)
    layers["classifier"] = nn.Linear(in_features, num_classes)
    return nn.Sequential(layers)


def _vgg16_cifar(shape: tuple, num_classes: int, batch_norm: bool) -> nn.Module:
    """torchvision's VGG16, CIFAR variant: no average pool, one classifier layer."""
    from torchvision.models import vgg16, vgg16_bn

    channels, height, width = shape
    if height % 32 or width % 32:
        raise ValueError(
            f"vgg16 halves the image five times and needs a side divisible by 32, "
            f"got {height}×{width}"
        )
    model = (vgg16_bn if batch_norm else vgg16)(weights=None, num_classes=num_classes)
    if channels != 3:
        model.features[0] = nn.Conv2d(channels, 64, kernel_size=3, padding=1)
    model.avgpool = nn.Identity()
    feature_dim = 512 * (height // 32) * (width // 32)
    model.classifier = nn.Linear(feature_dim, num_classes)
    return model


def _resnet18_cifar(shape: tuple, num_classes: int) -> nn.Module:
    """torchvision's ResNet18, CIFAR variant: 3×3 stride-1 stem, no max-pool."""
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def weight_layers(model: nn.Module) -> list[str]:
    """Names of the conv and linear modules, in the order they were registered."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]


def resolve_layer(model: nn.Module, name: str) -> str:
    """Map 'first' / 'last' to a module name and check that the layer exists."""
    layers = weight_layers(model)
    if name == "first":
        return layers[0]
    if name == "last":
        return layers[-1]
    if name not in layers:
        raise ValueError(f"no conv/linear layer {name!r}; layers: {', '.join(layers)}")
    return name


@torch.no_grad()
def initialize(model: nn.Module, init_scale: float, seed: int) -> nn.Module:
    """He-normal (fan-in, ReLU) × init_scale for every conv/linear weight, zero biases."""
    generator = torch.Generator().manual_seed(int(seed))
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(
                module.weight, mode="fan_in", nonlinearity="relu", generator=generator
            )
            module.weight.mul_(float(init_scale))
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            module.reset_parameters()
    return model


def head_prefix(model: nn.Module) -> str:
    """Name of the classifier layer (the last conv/linear module)."""
    return weight_layers(model)[-1]
