"""Replica packing: R seeds of one configuration trained together in one process.

A small network (the paper's 2-layer CNN on 8×8 digits, say) leaves a GPU almost
idle: each step is a few dozen tiny kernels, and the time goes to launching them.
Training the R seeds of one configuration as one program makes every kernel R times
larger for the same number of launches.

How the replicas are packed, and why this way
---------------------------------------------
The R models' parameters and buffers are stacked along a new leading dimension
(:func:`torch.func.stack_module_state`) and one replica's forward pass,
:func:`torch.func.functional_call` of the unchanged module, is vectorized over that
dimension with :func:`torch.func.vmap`. The alternative, rewriting each network with
grouped convolutions and batched matrix products, was rejected: it needs a second,
hand-written version of every architecture (and of batch norm with per-replica
running statistics) that must be kept in step with :mod:`randlabels.models.networks`. vmap
works on the models as they are, all five architectures included, and it lowers to
the same kernels one would write by hand: its batching rule turns a convolution with
stacked weights into one grouped convolution, and a linear layer into one batched
matrix product. Batch norm updates each replica's own stacked running statistics.

Each replica is trained exactly as a separate :class:`~randlabels.training.engine.Trainer`
would train it: its own initialization (the models passed in), its own data-order
seed (its own on-device generator and permutation each epoch), its own labels (and
inputs) if given per replica; the loss is the sum of the replicas' mean losses, so
each replica's gradient is that of its own loss alone, and SGD (momentum, weight
decay) acts element-wise. Results therefore equal separate runs up to the order of
floating-point reductions inside the grouped kernels: on the CPU the tests' cnn2 and
fully connected networks agree to about 1e-7 after several epochs (tests/test_packed.py);
batch-norm networks, whose small gradient sums cancel, amplify such rounding more, as
any change of kernel would. A replica whose loss becomes non-finite is
recorded as diverged at the same point a Trainer would stop it; the others go on.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from randlabels.data.augment import Augmentation
from randlabels.training import fitloop
from randlabels.training.engine import DeviceData, TrainConfig, probed_row
from randlabels.training.optimizer import SGD
from randlabels.training.fitloop import FitResult
from randlabels.training.progress import Monitor

__all__ = ["PackedTrainer", "with_labels"]


def with_labels(data: DeviceData, labels) -> DeviceData:
    """A view of ``data`` with other labels, sharing the inputs already on the device.

    Replicas that see the same images with their own random labels share one copy of
    the images: the packed trainer notices the shared inputs and gathers from them.
    """
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64)).to(data.device)
    if labels.shape != data.labels.shape:
        raise ValueError(f"{tuple(labels.shape)} labels for {len(data)} samples")
    view = copy.copy(data)
    view.labels = labels
    return view


class _PackedData:
    """R labelled datasets of equal size, cut into (R, B, ...) batches on the device.

    Inputs are kept once when all replicas share them (the same device tensor), else
    stacked to (R, N, ...). Labels are always stacked to (R, N).
    """

    def __init__(self, datasets: Sequence[DeviceData], role: str):
        first = datasets[0]
        for i, d in enumerate(datasets):
            if not isinstance(d, DeviceData):
                raise TypeError(f"{role} of replica {i} is a {type(d).__name__}, not a DeviceData")
            if len(d) != len(first) or d.input_shape != first.input_shape or d.is_image != first.is_image:
                raise ValueError(
                    f"{role} of replica {i} has {len(d)} samples of shape {d.input_shape}, "
                    f"replica 0 has {len(first)} of shape {first.input_shape}: packed replicas "
                    "need data of the same size and shape"
                )
            if d.device != first.device:
                raise ValueError(f"{role} of replica {i} is on {d.device}, replica 0 on {first.device}")
        self.device, self.is_image, self.size = first.device, first.is_image, len(first)
        self.input_shape = first.input_shape
        self.replicas = len(datasets)
        self.shared = all(_same_tensor(d.inputs, first.inputs) for d in datasets)
        self.inputs = first.inputs if self.shared else torch.stack([d.inputs for d in datasets])
        self.labels = torch.stack([d.labels for d in datasets])
        self.mean = torch.stack([d.mean for d in datasets])  # (R, 1, C, 1, 1) or (R, 1, D)
        self.std = torch.stack([d.std for d in datasets])
        self.same_normalization = bool((self.mean == self.mean[:1]).all() and (self.std == self.std[:1]).all())
        self.replica_index = torch.arange(self.replicas, device=self.device)[:, None]

    def __len__(self) -> int:
        return self.size

    def _normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """(R, B, ...) raw rows → normalized float inputs, as DeviceData.normalized does
        (a leading 1 instead of R takes replica 0's normalization)."""
        mean, std = self.mean[: len(batch)], self.std[: len(batch)]
        if self.is_image:
            batch = batch.permute(0, 1, 4, 2, 3).float().div_(255.0).sub_(mean).div_(std)
            # On CUDA the NHWC storage viewed as NCHW is the channels_last layout; on the
            # CPU a contiguous copy, as the Trainer uses there.
            return batch if self.device.type == "cuda" else batch.contiguous()
        return (batch.float() - mean) / std

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (R, B, ...) and labels (R, B) of replica r's samples ``index[r]``."""
        rows = self.inputs[index] if self.shared else self.inputs[self.replica_index, index]
        return self._normalize(rows), self.labels[self.replica_index, index]

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Samples ``start:stop`` in storage order: inputs, labels (R, B), and whether
        the inputs are one (B, ...) batch that all replicas see (shared inputs and
        normalization), else (R, B, ...)."""
        labels = self.labels[:, start:stop]
        if self.shared and self.same_normalization:
            return self._normalize(self.inputs[start:stop].unsqueeze(0))[0], labels, True
        if self.shared:
            raw = self.inputs[start:stop].unsqueeze(0).expand(self.replicas, -1, *self.inputs.shape[1:])
        else:
            raw = self.inputs[:, start:stop]
        return self._normalize(raw), labels, False


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (
        a.device == b.device and a.dtype == b.dtype and a.shape == b.shape
        and a.stride() == b.stride() and a.data_ptr() == b.data_ptr()
    )


def _as_list(value, replicas: int, role: str) -> list | None:
    if value is None:
        return None
    if isinstance(value, DeviceData):
        return [value] * replicas
    value = list(value)
    if len(value) != replicas:
        raise ValueError(f"{len(value)} {role} datasets for {replicas} replicas")
    return value


def clip_grad_norm_per_replica(grads: Sequence[torch.Tensor | None], max_norm: float) -> None:
    """Scale each replica's gradients (the leading dimension of every tensor) to at most
    ``max_norm`` in ℓ2 norm over all of its tensors, in place: what
    torch.nn.utils.clip_grad_norm_ does to each model alone."""
    grads = [g for g in grads if g is not None]
    if not grads:
        return
    norms = torch.stack([g.detach().flatten(1).float().pow(2).sum(1) for g in grads]).sum(0).sqrt()
    factors = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(factors.view(-1, *[1] * (g.ndim - 1)).to(g.dtype))


class PackedTrainer:
    """SGD training of R replicas of one configuration at once (see the module docstring).

    ``models`` are R initialized copies of one architecture (each from its own init
    seed); ``data`` is one :class:`DeviceData` for all replicas or one per replica
    (same size and shape: e.g. the same images with each replica's random labels, see
    :func:`with_labels`, or each seed's own split); ``seeds`` are the R data-order seeds,
    the ``seed`` a :class:`~randlabels.training.engine.Trainer` would get. ``test_data`` is
    None, one DeviceData, or one per replica. :meth:`fit` returns one
    :class:`~randlabels.training.fitloop.FitResult` per replica, as Trainer.fit would.
    ``config.augment`` crops / flips each replica's training batches with crops and
    flips drawn from that replica's own generator, as its Trainer would draw them.
    ``probe``, as a Trainer's, is called at each learning-curve row, on a model that
    holds the replica's current state.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        data: DeviceData | Sequence[DeviceData],
        config: TrainConfig,
        seeds: Sequence[int],
        test_data: DeviceData | Sequence[DeviceData] | None = None,
        log: logging.Logger | None = None,
        probe: Callable[[nn.Module], dict[str, float]] | None = None,
    ):
        models, seeds = list(models), [int(s) for s in seeds]
        if not models:
            raise ValueError("PackedTrainer needs at least one model")
        if len(seeds) != len(models):
            raise ValueError(f"{len(seeds)} seeds for {len(models)} models")
        self.replicas = len(models)
        self.config = config
        self.log = log or logging.getLogger("randlabels")
        self.data = _PackedData(_as_list(data, self.replicas, "training"), "training data")
        tests = _as_list(test_data, self.replicas, "test")
        self.test_data = _PackedData(tests, "test data") if tests is not None else None
        self.device = self.data.device
        if self.test_data is not None and self.test_data.device != self.device:
            raise ValueError(f"test data on {self.test_data.device}, training data on {self.device}")

        reference = models[0].state_dict()
        for i, model in enumerate(models[1:], start=1):
            state = model.state_dict()
            if type(model) is not type(models[0]) or [(k, v.shape, v.dtype) for k, v in state.items()] != [
                (k, v.shape, v.dtype) for k, v in reference.items()
            ]:
                raise ValueError(f"model {i} is not of the same architecture as model 0")
        models = [m.to(self.device) for m in models]
        params, buffers = stack_module_state(models)
        self.params: dict[str, torch.Tensor] = params  # (R, ...) leaves that require grad
        self.buffers: dict[str, torch.Tensor] = buffers
        self.state_keys = list(reference)
        # The module only lends its code: functional_call runs it on the stacked tensors.
        self.base = copy.deepcopy(models[0]).to("meta")
        self.probe = probe
        # A real copy that the probe sees, loaded with one replica's state at a time.
        self.probe_model = copy.deepcopy(models[0]) if probe is not None else None

        self.steps_per_epoch = math.ceil(len(self.data) / config.batch_size)
        self.total_steps = max(1, config.epochs * self.steps_per_epoch)
        self.optimizer = SGD(self.params.values(), config, self.steps_per_epoch)
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
        self.augmentation = Augmentation.from_settings(config.augment)
        if self.augmentation is not None:
            self.augmentation.check_inputs(self.data.input_shape)
        self.step_count = 0
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        def replica_loss(p, b, x, y):
            return F.cross_entropy(functional_call(self.base, (p, b), (x,)), y)

        def replica_logits(p, b, x):
            return functional_call(self.base, (p, b), (x,))

        self._train_losses = vmap(replica_loss, randomness="different")
        self._logits = {
            False: vmap(replica_logits, in_dims=(0, 0, 0), randomness="different"),
            True: vmap(replica_logits, in_dims=(0, 0, None), randomness="different"),
        }
        self._sum_loss = vmap(lambda logits, y: F.cross_entropy(logits.float(), y, reduction="sum"))
        if config.compile:
            self._train_losses = torch.compile(self._train_losses)

    # ------------------------------------------------------------------ steps

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def orders(self) -> torch.Tensor:
        """(R, N): each replica's seeded random order of its samples, made on the device."""
        n = len(self.data)
        return torch.stack([torch.randperm(n, generator=g, device=self.device) for g in self.generators])

    def training_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (R, B, ...) and labels (R, B) of replica r's samples ``index[r]``,
        augmented if the config asks for it: replica r draws its crops and flips from its
        own generator, in the order a Trainer with that seed would draw them."""
        inputs, labels = self.data.batch(index)
        if self.augmentation is None:
            return inputs, labels
        draws = [self.augmentation.draw(index.shape[1], g) for g in self.generators]
        dy, dx, flip = (torch.cat(parts) for parts in zip(*draws))
        flat = self.augmentation.transform(inputs.flatten(0, 1), dy, dx, flip)
        return flat.unflatten(0, inputs.shape[:2]), labels

    def step(self, orders: torch.Tensor, batch: int) -> torch.Tensor:
        """One SGD step of every replica on batch ``batch`` of its order; the R losses."""
        size = self.config.batch_size
        return self.train_step(*self.training_batch(orders[:, batch * size : (batch + 1) * size]))

    def train_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One SGD step of every replica on its (B, ...) slice of ``inputs`` (R, B, ...);
        returns the R losses as a device tensor (no host sync)."""
        self.base.train()
        with self._autocast():
            losses = self._train_losses(self.params, self.buffers, inputs, labels)
        self.optimizer.zero_grad()
        losses.sum().backward()
        if self.config.clip_grad_norm is not None:
            clip_grad_norm_per_replica([p.grad for p in self.params.values()], self.config.clip_grad_norm)
        self.optimizer.step()
        self.step_count += 1
        return losses.detach()

    @torch.no_grad()
    def evaluate(self, data: _PackedData) -> tuple[np.ndarray, np.ndarray]:
        """Per replica (mean loss, accuracy) over ``data``, in large no-grad batches.

        Each forward pass holds about ``eval_batch_size`` samples in all, as one
        Trainer's evaluation batch does, split among the replicas.
        """
        self.base.eval()
        total_loss = torch.zeros(self.replicas, device=self.device, dtype=torch.float64)
        correct = torch.zeros(self.replicas, device=self.device, dtype=torch.int64)
        step = max(1, math.ceil(self.config.eval_batch_size / self.replicas))
        for start in range(0, len(data), step):
            inputs, labels, shared = data.rows(start, start + step)
            with self._autocast():
                logits = self._logits[shared](self.params, self.buffers, inputs)
            total_loss += self._sum_loss(logits, labels).double()
            correct += (logits.argmax(dim=-1) == labels).sum(dim=-1)
        n = len(data)
        return total_loss.cpu().numpy() / n, correct.cpu().numpy() / n

    def replica_state(self, r: int) -> dict[str, torch.Tensor]:
        """A CPU copy of replica ``r``'s state dict (the keys of the original model)."""
        state = {}
        for key in self.state_keys:
            source = self.params[key] if key in self.params else self.buffers[key]
            state[key] = source[r].detach().to("cpu", copy=True)
        return state

    # ------------------------------------------------------------------ for fitloop.fit

    def evaluations(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per replica: loss and accuracy on its training data, and its test accuracy."""
        eval_loss, train_acc = self.evaluate(self.data)
        test_acc = self.evaluate(self.test_data)[1] if self.test_data is not None else np.full(self.replicas, np.nan)
        return eval_loss, train_acc, test_acc

    def row(self, evaluations, r: int, epoch: float, train_loss: float) -> dict:
        """Replica r's metrics row, as Trainer.row writes it."""
        eval_loss, train_acc, test_acc = evaluations
        loss = train_loss if not math.isnan(train_loss) else float(eval_loss[r])
        return {
            "epoch": epoch,
            "step": self.step_count,
            "loss": loss,
            "train_acc": float(train_acc[r]),
            "test_acc": float(test_acc[r]),
            "lr": self.optimizer.lr,
            "diverged": not math.isfinite(loss),
        }

    def curve_row(self, r: int, row: dict) -> dict:
        """A copy of ``row`` with the probe's values for replica r (the row itself if no probe)."""
        if self.probe is None:
            return row
        self.probe_model.load_state_dict(self.replica_state(r))
        return probed_row(row, self.probe(self.probe_model))

    def snapshot(self, progress: dict) -> dict:
        return {
            "progress": progress,
            "params": {k: v.detach().to("cpu", copy=True) for k, v in self.params.items()},
            "buffers": {k: v.detach().to("cpu", copy=True) for k, v in self.buffers.items()},
            "optimizer": self.optimizer.state_dict(),
            "generators": [g.get_state() for g in self.generators],
            "torch_rng": torch.get_rng_state(),
            "step_count": self.step_count,
            "replicas": self.replicas,
        }

    @torch.no_grad()
    def restore(self, saved: dict) -> dict:
        if saved.get("replicas") != self.replicas:
            raise ValueError(f"resume state holds {saved.get('replicas')} replicas, not {self.replicas}")
        for key, value in saved["params"].items():
            self.params[key].copy_(value)
        for key, value in saved["buffers"].items():
            self.buffers[key].copy_(value)
        self.optimizer.load_state_dict(saved["optimizer"])
        for generator, state in zip(self.generators, saved["generators"]):
            generator.set_state(state)
        torch.set_rng_state(saved["torch_rng"])
        self.step_count = saved["step_count"]
        return saved["progress"]

    def fit(self, monitor: Monitor | None = None, **options) -> list[FitResult]:
        """Train every replica for ``config.epochs`` epochs, one FitResult each:
        :func:`randlabels.training.fitloop.fit` with ``options``, the loop a Trainer runs too. A
        resume state holds the whole group; a ``monitor`` reports all replicas (one
        replica each in its ``replicas``)."""
        monitor = monitor or Monitor(log=self.log, replicas=[{"replica": r} for r in range(self.replicas)])
        return fitloop.fit(self, self.config.epochs, self.log, monitor, **options)
