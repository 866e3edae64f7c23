"""Replica packing: R seeds of one small cnn2 in one process against R sequential runs.

Packed: one :class:`randlabels.training.packed.PackedTrainer` trains the R replicas at once
(each its own initialization, data order and random labels). Separate: R
:class:`randlabels.training.engine.Trainer` runs one after the other, each on the same
on-device data, as R one-model-per-process jobs would run, without their process
start-up, imports and data loading (which favours the separate runs). Both are timed
over the same number of steps per replica after their warm-up steps, in trials that
alternate between the R separate runs and the packed group (medians); the figure is
aggregate images/s (replicas × batch × steps / seconds) and the ratio packed/separate.

Configurations: ``digits_cnn2`` is the default experiment's network and setting
(config.yaml: cnn2 with 64 filters and 256 hidden units on 8×8×1 digits, batch 32,
800 training images), the case the workflow actually packs; ``cifar_cnn2_small`` a
narrow cnn2 on CIFAR-shaped images (32 filters, 2×2 max-pool, 64 hidden, batch 128).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from benchmarks.common import Sizes, free_memory, log, median, random_images, timed
from randlabels.models.networks import build_model, initialize
from randlabels.training.engine import DeviceData, TrainConfig, Trainer
from randlabels.training.packed import PackedTrainer, with_labels

CONFIGS = {
    "digits_cnn2": {
        "spec": {"arch": "cnn2", "filters": 64, "kernel_size": 3, "hidden": 256},
        "image": (8, 8, 1), "samples": 800, "batch": 32, "classes": 10, "mean": [0.5], "std": [0.25],
    },
    "cifar_cnn2_small": {
        "spec": {"arch": "cnn2", "filters": 32, "kernel_size": 3, "hidden": 64, "pool": 2},
        "image": (32, 32, 3), "samples": 50_000, "batch": 128, "classes": 10,
        "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616],
    },
}


class _Steps:
    """Trainer.fit's inner loop for a Trainer or a PackedTrainer, resumable across calls."""

    def __init__(self, trainer, data, batch, packed: bool):
        self.trainer, self.data, self.batch, self.packed = trainer, data, batch, packed
        self.order, self.position = None, 0
        self.loss_sum = None

    def __call__(self, n: int) -> None:
        for _ in range(n):
            if self.order is None or self.position + self.batch > len(self.data):
                self.position = 0
                if self.packed:
                    self.order = self.trainer.orders()
                else:
                    self.order = self.data.permutation(self.trainer.generator)
            window = slice(self.position, self.position + self.batch)
            if self.packed:
                loss = self.trainer.train_step(*self.data.batch(self.order[:, window]))
            else:
                loss = self.trainer.train_step(*self.data.batch(self.order[window]))
            self.loss_sum = loss.double() if self.loss_sum is None else self.loss_sum + loss
            self.position += self.batch


def run(device: torch.device, sizes: Sizes) -> list[dict]:
    warmup, trials, steps = sizes.packing_steps
    rows = []
    for name in sizes.packing_configs:
        cfg = CONFIGS[name]
        samples = cfg["samples"] if device.type == "cuda" else min(cfg["samples"], 2048)
        images, _ = random_images(samples, cfg["image"], cfg["classes"])
        shape = (cfg["image"][2], *cfg["image"][:2])
        base = DeviceData(images, np.zeros(samples, dtype=np.int64), cfg["mean"], cfg["std"], device)
        config = TrainConfig(epochs=1, batch_size=cfg["batch"], lr=0.01, momentum=0.9)
        rng = np.random.default_rng(1)
        for replicas in sizes.packing_replicas:
            log(f"packing: {name}, R={replicas}, {steps} steps per replica")
            datas = [with_labels(base, rng.integers(0, cfg["classes"], samples)) for _ in range(replicas)]

            def model(seed):
                return initialize(build_model(cfg["spec"], shape, cfg["classes"]), 1.0, seed)

            # The packed group (its memory measured alone) and R separate runs, one after
            # the other; each warmed up, untimed; then trials alternate between them.
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            packed = PackedTrainer([model(r) for r in range(replicas)], datas, config, [100 + r for r in range(replicas)])
            loop = _Steps(packed, packed.data, cfg["batch"], packed=True)
            loop(warmup)
            peak_memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            separate = []
            for r in range(replicas):
                trainer = Trainer(model(r), datas[r], config, seed=100 + r)
                separate.append(_Steps(trainer, datas[r], cfg["batch"], packed=False))
                separate[-1](warmup)
            separate_times, packed_times = [], []
            for _ in range(trials):
                separate_times.append(sum(timed(partial(one, steps), device) for one in separate))
                packed_times.append(timed(partial(loop, steps), device))
            separate_seconds = median(separate_times)
            images_done = replicas * cfg["batch"] * steps
            row = {
                "config": name,
                "spec": cfg["spec"],
                "image_shape": list(cfg["image"]),
                "batch": cfg["batch"],
                "samples": samples,
                "replicas": replicas,
                "steps_per_replica": steps,
                "packed_images_per_s": images_done / median(packed_times),
                "separate_images_per_s": images_done / separate_seconds,
                "packed_trial_seconds": packed_times,
                "separate_trial_seconds": separate_times,
            }
            row["ratio"] = row["packed_images_per_s"] / row["separate_images_per_s"]
            if peak_memory is not None:
                row["packed_peak_memory_gib"] = peak_memory  # data included
            log(f"  packed {row['packed_images_per_s']:,.0f} img/s, separate {row['separate_images_per_s']:,.0f} "
                f"img/s, ratio {row['ratio']:.2f}")
            rows.append(row)
            del packed, loop, datas, separate
            free_memory(device)
    return rows
