"""The training engine: the whole dataset on the device, batches cut on the device.

Small CNNs on 32×32 images are bound by data handling, not arithmetic, in the usual
Dataset/DataLoader pipeline. Here the uint8 images live on the device once; each step
indexes a batch from a seeded on-device permutation and normalizes it there, so the
step has no host-device copy and needs no DataLoader workers: the loss stays on the
device (summed there over the epoch), so the host never waits for the device inside an
epoch. On CUDA the model runs in channels_last with bf16 autocast and cuDNN picks its
fastest convolution algorithms (``cudnn.benchmark``); ``TrainConfig.compile`` adds
torch.compile. ``TrainConfig.augment`` crops and flips the training batches on the
device as well (:mod:`randlabels.data.augment`). Evaluation runs in large no-grad batches.
On CPU the same seed gives the same numbers. benchmarks/ measures all this against a plain DataLoader loop
(docs/PERFORMANCE.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import socket
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from randlabels.data.augment import Augmentation
from randlabels.errors import ResourceError
from randlabels.training import fitloop
from randlabels.training.fitloop import FitResult
from randlabels.training.optimizer import SCHEDULES, SGD
from randlabels.training.progress import Monitor


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer and loop settings (SGD with momentum; per-step learning-rate schedule)."""

    epochs: int
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    # Linear learning-rate warm-up over the first this many epochs (fractions allowed),
    # from lr/steps to lr; the schedule runs over the steps after it. 0: none.
    warmup_epochs: float = 0.0
    # Rescale each step's gradient to at most this ℓ2 norm (over all parameters of
    # the model, as torch.nn.utils.clip_grad_norm_); None: no clipping.
    clip_grad_norm: float | None = None
    eval_batch_size: int = 2048
    # Wrap the model in torch.compile (TorchInductor; on the CPU it needs a C compiler).
    # The first steps pay the compilation; the numbers equal eager mode's up to
    # floating-point rounding (fused kernels sum in another order).
    compile: bool = False
    # Random crops / flips of the training batches, e.g. {"crop": 4, "flip": True}
    # (see randlabels.data.augment); None or all off: none. Left out of the hash (a dict is
    # unhashable), compared as usual.
    augment: dict | None = field(default=None, hash=False)

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; valid names: {', '.join(SCHEDULES)}"
            )
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0 or self.warmup_epochs < 0:
            raise ValueError(f"invalid training settings: {self}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be > 0 or None, got {self.clip_grad_norm!r}")
        Augmentation.from_settings(self.augment)  # refuse bad settings here, not mid-run

    @classmethod
    def from_dict(cls, settings: dict) -> "TrainConfig":
        """Take the keys this class knows from a config section, ignore the rest."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in known})


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; 'cuda' where there is none stops
    with a message that names the config key (not torch's traceback at first use)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ResourceError(
            f"config key device is {name!r}, but CUDA is not available on {socket.gethostname()} "
            "(no GPU, or a CPU-only torch build); set device: auto (CUDA where present) or cpu, "
            "e.g. --config device=cpu"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ResourceError(
            f"config key device is {name!r}, but {socket.gethostname()} has "
            f"{torch.cuda.device_count()} CUDA device(s), numbered from 0"
        )
    return device


def job_device(name: str, threads: int, gpus: int = 0, jobs_per_gpu: int = 1) -> torch.device:
    """The device of a workflow job, set up as every job script needs it: torch's CPU
    threads set to the job's ``threads``, ``gpus`` devices claimed for it
    (:func:`randlabels.training.gpus.bind_gpus`, before CUDA starts), and the config's ``device``
    resolved (:func:`resolve_device`). On the CPU, freed host memory is kept for reuse
    (:func:`randlabels.training.host_memory.keep_freed_memory`); the log says where the
    C library cannot."""
    from randlabels.training.gpus import bind_gpus
    from randlabels.training.host_memory import keep_freed_memory

    torch.set_num_threads(threads)
    bind_gpus(gpus, jobs_per_gpu)
    device = resolve_device(name)
    if device.type == "cpu" and not keep_freed_memory():
        logging.getLogger("randlabels").info(
            "this C library has no glibc mallopt: freed host memory goes back to the system, "
            "so the job runs slower (docs/PERFORMANCE.md, \"Host memory of CPU jobs\")"
        )
    return device


class DeviceData:
    """A labelled dataset held on one device; batches are normalized on the fly.

    ``inputs`` is uint8 (N, H, W, C) for images or float32 (N, D) for vectors;
    ``norm_mean`` / ``norm_std`` are per channel (images, on the 0..1 scale) or per
    feature (vectors).
    """

    def __init__(
        self,
        inputs: np.ndarray,
        labels: np.ndarray,
        norm_mean: Sequence[float],
        norm_std: Sequence[float],
        device: torch.device | str = "cpu",
    ):
        if len(inputs) != len(labels):
            raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
        if inputs.ndim == 4 and inputs.dtype != np.uint8:
            raise ValueError(f"image inputs must be uint8 (N, H, W, C), got {inputs.dtype}")
        self.device = torch.device(device)
        self.is_image = inputs.ndim == 4
        self.inputs = torch.from_numpy(np.ascontiguousarray(inputs)).to(self.device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        shape = (1, -1, 1, 1) if self.is_image else (1, -1)
        self.mean = torch.as_tensor(norm_mean, dtype=torch.float32, device=self.device).view(shape)
        self.std = torch.as_tensor(norm_std, dtype=torch.float32, device=self.device).view(shape)
        cuda = self.device.type == "cuda"
        self.memory_format = torch.channels_last if (cuda and self.is_image) else torch.contiguous_format

    @classmethod
    def subset(cls, dataset, index, device: torch.device | str = "cpu", labels: np.ndarray | None = None) -> "DeviceData":
        """The samples ``index`` of a prepared dataset (:class:`randlabels.data.h5file.Dataset`)
        on ``device``, normalized as the dataset says; ``labels`` replace the dataset's own
        (random labels, a downstream task's)."""
        return cls(dataset.images[index], dataset.labels[index] if labels is None else labels,
                   dataset.norm_mean, dataset.norm_std, device)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) for images, (D,) for vectors: what the model sees."""
        if self.is_image:
            n, h, w, c = self.inputs.shape
            return (c, h, w)
        return tuple(self.inputs.shape[1:])

    def normalized(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Float inputs for ``index``, normalized, in the layout the model expects."""
        batch = self.inputs[index]
        if self.is_image:
            # NHWC viewed as NCHW is already channels_last in memory.
            batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
            return batch.sub_(self.mean).div_(self.std).contiguous(memory_format=self.memory_format)
        return (batch.float() - self.mean) / self.std

    def permutation(self, generator: torch.Generator) -> torch.Tensor:
        """A seeded random order of the samples, made on the device."""
        return torch.randperm(len(self), generator=generator, device=self.device)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized inputs and labels of the samples at ``index``."""
        return self.normalized(index), self.labels[index]

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in storage order, for evaluation and statistics."""
        for start in range(0, len(self), batch_size):
            index = slice(start, start + batch_size)
            yield self.normalized(index), self.labels[index]


