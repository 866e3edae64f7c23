"""Building a network from its spec: the library's ``build_model`` against the plain way.

Every training, statistics and construction job builds its network once, on the CPU,
before anything is trained. Library: :func:`randlabels.models.networks.build_model`
(VGG16's shell on the meta device, so torchvision's ImageNet classifier of 120 M
parameters is never allocated). Baseline, the way one writes it: torchvision's whole
``vgg16(weights=None)``, then the average pool and classifier replaced (and, widened,
the features rebuilt). Both give the same network (tests/test_models.py checks it).

Figures: median seconds per build over the trials, one CPU thread, and their ratio.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from benchmarks.common import Sizes, log, median
from randlabels.models.networks import build_model

SPECS = ({"arch": "vgg16"}, {"arch": "vgg16", "upper_width": 2}, {"arch": "vgg16_bn"})
SHAPE, CLASSES, TRIALS = (3, 32, 32), 10, 5


def plain_build(spec: dict) -> nn.Module:
    """torchvision's VGG16 built whole, then cut to the CIFAR variant."""
    from torchvision.models import vgg16, vgg16_bn
    from torchvision.models.vgg import cfgs, make_layers

    batch_norm = spec["arch"] == "vgg16_bn"
    model = (vgg16_bn if batch_norm else vgg16)(weights=None, num_classes=CLASSES)
    top = 512
    if spec.get("upper_width", 1) != 1:
        top = int(512 * spec["upper_width"])
        last_two_blocks = [top if v == 512 else v for v in cfgs["D"][10:]]  # after the third pool
        model.features = make_layers(cfgs["D"][:10] + last_two_blocks, batch_norm=batch_norm)
    model.avgpool = nn.Identity()
    model.classifier = nn.Linear(top, CLASSES)
    return model


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(device: torch.device, sizes: Sizes) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a job's build, not a parallel fill
    try:
        rows = []
        for spec in SPECS:
            build_model(spec, SHAPE, CLASSES), plain_build(spec)  # warm-up: imports, allocator
            library = [_seconds(lambda: build_model(spec, SHAPE, CLASSES)) for _ in range(TRIALS)]
            baseline = [_seconds(lambda: plain_build(spec)) for _ in range(TRIALS)]
            row = {"spec": spec, "library_seconds": median(library), "baseline_seconds": median(baseline)}
            row["ratio"] = row["baseline_seconds"] / row["library_seconds"]
            log(f"build {spec}: library {row['library_seconds']:.2f} s, plain {row['baseline_seconds']:.2f} s")
            rows.append(row)
        return rows
    finally:
        torch.set_num_threads(threads)
