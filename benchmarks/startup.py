"""A small training job's start-up: torch.optim's SGD against the library's optimizer.

``torch.optim.Optimizer`` imports ``torch._dynamo`` when it is built; the library's
:class:`randlabels.training.optimizer.SGD` runs the same update function
(``torch.optim.sgd.sgd``) without that class. Both arms run the same work in a fresh
process each, since an import is paid once per process, as by each workflow job: import
torch, build a small fully connected network (digits-sized, 64 inputs, 10 classes), then
train it for 20 steps of batch 32 with momentum 0.9, weight decay 5e-4 and a per-step
schedule (LambdaLR in the baseline). One thread.

Baseline: ``torch.optim.SGD`` with ``torch.optim.lr_scheduler.LambdaLR``. Library: the
library's ``SGD``. Trials alternate, baseline then library; the figures are medians of
the whole process's wall seconds (start to exit, measured by the parent) and of the
seconds from the first line of the script to the end of training. The two arms compute
the same numbers: the final losses are compared bit for bit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import torch

from benchmarks.common import SRC, Sizes, log, median

ARMS = ("torch_optim", "library")

CHILD = textwrap.dedent(
    """
    import json, sys, time
    start = time.perf_counter()
    sys.path.insert(0, {src!r})
    import torch
    from torch.nn import functional as F
    from randlabels.models.networks import build_model, initialize
    from randlabels.training.engine import TrainConfig
    from randlabels.training.optimizer import SGD, lr_factor

    torch.set_num_threads(1)
    arm, steps = sys.argv[1], 20
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine")
    model = initialize(build_model({{"arch": "fc", "widths": [128, 128]}}, (64,), 10), 1.0, 0)
    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.randn(steps * 32, 64, generator=generator), torch.randint(0, 10, (steps * 32,), generator=generator)
    if arm == "torch_optim":
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(config, s, steps))
    else:
        optimizer = SGD(model.parameters(), config, steps)
    for step in range(steps):
        batch = slice(step * 32, (step + 1) * 32)
        loss = F.cross_entropy(model(inputs[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if arm == "torch_optim":
            schedule.step()
    print(json.dumps({{"script_seconds": time.perf_counter() - start, "final_loss": loss.item(),
                      "dynamo_imported": "torch._dynamo" in sys.modules}}))
    """
)


def _trial(arm: str) -> dict:
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD.format(src=str(SRC)), arm], capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"startup benchmark, arm {arm}: {done.stderr.strip()[-2000:]}")
    return {"seconds": seconds, **json.loads(done.stdout.strip().splitlines()[-1])}


def run(device: torch.device, sizes: Sizes) -> list[dict]:  # noqa: ARG001 (a host benchmark on every device)
    trials = sizes.startup_trials
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for trial in range(trials):
        for arm in ARMS:
            runs[arm].append(_trial(arm))
            log(f"startup, trial {trial + 1}/{trials}, {arm}: {runs[arm][-1]['seconds']:.2f} s")
    losses = {r["final_loss"] for arm in ARMS for r in runs[arm]}
    row = {"trials": trials, "same_numbers": len(losses) == 1}
    for arm in ARMS:
        row[f"{arm}_seconds"] = median([r["seconds"] for r in runs[arm]])
        row[f"{arm}_script_seconds"] = median([r["script_seconds"] for r in runs[arm]])
        row[f"{arm}_dynamo_imported"] = all(r["dynamo_imported"] for r in runs[arm])
    row["saved_seconds"] = row["torch_optim_seconds"] - row["library_seconds"]
    row["ratio"] = row["torch_optim_seconds"] / row["library_seconds"]
    return [row]
