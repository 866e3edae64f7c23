"""A CPU training job with glibc's default allocator settings against the job's own.

A job on the CPU (``device: cpu``, or ``auto`` without a GPU) keeps the host memory it
frees (:func:`randlabels.training.host_memory.keep_freed_memory`, called by
``job_device``). Both arms run the same work in a fresh process each, since the
settings hold for a whole process: ``fmnist_cnn``'s network (cnn2, 64 filters 5×5,
max-pool 4, 256 hidden units) trained by the library's ``Trainer`` for one epoch on
random 28×28 uint8 images with random labels, batch 32, evaluated on them and on a test
set of the same size at epochs 0 and 1 in batches of 2,048 (the default), one thread.

Baseline: glibc's defaults. Library: the job's settings. Trials alternate, baseline
then library; the figures are medians: wall seconds, system seconds (mostly the
kernel zero-filling pages), minor page faults and the process's peak resident memory
(torch's own ~0.4 GB included). The two arms compute the same numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch

from benchmarks.common import SRC, Sizes, log, median

ARMS = ("default", "kept")

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    sys.path.insert(0, {src!r})
    arm, images = sys.argv[1], int(sys.argv[2])
    if arm == "kept":
        from randlabels.training.host_memory import keep_freed_memory
        assert keep_freed_memory(), "this C library has no mallopt"
    import numpy as np
    import torch
    from randlabels.models.networks import build_model
    from randlabels.training.engine import DeviceData, TrainConfig, Trainer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    def data():
        x = rng.integers(0, 256, (images, 28, 28, 1), dtype=np.uint8)
        return DeviceData(x, rng.integers(0, 10, images), [0.29], [0.35])
    spec = {{"arch": "cnn2", "filters": 64, "kernel_size": 5, "hidden": 256, "pool": 4}}
    trainer = Trainer(build_model(spec, (1, 28, 28), 10), data(), TrainConfig(epochs=1, batch_size=32, lr=0.001),
                      seed=0, test_data=data())
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result = trainer.fit()
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({{"seconds": time.perf_counter() - start, "system_seconds": after.ru_stime - before.ru_stime,
                      "minor_faults": after.ru_minflt - before.ru_minflt, "peak_rss_gib": after.ru_maxrss / 2**20,
                      "final_loss": float(result.metrics["loss"].iloc[-1])}}))
    """
)


def _trial(arm: str, images: int) -> dict:
    code = CHILD.format(src=str(SRC))
    done = subprocess.run([sys.executable, "-c", code, arm, str(images)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"host_memory benchmark, arm {arm}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(device: torch.device, sizes: Sizes) -> list[dict]:
    images, trials = sizes.host_memory_images, sizes.host_memory_trials
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for trial in range(trials):
        for arm in ARMS:
            runs[arm].append(_trial(arm, images))
            log(f"host memory, trial {trial + 1}/{trials}, {arm}: {runs[arm][-1]['seconds']:.1f} s")
    losses = {arm: {r["final_loss"] for r in runs[arm]} for arm in ARMS}
    row = {"images": images, "trials": trials, "same_numbers": len(losses["default"] | losses["kept"]) == 1}
    for arm in ARMS:
        for key in ("seconds", "system_seconds", "minor_faults", "peak_rss_gib"):
            row[f"{arm}_{key}"] = median([r[key] for r in runs[arm]])
    row["ratio"] = row["default_seconds"] / row["kept_seconds"]
    return [row]
