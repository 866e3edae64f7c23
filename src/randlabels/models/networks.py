"""The networks of the paper, built from one plain-dict spec, and their initialization.

A model spec is a dict such as ``{"arch": "cnn2", "filters": 256, "kernel_size": 3,
"hidden": 64}``; :func:`build_model` adds the input shape and the number of classes.
The spec travels inside every checkpoint so that any checkpoint can be rebuilt alone.

Initialization (docs/METHODS.md, "Initialization"): every conv/linear weight is drawn from He (Kaiming normal,
fan-in, ReLU gain, std √2/√fan_in) and multiplied by ``init_scale``; biases are zero;
batch-norm layers start at weight 1, bias 0. The spec's ``init: lecun`` draws LeCun
normal (std 1/√fan_in) instead: the same draws divided by √2 (:func:`initialize`).

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

Your own model: ``arch`` may instead name a factory, ``"package.module:function"``
(:func:`is_factory`). It is called as ``function(input_shape, num_classes, **options)``
with ``input_shape`` a tuple, (C, H, W) for images or (D,) for vectors, ``num_classes``
an int and ``options`` every other key of the spec, passed as they are in the config
(lists stay lists), and must return an ``nn.Module`` whose forward maps a batch
(N, *input_shape) to logits (N, num_classes). The module is imported by name:
installed, on ``PYTHONPATH``, or (failing those) found relative to the working
directory, where Snakemake runs every job (:func:`load_factory`). What the workflow
needs of the model, checked when it is built (:func:`build_model`), is what the
paper's methods need of a layer order:

- at least one ``Conv2d`` or ``Linear`` layer (the *weight layers*,
  :func:`weight_layers`), registered in the order ``forward`` calls them, each
  called exactly once per forward (no shared or unused ones), so that "first",
  firstK/lastK and the layer-wise construction follow the data's path;
- the last of them is the classifier, with ``num_classes`` outputs (re-initialized
  for each downstream task);
- no lazy modules (``LazyLinear``...): the factory knows the input shape.

It is initialized like the built-in networks (:func:`initialize`); parameters the
rule does not cover keep the factory's own initialization, drawn under a generator
seeded from the run's seed (:func:`randlabels.inits.pretrained.fresh_model`).
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
import sys
import traceback
from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn

from randlabels.models.architectures import (
    DEFAULT_INIT,
    check_init,
    init_convention,
    is_factory,
    model_options,
    resolve_layer_name,
)
from randlabels.errors import ModelError

# The layers the statistics, the layer order and the classifier are made of.
WEIGHT_LAYER_TYPES = (nn.Conv2d, nn.Linear)
# Layers whose weight the He (or LeCun) × init_scale rule draws (a superset: the other convs).
HE_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# The gain of each initialization convention (torch.nn.init's ``nonlinearity``): He
# multiplies the std 1/√fan_in by √2 (ReLU), LeCun by 1 (linear).
INIT_NONLINEARITY = {"he": "relu", "lecun": "linear"}
# Where build_model leaves the spec's convention on the model, for initialize.
INIT_ATTRIBUTE = "_randlabels_init"
# Normalization layers reset to weight 1, bias 0 (and fresh running statistics).
NORM_LAYER_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)

def _widened(width: int, upper_width: float) -> int:
    """``width`` × ``upper_width``, rounded half up, at least 1 (exactly ``width`` at 1.0)."""
    return max(1, math.floor(int(width) * float(upper_width) + 0.5))


def build_model(
    spec: dict, input_shape: Sequence[int], num_classes: int, where: str = "model"
) -> nn.Module:
    """Build an (uninitialized) model for inputs of ``input_shape`` = (C, H, W) or (D,).

    ``where`` is the spec's config key (``experiments.NAME.model``), named by the
    :class:`~randlabels.errors.ModelError` a factory's model raises when it cannot be
    imported, built or used (see the module docstring).
    """
    shape = tuple(int(s) for s in input_shape)
    if is_factory(spec.get("arch")):
        try:
            init = init_convention(spec)
        except ValueError as err:
            raise ModelError(f"{where}: {err}") from err
        return _with_init(_build_custom(spec, shape, int(num_classes), where), init)
    return _with_init(_build_builtin(spec, shape, num_classes), init_convention(spec))


def _with_init(model: nn.Module, init: str) -> nn.Module:
    """The model, remembering the spec's initialization convention for :func:`initialize`
    (a plain attribute: not a parameter, buffer or state-dict entry)."""
    object.__setattr__(model, INIT_ATTRIBUTE, init)
    return model


def _build_builtin(spec: dict, shape: tuple, num_classes: int) -> nn.Module:
    opts = model_options(spec)
    arch = opts["arch"]
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

    ``upper_width`` ≠ 1 widens the last two blocks' 512 channels. The features are
    torchvision's own ``make_layers`` (so module names are torchvision's); the VGG shell
    is made on the meta device, because its ImageNet classifier (25088 → 4096 → 4096,
    120 M parameters) is replaced at once and would cost seconds to allocate and fill.
    """
    from torchvision.models.vgg import VGG, cfgs, make_layers

    channels, height, width = shape
    if height % 32 or width % 32:
        raise ValueError(
            f"vgg16 halves the image five times and needs a side divisible by 32, "
            f"got {height}×{width}"
        )
    # cfg "D": 2×64, M, 2×128, M, 3×256, M, 3×512, M, 3×512, M; the last two blocks
    # are the entries after the third max-pool.
    cfg = list(cfgs["D"])
    top = 512
    if upper_width != 1.0:
        third_pool = [i for i, v in enumerate(cfg) if v == "M"][2]
        top = _widened(512, upper_width)
        cfg = cfg[: third_pool + 1] + [top if v == 512 else v for v in cfg[third_pool + 1 :]]
    with torch.device("meta"):
        model = VGG(nn.Sequential(), num_classes=num_classes, init_weights=False)
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


