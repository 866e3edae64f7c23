"""The training engine against a plain Dataset/DataLoader training loop.

The baseline is written the way most papers' CIFAR code is: a ``torch.utils.data``
Dataset over the uint8 arrays whose ``__getitem__`` converts one image to a float
tensor and normalizes it (torchvision's ToTensor + Normalize, without PIL), a shuffling
DataLoader with batch 128 (worker processes and pinned memory on a GPU), fp32 and
the default memory format, each batch copied to the device, and the running loss
read back with ``loss.item()`` after every step.

The engine is :class:`randlabels.training.engine.Trainer` on a :class:`DeviceData`: the same
model (same architecture and initialization), the same optimizer (SGD, lr 0.01,
momentum 0.9), the same batch size and the same number of steps, its loop written as
``Trainer.fit`` writes it (a permutation per epoch, the loss summed on the device).

Trials alternate between the two loops, so that a change in the machine's load hits
both; each loop keeps its state (iterator, permutation) across trials, and its
warm-up steps (DataLoader workers starting, cuDNN choosing algorithms, compilation)
are not timed. Figures are medians over trials.

On a GPU this module also times the engine with ``compile=True`` and at larger batch
sizes, and converts images/s to FLOP/s with the model's FLOPs per image, counted by
:class:`torch.utils.flop_counter.FlopCounterMode` over one training step (forward
and backward; matrix products and convolutions, 2 FLOPs per multiply-add).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    CIFAR_MEAN, CIFAR_STD, Sizes, free_memory, log, median, peak_bf16_flops, random_images, timed,
)
from randlabels.models.networks import build_model, initialize
from randlabels.training.engine import DeviceData, TrainConfig, Trainer

MODELS = {"cnn2": {"arch": "cnn2"}, "vgg16": {"arch": "vgg16"}, "resnet18": {"arch": "resnet18"}}
INPUT_SHAPE, CLASSES, BATCH = (3, 32, 32), 10, 128
LR, MOMENTUM = 0.01, 0.9


def fresh_model(spec: dict) -> nn.Module:
    return initialize(build_model(spec, INPUT_SHAPE, CLASSES), 1.0, 0)


class UInt8Images(Dataset):
    """uint8 NHWC images, converted and normalized one at a time (ToTensor + Normalize)."""

    def __init__(self, images, labels, mean, std):
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image = torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div(255.0)
        return (image - self.mean) / self.std, int(self.labels[i])


class BaselineLoop:
    """The usual loop: DataLoader, copy to the device, fp32 step, loss.item()."""

    def __init__(self, spec, images, labels, device, batch, workers):
        self.device = device
        cuda = device.type == "cuda"
        self.loader = DataLoader(
            UInt8Images(images, labels, CIFAR_MEAN, CIFAR_STD), batch_size=batch, shuffle=True,
            num_workers=workers, pin_memory=cuda, drop_last=True, persistent_workers=workers > 0,
        )
        self.model = fresh_model(spec).to(device)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.batches = iter(self.loader)
        self.running_loss = 0.0

    def steps(self, n: int) -> None:
        self.model.train()
        for _ in range(n):
            try:
                inputs, labels = next(self.batches)
            except StopIteration:
                self.batches = iter(self.loader)
                inputs, labels = next(self.batches)
            inputs = inputs.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            loss = self.criterion(self.model(inputs), labels)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.running_loss += loss.item()

    def close(self) -> None:
        del self.batches  # stops the workers


class EngineLoop:
    """The training loop's steps (randlabels.training.fitloop): on-device permutation and batches, loss kept on the device."""

    def __init__(self, spec, images, labels, device, batch, compile_=False):
        self.data = DeviceData(images, labels, CIFAR_MEAN, CIFAR_STD, device)
        config = TrainConfig(epochs=1, batch_size=batch, lr=LR, momentum=MOMENTUM, compile=compile_)
        self.trainer = Trainer(fresh_model(spec), self.data, config, seed=0)
        self.batch = batch
        self.order, self.position = None, 0
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)

    def steps(self, n: int) -> None:
        for _ in range(n):
            if self.order is None or self.position + self.batch > len(self.data):
                self.order, self.position = self.data.permutation(self.trainer.generator), 0
            index = self.order[self.position : self.position + self.batch]
            self.loss_sum += self.trainer.train_step(*self.data.batch(index))
            self.position += self.batch

    def close(self) -> None:
        pass


