"""The networks of the paper, built from one plain-dict spec, and their initialization.

A model spec is a dict such as ``{"arch": "cnn2", "filters": 256, "kernel_size": 3,
"hidden": 64}``; :func:`build_model` adds the input shape and the number of classes.
The spec travels inside every checkpoint so that any checkpoint can be rebuilt alone.

Initialization (PAPER.md): every conv/linear weight is drawn from He (Kaiming normal,
fan-in, ReLU gain) and multiplied by ``init_scale``; biases are zero; batch-norm layers
start at weight 1, bias 0.

Every architecture takes ``upper_width`` (default 1.0), a multiplier of the widths of
its upper layers (the paper's remedy for specialization in later layers, §3):

- cnn2: the hidden fully connected layer (``hidden``);
- fc: every hidden width after the first;
- vgg16 / vgg16_bn: the channels of the last two blocks (the 512-channel ones, six conv
  layers); the layer count is kept and the classifier's input follows;
- resnet18: the channels of layer3 and layer4 (shortcuts and the classifier follow).

Widths are ``max(1, floor(width · upper_width + 0.5))`` (round half up). The multiplier
must be a finite number > 0: values < 1 narrow the upper layers, which is the natural
control for the widening experiment. With 1.0 (the default) every model is exactly the
model built without the option: same modules, names, shapes and initial weights.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

ARCHITECTURES = ("cnn2", "fc", "vgg16", "vgg16_bn", "resnet18")

_DEFAULTS = {
    "cnn2": {"filters": 256, "kernel_size": 3, "hidden": 64, "pool": 1, "upper_width": 1.0},
    "fc": {"widths": [2048, 256], "upper_width": 1.0},
    "vgg16": {"upper_width": 1.0},
    "vgg16_bn": {"upper_width": 1.0},
    "resnet18": {"upper_width": 1.0},
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
    _check_upper_width(options["upper_width"])
    return {"arch": arch, **options}


def _check_upper_width(value) -> None:
    """``upper_width`` must be a finite number > 0 (see the module docstring)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"model option upper_width must be a finite number > 0 (1.0 = the standard "
            f"widths, 2.0 = upper layers twice as wide), got {value!r}"
        )


def _widened(width: int, upper_width: float) -> int:
    """``width`` × ``upper_width``, rounded half up, at least 1 (exactly ``width`` at 1.0)."""
    return max(1, math.floor(int(width) * float(upper_width) + 0.5))


def build_model(
    spec: dict, input_shape: Sequence[int], num_classes: int
) -> nn.Module:
    """Build an (uninitialized) model for inputs of ``input_shape`` = (C, H, W) or (D,)."""
    opts = model_options(spec)
    arch = opts["arch"]
    shape = tuple(int(s) for s in input_shape)
    upper = float(opts["upper_width"])
    if arch == "fc":
        widths = [int(w) for w in opts["widths"]]
        widths = widths[:1] + [_widened(w, upper) for w in widths[1:]]
        return _fully_connected(shape, widths, num_classes)
    if len(shape) != 3:
        raise ValueError(
            f"arch {arch!r} needs image inputs (C, H, W), got shape {shape}; "
            "use arch 'fc' for vector data"
        )
    if arch == "cnn2":
        return _two_layer_cnn(shape, opts, num_classes)
    if arch in ("vgg16", "vgg16_bn"):
        return _vgg16_cifar(shape, num_classes, batch_norm=arch == "vgg16_bn", upper_width=upper)
    return _resnet18_cifar(shape, num_classes, upper_width=upper)


def _two_layer_cnn(shape: tuple, opts: dict, num_classes: int) -> nn.Sequential:
    """Conv (k×k, F filters, 'same' padding) → ReLU → [max-pool] → FC hidden → ReLU → classifier."""
    channels, height, width = shape
    k, filters, pool = int(opts["kernel_size"]), int(opts["filters"]), int(opts["pool"])
    hidden = _widened(int(opts["hidden"]), float(opts.get("upper_width", 1.0)))
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
    layers["fc1"] = nn.Linear(filters * height * width, hidden)
    layers["relu2"] = nn.ReLU()
    layers["classifier"] = nn.Linear(hidden, num_classes)
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


def _vgg16_cifar(shape: tuple, num_classes: int, batch_norm: bool, upper_width: float = 1.0) -> nn.Module:
    """torchvision's VGG16, CIFAR variant: no average pool, one classifier layer.

    ``upper_width`` ≠ 1 rebuilds the feature extractor with the last two blocks' 512
    channels widened (torchvision's own ``make_layers``, so module names are unchanged).
    """
    from torchvision.models import vgg16, vgg16_bn
    from torchvision.models.vgg import cfgs, make_layers

    channels, height, width = shape
    if height % 32 or width % 32:
        raise ValueError(
            f"vgg16 halves the image five times and needs a side divisible by 32, "
            f"got {height}×{width}"
        )
    model = (vgg16_bn if batch_norm else vgg16)(weights=None, num_classes=num_classes)
    top = 512
    if upper_width != 1.0:
        # cfg "D": 2×64, M, 2×128, M, 3×256, M, 3×512, M, 3×512, M; the last two
        # blocks are the entries after the third max-pool.
        cfg = list(cfgs["D"])
        third_pool = [i for i, v in enumerate(cfg) if v == "M"][2]
        top = _widened(512, upper_width)
        cfg = cfg[: third_pool + 1] + [top if v == 512 else v for v in cfg[third_pool + 1 :]]
        model.features = make_layers(cfg, batch_norm=batch_norm)
    if channels != 3:
        model.features[0] = nn.Conv2d(channels, 64, kernel_size=3, padding=1)
    model.avgpool = nn.Identity()
    feature_dim = top * (height // 32) * (width // 32)
    model.classifier = nn.Linear(feature_dim, num_classes)
    return model


class _BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock, with its second ReLU as its own module ``relu2``.

    torchvision's block calls one ``self.relu`` twice (after bn1, and after the residual
    sum), so a forward hook on it (activation statistics) would mix the two activations
    under one name. Here ``relu`` follows bn1 and ``relu2`` the residual sum. The other
    modules are created in torchvision's order with torchvision's arguments and ReLU
    has no state, so state dicts, initialization and outputs are exactly torchvision's
    (tests/test_models.py checks this against ``torchvision.models.resnet18``).
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1,
                 base_width=64, dilation=1, norm_layer=None) -> None:
        super().__init__()
        if groups != 1 or base_width != 64 or dilation != 1:
            raise ValueError("_BasicBlock supports only groups=1, base_width=64, dilation=1")
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu2(out)


def _resnet18_cifar(shape: tuple, num_classes: int, upper_width: float = 1.0) -> nn.Module:
    """torchvision's ResNet18, CIFAR variant: 3×3 stride-1 stem, no max-pool.

    The blocks are :class:`_BasicBlock` (one ReLU module per activation).
    ``upper_width`` ≠ 1 rebuilds layer3 and layer4 with 256·w and 512·w channels.
    """
    from torchvision.models.resnet import ResNet

    block = _BasicBlock
    # what torchvision.models.resnet18(weights=None, num_classes=...) builds, with our block
    model = ResNet(block, [2, 2, 2, 2], num_classes=num_classes)
    model.conv1 = nn.Conv2d(shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    if upper_width != 1.0:
        model.inplanes = 128  # layer2's output channels
        model.layer3 = model._make_layer(block, _widened(256, upper_width), 2, stride=2)
        model.layer4 = model._make_layer(block, _widened(512, upper_width), 2, stride=2)
        model.fc = nn.Linear(model.inplanes, num_classes)
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