def probed_row(row: dict, values: dict[str, float]) -> dict:
    """A learning-curve row with a probe's ``values`` added as columns (a probe may not
    overwrite the curve's own)."""
    clash = sorted(set(values) & set(row))
    if clash:
        raise ValueError(f"probe columns {clash} would overwrite the learning curve's own columns")
    return {**row, **values}


class Trainer:
    """SGD training of one model on one :class:`DeviceData`."""

    def __init__(
        self,
        model: nn.Module,
        data: DeviceData,
        config: TrainConfig,
        seed: int,
        test_data: DeviceData | None = None,
        log: logging.Logger | None = None,
        probe: Callable[[nn.Module], dict[str, float]] | None = None,
    ):
        """``probe``, if given, is called on the model at each learning-curve row and its
        dict is merged into that row (extra columns); it sets eval mode / no_grad itself."""
        self.device = data.device
        self.data, self.test_data, self.config = data, test_data, config
        self.model = model.to(self.device, memory_format=data.memory_format)
        if self.device.type == "cuda":
            # Fixed input shapes: let cuDNN time its algorithms once and keep the fastest.
            torch.backends.cudnn.benchmark = True
        # What the steps call: the model itself, or its compiled wrapper (which shares
        # the parameters, so state dicts keep the model's own keys).
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.log = log or logging.getLogger("randlabels")
        self.steps_per_epoch = math.ceil(len(data) / config.batch_size)
        self.total_steps = max(1, config.epochs * self.steps_per_epoch)
        self.optimizer = SGD(self.model.parameters(), config, self.steps_per_epoch)
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.augmentation = Augmentation.from_settings(config.augment)
        if self.augmentation is not None:
            self.augmentation.check_inputs(data.input_shape)
        self.probe = probe
        self.step_count = 0

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def training_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch at ``index``, augmented if the config asks for it (the
        augmentation draws from ``self.generator`` after the epoch's permutation, so a
        resumed run draws the same numbers)."""
        inputs, labels = self.data.batch(index)
        if self.augmentation is not None:
            inputs = self.augmentation.apply(inputs, self.generator)
        return inputs, labels

    def train_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One SGD step; returns the loss as a device tensor (no host sync)."""
        self.model.train()
        with self._autocast():
            loss = F.cross_entropy(self.forward(inputs), labels)
        self.optimizer.zero_grad()
        loss.backward()
        if self.config.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        self.optimizer.step()
        self.step_count += 1
        return loss.detach()

    @torch.no_grad()
    def evaluate(self, data: DeviceData) -> tuple[float, float]:
        """(mean loss, accuracy) over ``data`` in large no-grad batches."""
        self.model.eval()
        total_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        for inputs, labels in data.batches(self.config.eval_batch_size):
            with self._autocast():
                logits = self.forward(inputs)
            total_loss += F.cross_entropy(logits.float(), labels, reduction="sum").double()
            correct += (logits.argmax(dim=1) == labels).sum()
        return total_loss.item() / len(data), correct.item() / len(data)

    def state(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the model's state dict."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    # ------------------------------------------------------------------ for fitloop.fit
    # The loop is the one PackedTrainer runs too: this Trainer is its case of one replica.

    replicas = 1

    def orders(self) -> torch.Tensor:
        """(1, N): this epoch's seeded sample order."""
        return self.data.permutation(self.generator).unsqueeze(0)

    def step(self, orders: torch.Tensor, batch: int) -> torch.Tensor:
        """One SGD step on batch ``batch`` of the epoch's order; the loss, shape (1,)."""
        size = self.config.batch_size
        return self.train_step(*self.training_batch(orders[0, batch * size : (batch + 1) * size])).reshape(1)

    def evaluations(self) -> tuple[float, float, float]:
        """(loss, accuracy) on the training data and the test accuracy (NaN without)."""
        eval_loss, train_acc = self.evaluate(self.data)
        test_acc = self.evaluate(self.test_data)[1] if self.test_data is not None else math.nan
        return eval_loss, train_acc, test_acc

    def row(self, evaluations: tuple[float, float, float], r: int, epoch: float, train_loss: float) -> dict:
        eval_loss, train_acc, test_acc = evaluations
        loss = train_loss if not math.isnan(train_loss) else eval_loss
        return {
            "epoch": epoch,
            "step": self.step_count,
            "loss": loss,
            "train_acc": train_acc,
            "test_acc": test_acc,
            "lr": self.optimizer.lr,
            "diverged": not math.isfinite(loss),
        }

    def curve_row(self, r: int, row: dict) -> dict:
        """A copy of ``row`` with the probe's values added (the row itself if no probe)."""
        return row if self.probe is None else probed_row(row, self.probe(self.model))

    def replica_state(self, r: int) -> dict[str, torch.Tensor]:
        return self.state()

    def snapshot(self, progress: dict) -> dict:
        """Everything a rerun needs to continue exactly where this run is now."""
        return {
            "progress": progress,
            "model": self.state(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "step_count": self.step_count,
        }

    def restore(self, saved: dict) -> dict:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        self.step_count = saved["step_count"]
        return saved["progress"]

    def fit(self, monitor: Monitor | None = None, **options) -> FitResult:
        """Train for ``config.epochs`` epochs: :func:`randlabels.training.fitloop.fit` with
        ``options`` (checkpoint_epochs, eval_every, resume, stop, ...). Learning-curve
        rows carry the probe's columns, if the Trainer has a probe. ``monitor`` reports
        each epoch (the log line, a live file, TensorBoard; by default the log line)."""
        return fitloop.fit(self, self.config.epochs, self.log, monitor or Monitor(log=self.log), **options)[0]