def flops_per_image(spec: dict, batch: int = 4) -> dict:
    """FLOPs of one image's training step (forward + backward) and of its forward pass."""
    model = fresh_model(spec)
    inputs = torch.randn(batch, *INPUT_SHAPE)
    labels = torch.randint(0, CLASSES, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(inputs), labels).backward()
    train = counter.get_total_flops() / batch
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(inputs)
    return {"train_flops_per_image": train, "forward_flops_per_image": counter.get_total_flops() / batch}


def _throughput(loop, device, warmup, trials, steps, batch) -> tuple[float, list[float]]:
    loop.steps(warmup)
    times = [timed(lambda: loop.steps(steps), device) for _ in range(trials)]
    return steps * batch / median(times), times


def run(device: torch.device, sizes: Sizes) -> list[dict]:
    images, labels = random_images(sizes.engine_samples)
    peak = peak_bf16_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    rows = []
    for name, (warmup, trials, steps) in sizes.engine_runs.items():
        spec = MODELS[name]
        log(f"engine vs baseline: {name}, {steps} steps x {trials} trials per loop, batch {BATCH}")
        flops = flops_per_image(spec)
        engine = EngineLoop(spec, images, labels, device, BATCH)
        baseline = BaselineLoop(spec, images, labels, device, BATCH, sizes.baseline_workers)
        engine.steps(warmup)
        baseline.steps(warmup)
        engine_times, baseline_times = [], []
        for _ in range(trials):  # alternating, so both see the same machine
            engine_times.append(timed(partial(engine.steps, steps), device))
            baseline_times.append(timed(partial(baseline.steps, steps), device))
        engine.close()
        baseline.close()
        del engine, baseline
        free_memory(device)
        engine_rate = steps * BATCH / median(engine_times)
        baseline_rate = steps * BATCH / median(baseline_times)
        row = {
            "model": name,
            "batch": BATCH,
            "samples": len(images),
            "steps_per_trial": steps,
            "trials": trials,
            "warmup_steps": warmup,
            "baseline_workers": sizes.baseline_workers,
            "engine_images_per_s": engine_rate,
            "baseline_images_per_s": baseline_rate,
            "ratio": engine_rate / baseline_rate,
            "engine_trial_seconds": engine_times,
            "baseline_trial_seconds": baseline_times,
            **flops,
            "engine_tflops": flops["train_flops_per_image"] * engine_rate / 1e12,
            "baseline_tflops": flops["train_flops_per_image"] * baseline_rate / 1e12,
        }
        best = engine_rate
        if sizes.engine_compile:
            try:
                loop = EngineLoop(spec, images, labels, device, BATCH, compile_=True)
                rate, _ = _throughput(loop, device, max(warmup, 10), trials, steps, BATCH)
                row["compile_images_per_s"] = rate
                best = max(best, rate)
            except Exception as err:  # a compiler problem must not cost the other figures
                row["compile_error"] = f"{type(err).__name__}: {err}"[:500]
            loop = None
            torch._dynamo.reset()
            free_memory(device)
        sweep = {}
        for batch in sizes.engine_batch_sweep:
            try:
                loop = EngineLoop(spec, images, labels, device, batch)
                sweep[str(batch)], _ = _throughput(loop, device, warmup, trials, max(10, steps * BATCH // batch), batch)
                best = max(best, sweep[str(batch)])
            except torch.cuda.OutOfMemoryError:
                sweep[str(batch)] = None
            free_memory(device)
        if sweep:
            row["engine_batch_sweep_images_per_s"] = sweep
        row["best_engine_images_per_s"] = best
        row["best_engine_tflops"] = flops["train_flops_per_image"] * best / 1e12
        if peak is not None:
            row["engine_peak_fraction"] = row["engine_tflops"] * 1e12 / peak
            row["best_engine_peak_fraction"] = row["best_engine_tflops"] * 1e12 / peak
        log(f"  engine {engine_rate:,.0f} img/s, baseline {baseline_rate:,.0f} img/s, "
            f"ratio {engine_rate / baseline_rate:.2f}; best engine {best:,.0f} img/s")
        rows.append(row)
    return rows
