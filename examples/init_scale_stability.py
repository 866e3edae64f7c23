"""Does a network train on random labels at every init scale? A measurement on the CPU.

Plain VGG16 (no batch norm) at He × init_scale has logits of std ~1e-9 at scale 0.25
and ~1e8 at scale 4 (16 weight layers), so one SGD recipe may stall at one end and
diverge at the other. This script trains ``--arch`` on ``--images`` CIFAR-shaped images
with random labels over 10 classes, at each scale and under each recipe, and prints
per run: the loss and gradient norm at initialization, the training accuracy after
each ``--report`` epochs, and whether the loss became non-finite. docs/RESULTS.md
("Plain VGG16 on random labels") gives the numbers behind configs/paper-cifar10.yaml.

The images are Fashion-MNIST's first training images (Debian's dataset-fashion-mnist),
zero-padded to 32×32 and repeated over 3 channels; ``--noise`` uses uniform noise.

    python examples/init_scale_stability.py --scales 0.25 0.5 1 2 4 --epochs 30
"""

from __future__ import annotations

import argparse
import gzip
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from randlabels.models.networks import build_model, initialize
from randlabels.training.engine import DeviceData, TrainConfig, Trainer

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
# The recipes compared (SGD, momentum 0.9, weight decay 5e-4, batch --batch).
RECIPES = {
    "lr0.01": {"lr": 0.01},
    "lr0.01+warmup+clip": {"lr": 0.01, "warmup_epochs": 2, "clip_grad_norm": 1.0},
    "lr0.001+warmup+clip": {"lr": 0.001, "warmup_epochs": 2, "clip_grad_norm": 1.0},
}


def cifar_shaped(n: int, noise: bool, seed: int = 0) -> np.ndarray:
    """(n, 32, 32, 3) uint8 images: padded Fashion-MNIST, or uniform noise."""
    if noise:
        return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    with gzip.open(FASHION) as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    padded = np.pad(raw, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[..., None], 3, axis=3)


def gradient_norm(model, data: DeviceData) -> tuple[float, float]:
    """(loss, ℓ2 norm of the gradient) of one batch of 64 at the current weights."""
    model.zero_grad()
    inputs, labels = data.batch(torch.arange(min(64, len(data))))
    loss = F.cross_entropy(model(inputs), labels)
    loss.backward()
    norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None))
    model.zero_grad()
    return loss.detach().item(), norm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--report", type=int, default=10, help="print accuracy every this many epochs")
    parser.add_argument("--noise", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images = cifar_shaped(args.images, args.noise)
    labels = np.random.default_rng(1).integers(0, 10, len(images))
    mean = images.reshape(-1, 3).mean(0) / 255
    std = images.reshape(-1, 3).std(0) / 255
    data = DeviceData(images, labels, mean, std)
    print(f"{args.arch} on {len(images)} {'noise' if args.noise else 'Fashion-MNIST'} images, random labels, "
          f"batch {args.batch}, {args.epochs} epochs", flush=True)
    for recipe in args.recipes:
        for scale in args.scales:
            model = initialize(build_model({"arch": args.arch}, (3, 32, 32), 10), scale, seed=0)
            loss0, grad0 = gradient_norm(model, data)
            config = TrainConfig(epochs=args.epochs, batch_size=args.batch, momentum=0.9, weight_decay=5e-4,
                                 **RECIPES[recipe])
            start = time.perf_counter()
            result = Trainer(model, data, config, seed=0).fit()
            accs = result.metrics.set_index("epoch")["train_acc"]
            shown = " ".join(f"{accs[e]:.2f}" for e in accs.index if e % args.report == 0)
            print(f"{recipe:22s} scale {scale:<5g} loss0 {loss0:9.3g} grad0 {grad0:9.3g}  "
                  f"acc@{args.report}ep {shown}  final loss {result.metrics['loss'].iloc[-1]:.3g}"
                  f"{'  DIVERGED' if result.diverged else ''}  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
