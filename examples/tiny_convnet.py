"""A small convolutional network as an own model for randlabels (README, "Your own model").

Use it from a config as

    model: {arch: "examples.tiny_convnet:build", filters: 16, hidden: 64}

randlabels calls a factory as

    factory(input_shape: tuple[int, ...], num_classes: int, **options) -> torch.nn.Module

with ``input_shape`` = (C, H, W) for images or (D,) for vectors, as the prepared
dataset has them, ``num_classes`` the classes of the labels the run trains on, and
every other key of the config's ``model`` section as a keyword argument. The workflow
initializes the returned model itself (He × init_scale for every conv/linear weight,
zero biases), so the factory's own initialization does not matter.

What randlabels needs of the model: Conv2d/Linear layers created in the order
``forward`` calls them, each called once, the last one being the classifier with
``num_classes`` outputs. The layers are named by module path, e.g. ``features.conv1``
or ``head.fc`` in ``stats: {layers: [first, head.fc]}``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


class TinyConvNet(nn.Module):
    """conv 3×3 ("same") → ReLU → conv 3×3 stride 2 → ReLU → FC hidden → ReLU → classifier."""

    def __init__(self, channels: int, height: int, width: int, num_classes: int, filters: int, hidden: int):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(channels, filters, kernel_size=3, padding="same"),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(filters, 2 * filters, kernel_size=3, stride=2, padding=1),
                relu2=nn.ReLU(),
            )
        )
        side_h, side_w = (height + 1) // 2, (width + 1) // 2  # after the stride-2 conv
        self.head = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc=nn.Linear(2 * filters * side_h * side_w, hidden),
                relu=nn.ReLU(),
                classifier=nn.Linear(hidden, num_classes),
            )
        )

    def forward(self, x):
        return self.head(self.features(x))


def build(input_shape: tuple[int, ...], num_classes: int, filters: int = 16, hidden: int = 64) -> nn.Module:
    """The factory: a :class:`TinyConvNet` for images of ``input_shape`` = (C, H, W)."""
    if len(input_shape) != 3:
        raise ValueError(f"tiny_convnet needs image inputs (C, H, W), got input shape {tuple(input_shape)}")
    channels, height, width = input_shape
    return TinyConvNet(channels, height, width, num_classes, filters=int(filters), hidden=int(hidden))