# --------------------------------------------------------------------------- your own model


def _import_module(name: str):
    """``importlib.import_module(name)``; if its top-level package is nowhere on
    sys.path, once more with the working directory appended (last, so installed
    packages win), as ``python -c`` would find it."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        top = name.split(".")[0]
        cwd = os.getcwd()
        if err.name != top or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        importlib.invalidate_caches()
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as again:
            if again.name == top:  # not there either: leave sys.path as it was
                sys.path.remove(cwd)
                raise err from None
            raise


def _error_text(err: BaseException) -> str:
    """``Kind: message (at file:line)``: the exception and the innermost line of the
    user's code it came from (not this module's call, not the import machinery)."""
    frames = [
        frame for frame in traceback.extract_tb(err.__traceback__)
        if not frame.filename.startswith("<frozen") and os.path.abspath(frame.filename) != os.path.abspath(__file__)
    ]
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {err}{where}"


def load_factory(arch: str, where: str = "model") -> Callable[..., nn.Module]:
    """The callable that ``arch`` = ``"package.module:function"`` names.

    Raises :class:`~randlabels.errors.ModelError`, naming ``{where}.arch``, if the
    module does not import (with the import's own error), has no such attribute, or
    the attribute is not callable.
    """
    key = f"{where}.arch"
    if not is_factory(arch):
        raise ModelError(f"{key}: {arch!r} is not a factory path 'package.module:function'")
    module_name, function = arch.split(":")
    try:
        module = _import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any error of the user's module is reported
        hint = ""
        if isinstance(err, ModuleNotFoundError):
            hint = (
                "; the module must be importable: installed in this environment, on "
                f"PYTHONPATH, or found from the working directory ({os.getcwd()})"
            )
        raise ModelError(f"{key}: cannot import {module_name!r} for factory {arch!r}: {_error_text(err)}{hint}") from err
    if not hasattr(module, function):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(function, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ModelError(
            f"{key}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no {function!r}{hint}"
        )
    factory = getattr(module, function)
    if not callable(factory):
        raise ModelError(f"{key}: {arch!r} is an object of type {type(factory).__name__!r}, not a callable that returns a model")
    return factory


def factory_file(arch: str) -> str | None:
    """The source file of the module a factory path names (None for a built-in arch
    or a module without a file): what an edit of reruns the model's stages."""
    if not is_factory(arch):
        return None
    module = _import_module(arch.split(":")[0])
    return getattr(module, "__file__", None)


def _build_custom(spec: dict, shape: tuple, num_classes: int, where: str) -> nn.Module:
    """Call the spec's factory and check what it returns (see the module docstring)."""
    arch = spec["arch"]
    try:
        options = model_options(spec)
    except ValueError as err:
        raise ModelError(f"{where}: {err}") from err
    options.pop("arch")
    options.pop("init", None)  # the workflow's initialization convention, not the factory's
    factory = load_factory(arch, where)
    call = f"{arch}({shape}, {num_classes}{''.join(f', {k}={v!r}' for k, v in options.items())})"
    try:
        model = factory(shape, num_classes, **options)
    except Exception as err:  # noqa: BLE001 - the user's code: report, naming the key
        raise ModelError(f"{where}: the factory raised an error: {call}: {_error_text(err)}") from err
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"{where}: the factory returned an object of type {type(model).__name__!r}, not a torch.nn.Module: {call}"
        )
    _check_custom_model(model, shape, num_classes, f"{where}: the model of {arch!r}")
    return model


