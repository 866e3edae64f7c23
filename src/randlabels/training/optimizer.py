"""The optimizer of both trainers: SGD with momentum and weight decay, and a per-step
learning-rate schedule (:func:`lr_factor`).

The update is PyTorch's own: ``torch.optim.sgd.sgd``, the function that
``torch.optim.SGD.step`` calls, so every step equals ``torch.optim.SGD``'s bit for bit
(tests/test_optimizer.py). :class:`SGD` keeps only what that function needs between
steps: the momentum buffers and the number of steps taken, which places the schedule.
It is not a ``torch.optim.Optimizer``, because that class imports ``torch._dynamo``
when it is built: 1.5 to 1.8 s on a CPU, paid by every training job, most of a small
job's time (benchmarks/startup.py measures it).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch.optim.sgd import sgd as sgd_update

SCHEDULES = ("constant", "cosine")


def lr_factor(config, step: int, steps_per_epoch: int) -> float:
    """The learning rate's multiplier before step ``step`` (counted from 0) of a run
    with :class:`randlabels.training.engine.TrainConfig` ``config``: rising linearly to 1
    over the warm-up's steps, then the schedule (constant, or a cosine from 1 to 0 over
    the remaining steps)."""
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "cosine":
        span = max(1, config.epochs * steps_per_epoch - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))
    return 1.0


class SGD:
    """SGD with the momentum, weight decay and learning-rate schedule of a
    :class:`randlabels.training.engine.TrainConfig`, over ``params``.

    Steps as ``torch.optim.SGD`` with ``torch.optim.lr_scheduler.LambdaLR`` stepped
    after it: a parameter without a gradient is left alone, its momentum too.
    """

    def __init__(self, params: Iterable[torch.Tensor], config, steps_per_epoch: int):
        self.params = list(params)
        self.config, self.steps_per_epoch = config, steps_per_epoch
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)
        self.steps = 0

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return self.config.lr * lr_factor(self.config, self.steps, self.steps_per_epoch)

    def zero_grad(self) -> None:
        """Drop the gradients (set to None, as ``zero_grad(set_to_none=True)``)."""
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient, at :attr:`lr`."""
        live = [i for i, param in enumerate(self.params) if param.grad is not None]
        buffers = [self.momentum_buffers[i] for i in live]
        sgd_update(
            [self.params[i] for i in live],
            [self.params[i].grad for i in live],
            buffers,  # filled in on the first step
            weight_decay=self.config.weight_decay,
            momentum=self.config.momentum,
            lr=self.lr,
            dampening=0.0,
            nesterov=False,
            maximize=False,
        )
        for i, buffer in zip(live, buffers):
            self.momentum_buffers[i] = buffer
        self.steps += 1

    def state_dict(self) -> dict:
        """The steps taken and the momentum buffers (None where no step has touched one)."""
        return {"steps": self.steps, "momentum_buffers": list(self.momentum_buffers)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s ``state``, its buffers moved to their
        parameters' devices."""
        buffers = state["momentum_buffers"]
        if len(buffers) != len(self.params):
            raise ValueError(f"optimizer state holds {len(buffers)} momentum buffers, not {len(self.params)}")
        self.momentum_buffers = [
            None if buffer is None else buffer.to(device=param.device, dtype=param.dtype)
            for buffer, param in zip(buffers, self.params)
        ]
        self.steps = int(state["steps"])
