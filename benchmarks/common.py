"""What every benchmark shares: sizes per device, timing, the machine, GPU peaks."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:  # the benchmarks run from a checkout, installed or not
    sys.path.insert(0, str(SRC))

# CIFAR-10's channel statistics: the normalization both training loops apply.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class Sizes:
    """How much work each benchmark does on one kind of device.

    ``engine_runs`` maps a model to (warm-up steps, trials, steps per trial); each
    trial times both loops, engine and baseline alternating.
    """

    engine_samples: int
    engine_runs: dict[str, tuple[int, int, int]]
    baseline_workers: int
    engine_compile: bool
    engine_batch_sweep: list[int]
    packing_configs: list[str]
    packing_replicas: list[int]
    packing_steps: tuple[int, int, int]  # warm-up, trials, steps per trial
    covariance_images: int
    covariance_trials: int
    dag_seeds: list[int]
    dag_trials: list[int]
    notes: list[str] = field(default_factory=list)
    # Dataset preparation (benchmarks/data.py): the sizes on every device.
    data_folder_images: int = 10_000
    data_trials: int = 2
    # Allocator settings of a CPU job (benchmarks/host_memory.py): on the host, every device.
    host_memory_images: int = 3000
    host_memory_trials: int = 3
    # A small training job's start-up (benchmarks/startup.py): on the host, every device.
    startup_trials: int = 5
    # Resume saves of a VGG16 run (benchmarks/resume.py): images per epoch, epochs, trials.
    resume_images: int = 128
    resume_epochs: int = 3
    resume_trials: int = 2


SIZES = {
    # `make bench`: about 6 minutes on a 2-core laptop CPU.
    "cpu": Sizes(
        engine_samples=2048,
        engine_runs={"cnn2": (2, 3, 3), "vgg16": (1, 2, 1), "resnet18": (1, 2, 1)},
        baseline_workers=0,
        engine_compile=False,
        engine_batch_sweep=[],
        packing_configs=["digits_cnn2"],
        packing_replicas=[1, 4, 16],
        packing_steps=(3, 3, 10),
        covariance_images=1000,
        covariance_trials=2,
        dag_seeds=[4, 41, 416],
        dag_trials=[3, 2, 1],
        notes=[
            "CPU sizes are small so that `make bench` ends within 10 minutes on 2 cores: "
            "2,048 random CIFAR-shaped images and a few steps per trial for the engine, "
            "1,000 images for the patch covariance (its time for 50k images is "
            "extrapolated). The baseline's DataLoader runs in the main process "
            "(num_workers=0), since workers would take the cores the model needs.",
        ],
    ),
    # `make bench-gpu`: the sizes (50k CIFAR-shaped images) on one CUDA device.
    "cuda": Sizes(
        engine_samples=50_000,
        engine_runs={"cnn2": (30, 5, 100), "vgg16": (20, 5, 50), "resnet18": (20, 5, 50)},
        resume_images=20_000,  # the paper configs' VGG16 upstream set
        resume_epochs=4,
        resume_trials=3,
        baseline_workers=4,
        engine_compile=True,
        engine_batch_sweep=[256, 512, 1024],
        packing_configs=["digits_cnn2", "cifar_cnn2_small"],
        packing_replicas=[1, 4, 16, 64],
        packing_steps=(20, 3, 100),
        covariance_images=50_000,
        covariance_trials=3,
        dag_seeds=[4, 41, 416],
        dag_trials=[3, 3, 2],
        notes=[
            "The baseline's DataLoader uses 4 worker processes and pinned memory, the "
            "usual setting of papers' CIFAR code.",
        ],
    ),
}


# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, FLOP/s.
# Matched against torch.cuda.get_device_name() in order; first match wins.
PEAK_BF16 = [
    (("H100", "PCIE"), 756e12),
    (("H100", "NVL"), 835e12),
    (("H100",), 989e12),  # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    (("H200",), 989e12),  # H200 SXM (and GH200): same compute as H100 SXM
    (("A100",), 312e12),
]


def peak_bf16_flops(device_name: str) -> float | None:
    """The peak dense bf16 FLOP/s of a GPU by its name, or None when unknown."""
    name = device_name.upper()
    for parts, peak in PEAK_BF16:
        if all(part in name for part in parts):
            return peak
    return None


def resolve(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks: --device cuda, but torch sees no CUDA device")
    return torch.device(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of ``fn()``, the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median(values) -> float:
    return float(statistics.median(values))


def random_images(n: int, shape=(32, 32, 3), classes: int = 10, seed: int = 0):
    """Random uint8 NHWC images and labels: the shapes of CIFAR-10, none of its content
    (throughput does not depend on pixel values)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, classes, n)


def free_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_revision() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def machine(device: torch.device) -> dict:
    """The machine and software the figures were measured on."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "snakemake": _version("snakemake"),
        "revision": _git_revision(),
        "device": device.type,
        # Other processes' load shows here: CPU figures taken at a load above the core
        # count are slower than the machine can do, baseline and library alike.
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        peak = peak_bf16_flops(props.name)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_count=torch.cuda.device_count(),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            peak_bf16_tflops=None if peak is None else peak / 1e12,
        )
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError):
            info["driver"] = None
    return info


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
