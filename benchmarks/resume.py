"""Resume saves: a VGG16 run that saves its resumable state after every epoch, against
the same run under the time floor between saves (``resume_min_seconds``, default 60).

A save writes the weights and momentum (118 MB for VGG16 on CIFAR-shaped input) to a
folder of the checkout, as a training job writes ``results/_resume/``. On a CPU an
epoch of the paper's settings takes minutes and a save is a small part of it; a fast
GPU's epoch takes seconds, and a save after each one can be a large share of it. Both
arms train the same model from the same start with the library's ``Trainer`` on
random CIFAR-shaped images (batch 128, SGD lr 0.01, momentum 0.9) for the same epochs
(saving does not change what is computed: tests/test_resume.py);
within a run shorter than the floor the floored arm saves nothing (its saves are then
one a minute).

Baseline: a save after every epoch (``resume_min_seconds: 0``, what every job did
before the floor). Library: the default floor. Trials alternate, baseline then library;
the figures are medians of the training seconds per epoch (evaluations at epoch 0 and
after each epoch included, as in a job), with the seconds and bytes of one save.
"""

from __future__ import annotations

import shutil
import time

import torch

from benchmarks.common import CIFAR_MEAN, CIFAR_STD, ROOT, Sizes, log, median, random_images
from randlabels.models.networks import build_model, initialize
from randlabels.training.engine import DeviceData, TrainConfig, Trainer
from randlabels.training.job import RESUME_MIN_SECONDS
from randlabels.training.resume import ResumeStore

ARMS = {"every_epoch": 0.0, "floor": RESUME_MIN_SECONDS}
FOLDER = ROOT / "results" / "_benchmark_resume"  # on the results' file system, as a job's saves are


class TimedStore(ResumeStore):
    """A resume store that records how long each save takes."""

    def __init__(self, *args):
        super().__init__(*args)
        self.seconds: list[float] = []

    def save(self, state: dict) -> None:
        began = time.perf_counter()
        super().save(state)
        self.seconds.append(time.perf_counter() - began)


def _trial(data: DeviceData, epochs: int, min_seconds: float) -> dict:
    model = initialize(build_model({"arch": "vgg16"}, (3, 32, 32), 10), 1.0, 0)
    store = TimedStore(FOLDER / "state.pt", "benchmark")
    trainer = Trainer(model, data, TrainConfig(epochs=epochs, batch_size=128, lr=0.01, momentum=0.9), seed=0)
    cuda = data.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(data.device)
    began = time.perf_counter()
    trainer.fit(resume=store, save_min_seconds=min_seconds)
    if cuda:
        torch.cuda.synchronize(data.device)
    seconds = time.perf_counter() - began
    size = store.path.stat().st_size if store.path.exists() else 0
    store.clear()
    return {"epoch_seconds": seconds / epochs, "saves": len(store.seconds),
            "save_seconds": median(store.seconds) if store.seconds else 0.0, "save_bytes": size}


def run(device: torch.device, sizes: Sizes) -> list[dict]:
    images, epochs, trials = sizes.resume_images, sizes.resume_epochs, sizes.resume_trials
    x, y = random_images(images)
    data = DeviceData(x, y, CIFAR_MEAN, CIFAR_STD, device=device)
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    shutil.rmtree(FOLDER, ignore_errors=True)
    try:
        for trial in range(trials):
            for arm, min_seconds in ARMS.items():
                runs[arm].append(_trial(data, epochs, min_seconds))
                done = runs[arm][-1]
                log(f"resume, trial {trial + 1}/{trials}, {arm}: {done['epoch_seconds']:.2f} s per epoch, "
                    f"{done['saves']} saves")
    finally:
        shutil.rmtree(FOLDER, ignore_errors=True)
    every = runs["every_epoch"]
    row = {"images": images, "epochs": epochs, "trials": trials, "floor_seconds": RESUME_MIN_SECONDS,
           "save_seconds": median([r["save_seconds"] for r in every]),
           "save_mb": median([r["save_bytes"] for r in every]) / 1e6}
    for arm in ARMS:
        row[f"{arm}_epoch_seconds"] = median([r["epoch_seconds"] for r in runs[arm]])
        row[f"{arm}_saves"] = median([r["saves"] for r in runs[arm]])
    row["ratio"] = row["every_epoch_epoch_seconds"] / row["floor_epoch_seconds"]
    return [row]
