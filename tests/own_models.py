"""Own-model factories for tests/test_own_model.py, imported by their factory path
("own_models:NAME"; tests/ is on sys.path under pytest). Each is a small case of what
the workflow accepts or refuses in a user's model (randlabels.models.networks, "Your own model")."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

NOT_CALLABLE = 3


def _flat(shape) -> int:
    size = 1
    for s in shape:
        size *= int(s)
    return size


def bn_net(input_shape, num_classes, width=4):
    """conv → batch norm → ReLU → conv → ReLU → classifier: a batch norm joins its conv."""
    c, h, w = input_shape
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(c, width, 3, padding=1, bias=False),
        bn1=nn.BatchNorm2d(width),
        relu1=nn.ReLU(),
        conv2=nn.Conv2d(width, width, 3, padding=1, padding_mode="reflect"),
        relu2=nn.ReLU(),
        flatten=nn.Flatten(),
        classifier=nn.Linear(width * h * w, num_classes),
    ))


class Scaled(nn.Module):
    """A learned input scale: a parameter the He rule does not cover."""

    def __init__(self, dim, num_classes):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(dim))
        self.fc1 = nn.Linear(dim, 8)
        self.norm = nn.LayerNorm(8)
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.classifier(torch.relu(self.norm(self.fc1(x.flatten(1) * self.scale))))


def layernorm_net(input_shape, num_classes):
    """Works for statistics and the Gaussian approximation; not for firstK (a LayerNorm
    belongs to no layer group)."""
    return Scaled(_flat(input_shape), num_classes)


def raises(input_shape, num_classes, **options):
    raise RuntimeError(f"no model for {input_shape} today")


def returns_dict(input_shape, num_classes):
    return {"conv": "not a module"}


def no_weight_layers(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.ReLU())


class _Backwards(nn.Module):
    def __init__(self, dim, num_classes):
        super().__init__()
        self.classifier = nn.Linear(8, num_classes)  # registered first, called last
        self.fc1 = nn.Linear(dim, 8)

    def forward(self, x):
        return self.classifier(torch.relu(self.fc1(x.flatten(1))))


def backwards(input_shape, num_classes):
    return _Backwards(_flat(input_shape), num_classes)


class _Shared(nn.Module):
    def __init__(self, dim, num_classes):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = x.flatten(1)
        return self.classifier(self.fc1(torch.relu(self.fc1(x))))


def shared(input_shape, num_classes):
    return _Shared(_flat(input_shape), num_classes)


class _Unused(nn.Module):
    def __init__(self, dim, num_classes):
        super().__init__()
        self.fc1 = nn.Linear(dim, 8)
        self.spare = nn.Linear(8, 8)
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.classifier(torch.relu(self.fc1(x.flatten(1))))


def unused(input_shape, num_classes):
    return _Unused(_flat(input_shape), num_classes)


def lazy(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, num_classes))


def too_many_outputs(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat(input_shape), num_classes + 1))


def needs_values(input_shape, num_classes):
    """Reads a tensor's value while building: fails on the meta device, works on the CPU."""
    hidden = int(torch.tensor(6).item())
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat(input_shape), hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def grouped(input_shape, num_classes):
    c, h, w = input_shape
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(c, 4, 3, padding=1),
        conv2=nn.Conv2d(4, 4, 3, padding=1, groups=2),
        flatten=nn.Flatten(),
        classifier=nn.Linear(4 * h * w, num_classes),
    ))