def _out_features(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


@torch.no_grad()
def _check_custom_model(model: nn.Module, shape: tuple, num_classes: int, what: str) -> None:
    """Refuse a model the workflow cannot initialize, measure or transfer (ModelError)."""
    lazy = [name for name, p in model.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)]
    if lazy:
        raise ModelError(
            f"{what} has lazy (uninitialized) parameters {', '.join(lazy)}: build the layers "
            "with their input sizes (the factory gets the input shape)"
        )
    layers = weight_layers(model)
    if not layers:
        raise ModelError(
            f"{what} has no Conv2d or Linear layer: the statistics, the He × init_scale "
            "initialization and the classifier need at least one"
        )
    modules = dict(model.named_modules())
    calls: list[str] = []
    handles = [
        modules[name].register_forward_pre_hook(lambda _m, _a, name=name: calls.append(name)) for name in layers
    ]
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        output = model(torch.zeros((2, *shape), device=device))
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"{what} fails on a batch of shape {(2, *shape)}: {_error_text(err)}") from err
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (2, num_classes):
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ModelError(
            f"{what} maps a batch of shape {(2, *shape)} to {got}; expected logits of shape (2, {num_classes})"
        )
    counts = {name: calls.count(name) for name in layers}
    unused = [name for name in layers if counts[name] == 0]
    shared = [f"{name} ({counts[name]}×)" for name in layers if counts[name] > 1]
    if unused or shared:
        problems = ([f"never called by forward: {', '.join(unused)}"] if unused else []) + (
            [f"called more than once per forward: {', '.join(shared)}"] if shared else []
        )
        raise ModelError(
            f"{what}: every conv/linear layer must be called exactly once per forward (its Σx, "
            f"the layer order and the classifier depend on it); {'; '.join(problems)}"
        )
    if calls != layers:
        raise ModelError(
            f"{what} registers its conv/linear layers in another order than forward calls them "
            f"(registered: {', '.join(layers)}; called: {', '.join(calls)}): create the modules in "
            "the order forward uses them ('first', firstK/lastK, the layer-wise construction and "
            "the classifier, the last layer, follow that order)"
        )
    head = modules[layers[-1]]
    if _out_features(head) != num_classes:
        raise ModelError(
            f"{what}: its last conv/linear layer {layers[-1]!r} is the classifier (re-initialized for "
            f"each downstream task) and must have num_classes = {num_classes} outputs, not {_out_features(head)}"
        )


def check_model(spec: dict, input_shape: Sequence[int], num_classes: int, where: str = "model") -> nn.Module:
    """Build ``spec`` cheaply to see that it can be built: on the ``meta`` device (no
    memory, no arithmetic) and, if that fails (a factory or forward that needs real
    values), once more on the CPU, whose error is the one raised. The model is for
    looking at (its layers), not for training."""
    try:
        with torch.device("meta"):
            return build_model(spec, input_shape, num_classes, where)
    except Exception:  # noqa: BLE001 - retried for real below
        pass
    return build_model(spec, input_shape, num_classes, where)


def weight_layers(model: nn.Module) -> list[str]:
    """Names of the conv (``Conv2d``) and linear modules, in the order they were registered."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, WEIGHT_LAYER_TYPES)
    ]


def resolve_layer(model: nn.Module, name: str) -> str:
    """Map 'first' / 'last' to a module name and check that the layer exists.

    Layers are named by module path (``features.0``, ``layer1.0.conv1``); an unknown
    name is refused with the list of the model's layers.
    """
    return resolve_layer_name(weight_layers(model), name)


@torch.no_grad()
def initialize(model: nn.Module, init_scale: float, seed: int, init: str | None = None) -> nn.Module:
    """Normal fan-in initialization × init_scale for every conv/linear weight, zero biases.

    ``init`` is the convention: "he" (Kaiming normal, ReLU gain: std √2/√fan_in) or
    "lecun" (std 1/√fan_in), fan_in = C_in·k·k for a conv, in_features for a linear
    layer. None (the default) takes the one the model's spec named when
    :func:`build_model` built it (``init``, default "he"), and "he" for a model built
    elsewhere. Both draw the same standard normals from the generator seeded with
    ``seed``, so one seed's LeCun weights are its He weights divided by √2.

    Conv layers are ``Conv1d``/``Conv2d``/``Conv3d`` (the built-in networks have only
    Conv2d); normalization layers (batch, instance, layer, group norm) are reset to
    weight 1, bias 0. Other parameters (an own model's embedding, say) are left as
    they are: see :func:`uncovered_parameters`.
    """
    if init is None:
        init = getattr(model, INIT_ATTRIBUTE, DEFAULT_INIT)
    check_init(init)
    generator = torch.Generator().manual_seed(int(seed))
    for module in model.modules():
        if isinstance(module, HE_LAYER_TYPES):
            nn.init.kaiming_normal_(
                module.weight, mode="fan_in", nonlinearity=INIT_NONLINEARITY[init], generator=generator
            )
            module.weight.mul_(float(init_scale))
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, NORM_LAYER_TYPES):
            module.reset_parameters()
    return model


def uncovered_parameters(model: nn.Module) -> list[str]:
    """Parameters :func:`initialize` leaves as the model was built (not a conv/linear
    weight or bias, not a normalization layer's): none for the built-in networks."""
    covered = set()
    for name, module in model.named_modules():
        if isinstance(module, HE_LAYER_TYPES + NORM_LAYER_TYPES):
            covered |= {f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)}
    return [name for name, _ in model.named_parameters() if name not in covered]


def head_prefix(model: nn.Module) -> str:
    """Name of the classifier layer (the last conv/linear module)."""
    return weight_layers(model)[-1]
