"""docs/PERFORMANCE.md from the benchmarks' JSON results.

The document has one section per device kind (cpu, cuda) between marker comments; a
run rewrites its own section and keeps the other as it was, so `make bench` on a
laptop does not erase the figures `make bench-gpu` left from a GPU machine.
"""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.common import ROOT

DOCUMENT = ROOT / "docs" / "PERFORMANCE.md"
DEVICES = {"cpu": "CPU (`make bench`)", "cuda": "GPU (`make bench-gpu`)"}
NO_GPU = "not measured: no GPU available"

HEADER = """# Performance

What the training engine, replica packing, the statistics and the workflow achieve,
each measured side by side with a baseline in one run (baseline and library
alternating, medians of repeated trials). `make bench` measures on the CPU with small
sizes (under 10 minutes on a 2-core laptop); `make bench-gpu` measures at the issue's
sizes (50,000 CIFAR-shaped images) on a CUDA device. Each writes
`benchmarks/results/DEVICE.json` (all trials, git-ignored) and rewrites its own section
below; the code and what exactly each baseline is are in `benchmarks/` (one module per
benchmark, with the method in its docstring).

- **Engine vs baseline**: `randlabels.training.engine.Trainer` (dataset on the device as uint8,
  batches cut and normalized there, bf16 autocast and channels_last on CUDA, no
  host sync in the step) against a plain loop: a Dataset over the uint8 arrays with
  per-sample ToTensor + Normalize, a shuffling DataLoader, fp32, `loss.item()` per
  step. Same model, initialization, optimizer, batch 128 and number of steps.
  FLOPs per image are counted with `torch.utils.flop_counter.FlopCounterMode` over one
  training step (forward + backward); the peak is the GPU's dense bf16 tensor-core
  peak from its data sheet (H100 SXM and H200 989 TFLOP/s, H100 PCIe 756, A100 312;
  "unknown" for other devices).
- **Replica packing**: R seeds of one cnn2 configuration trained at once by
  `randlabels.training.packed.PackedTrainer` (torch.func vmap over stacked parameters) against
  R separate `Trainer` runs one after the other (one-model-per-process without the
  process start-ups). Aggregate images/s. The workflow trains this way when an
  experiment sets `pretrain: {pack_seeds: R}` (one `pretrain_packed` job per group of R
  seeds, see README, Configuration), and fine-tunes all variants of one run in one job
  with `finetune: {pack_variants: true}`.
- **Patch covariance**: `randlabels.analysis.covariance.patch_covariance` (float64, streaming) against
  numpy im2col (`sliding_window_view`) and XᵀX, float64, on the CPU.
- **DAG build**: wall-clock time of `snakemake -n` on the default config with more
  seeds, against the number of jobs.
- **Dataset preparation**: `randlabels.data` preparing all 70,000 Fashion-MNIST images
  (Debian's files, `source: torchvision`) and an image folder of 10,000 28×28 PNGs
  (`source: folder`), checksums and the HDF5 file included, against torchvision's
  dataset classes with ToTensor over a DataLoader (arrays only). Targets: at most 30 s
  and 60 s on 2 cores.
- **Host memory of a CPU job**: one epoch of `fmnist_cnn`'s network on 3,000 random
  28×28 images (evaluated in batches of 2,048, the default), in a fresh process with
  glibc's allocator defaults against one with the settings every CPU job applies
  (`randlabels.training.host_memory.keep_freed_memory`: freed memory kept for reuse
  instead of returned to the kernel and zero-filled again). One thread; on every device,
  since it is the host's work.
- **Building a network**: `randlabels.models.networks.build_model` against torchvision's
  whole VGG16 (ImageNet classifier included) with its head then replaced, one thread.
  Every training, statistics and construction job builds its network once.
- **Start-up of a training job**: a fresh process that imports torch and trains a small
  fully connected network for 20 steps, with `torch.optim.SGD` and `LambdaLR` against
  the library's `randlabels.training.optimizer.SGD` (the same update function, without
  `torch.optim.Optimizer`, which imports `torch._dynamo` when it is built). Whole-process
  wall seconds; one thread, on every device, since it is the host's work.
"""

TARGETS = [
    # (key, text, device the target is for)
    ("vgg16", "VGG16 ≥ 100k images/s training on one H100", "cuda"),
    ("resnet18", "ResNet18 ≥ 60k images/s training on one H100", "cuda"),
    ("packing", "cnn2 packed replicas ≥ 10× one-model-per-process throughput", "cuda"),
    ("engine_cnn2", "engine ≥ 5× baseline on cnn2", "cuda"),
    ("engine_vgg16", "engine ≥ 2× baseline on VGG16", "cuda"),
    ("cov_gpu", "patch covariance of all 3×3 patches of 50k images ≤ 1 s on a GPU", "cuda"),
    ("cov_cpu", "patch covariance of all 3×3 patches of 50k images ≤ 10 s on 2 CPU cores", "cpu"),
    ("dag", "`snakemake -n` on a 10k-job DAG ≤ 30 s", "any"),
]


def _num(value, digits=0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and value != value:
        return "NaN"
    return f"{value:,.{digits}f}"


def _ratio(value) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _engine_row(result: dict, model: str) -> dict | None:
    return next((r for r in result["benchmarks"].get("engine", []) if r["model"] == model), None)


def _target(result: dict, key: str) -> tuple[str, bool | None]:
    """(what was measured, whether it meets the target) for this result's device."""
    bench = result["benchmarks"]
    if key in ("vgg16", "resnet18"):
        row = _engine_row(result, key)
        if row is None:
            return "not run", None
        best = row.get("best_engine_images_per_s", row["engine_images_per_s"])
        return f"{_num(best)} images/s", best >= (100_000 if key == "vgg16" else 60_000)
    if key == "packing":
        rows = bench.get("packing", [])
        if not rows:
            return "not run", None
        best = max(rows, key=lambda r: r["ratio"])
        return f"{_ratio(best['ratio'])} ({best['config']}, R={best['replicas']})", best["ratio"] >= 10
    if key in ("engine_cnn2", "engine_vgg16"):
        row = _engine_row(result, key.split("_")[1])
        if row is None:
            return "not run", None
        return _ratio(row["ratio"]), row["ratio"] >= (5 if key == "engine_cnn2" else 2)
    if key in ("cov_gpu", "cov_cpu"):
        row = next((r for r in bench.get("covariance", []) if r["kernel"] == 3), None)
        if row is None:
            return "not run", None
        seconds = row["library_seconds_50k"]
        how = f" (extrapolated from {row['images']:,} images)" if row["seconds_50k_extrapolated"] else ""
        return f"{seconds:.2f} s{how}", seconds <= (1 if key == "cov_gpu" else 10)
    if key == "dag":
        rows = bench.get("workflow", [])
        if not rows:
            return "not run", None
        largest = max(rows, key=lambda r: r["jobs"])
        return f"{largest['seconds']:.1f} s ({largest['jobs']:,} jobs)", largest["seconds"] <= 30
    raise KeyError(key)


def _targets_table(result: dict) -> str:
    device = result["machine"]["device"]
    rows = []
    for key, text, where in TARGETS:
        measured, met = _target(result, key)
        if where in (device, "any"):
            status = "–" if met is None else ("met" if met else "**not met**")
            rows.append([text, measured, status])
        elif device == "cpu":
            rows.append([text, f"{NO_GPU} (CPU figure: {measured})", "–"])
        else:
            rows.append([text, "a CPU target: see the CPU section", "–"])
    return _table(["target (issue 6)", "measured here", "status"], rows)


def _machine(result: dict) -> str:
    m = result["machine"]
    rows = [["date", m["date"]], ["revision", m.get("revision") or "–"], ["CPU", f"{m['cpu']} ({m['cpu_count']} cores, torch uses {m['torch_threads']} threads)"]]
    if m["device"] == "cuda":
        peak = m.get("peak_bf16_tflops")
        rows += [
            ["GPU", f"{m['gpu']} ({m['gpu_memory_gib']} GiB)"],
            ["peak bf16 dense", f"{peak:g} TFLOP/s" if peak else "unknown"],
            ["CUDA / cuDNN / driver", f"{m.get('cuda')} / {m.get('cudnn')} / {m.get('driver') or '–'}"],
        ]
    rows += [
        ["Python / torch / numpy / snakemake", f"{m['python']} / {m['torch']} / {m['numpy']} / {m.get('snakemake')}"],
        ["platform", m["platform"]],
        ["benchmark wall time", f"{result.get('seconds', 0):.0f} s"],
    ]
    if m.get("load_average_start") and m.get("load_average_end"):
        start, end = m["load_average_start"][0], m["load_average_end"][0]
        busy = " (other processes were running: CPU figures are noisy)" if start > 0.5 * m["cpu_count"] else ""
        rows.append(["load average (1 min) at start / end", f"{start:g} / {end:g} on {m['cpu_count']} cores{busy}"])
    return _table(["", ""], rows)


def _engine(result: dict) -> str:
    rows = result["benchmarks"].get("engine")
    if not rows:
        return ""
    cuda = result["machine"]["device"] == "cuda"
    header = ["model", "engine images/s", "baseline images/s", "engine / baseline", "train GFLOP/image", "engine TFLOP/s"]
    if cuda:
        header += ["% of peak", "engine + compile images/s", "best engine images/s (batch)", "best % of peak"]
    table = []
    for r in rows:
        line = [r["model"], _num(r["engine_images_per_s"]), _num(r["baseline_images_per_s"]), _ratio(r["ratio"]),
                _num(r["train_flops_per_image"] / 1e9, 2), _num(r["engine_tflops"], 3 if not cuda else 1)]
        if cuda:
            fraction = r.get("engine_peak_fraction")
            best_fraction = r.get("best_engine_peak_fraction")
            sweep = {int(b): v for b, v in (r.get("engine_batch_sweep_images_per_s") or {}).items() if v}
            candidates = {128: r["engine_images_per_s"], **sweep}
            if r.get("compile_images_per_s"):
                candidates["128, compile"] = r["compile_images_per_s"]
            best_at = max(candidates, key=candidates.get)
            line += [
                "unknown" if fraction is None else f"{100 * fraction:.1f}%",
                _num(r.get("compile_images_per_s")) if "compile_error" not in r else "failed",
                f"{_num(candidates[best_at])} ({best_at})",
                "unknown" if best_fraction is None else f"{100 * best_fraction:.1f}%",
            ]
        table.append(line)
    first = rows[0]
    text = (f"### Engine vs baseline\n\n{first['samples']:,} random CIFAR-shaped images (uint8 32×32×3), "
            f"batch {first['batch']}, baseline DataLoader workers: {first['baseline_workers']}; "
            f"steps per trial × trials: " + ", ".join(f"{r['model']} {r['steps_per_trial']}×{r['trials']}" for r in rows)
            + ".\n\n" + _table(header, table))
    errors = [f"- {r['model']}: compile failed: {r['compile_error']}" for r in rows if "compile_error" in r]
    return text + ("\n\n" + "\n".join(errors) if errors else "")


def _packing(result: dict) -> str:
    rows = result["benchmarks"].get("packing")
    if not rows:
        return ""
    cuda = result["machine"]["device"] == "cuda"
    header = ["configuration", "R", "packed images/s", "R separate runs images/s", "packed / separate"]
    if cuda:
        header.append("packed peak memory")
    table = []
    for r in rows:
        line = [f"{r['config']} (batch {r['batch']})", r["replicas"], _num(r["packed_images_per_s"]),
                _num(r["separate_images_per_s"]), _ratio(r["ratio"])]
        if cuda:
            line.append(f"{r['packed_peak_memory_gib']:.2f} GiB")
        table.append(line)
    return (f"### Replica packing\n\n{rows[0]['steps_per_replica']} steps per replica per trial; "
            "aggregate images/s = replicas × batch × steps / seconds.\n\n" + _table(header, table))


def _covariance(result: dict) -> str:
    rows = result["benchmarks"].get("covariance")
    if not rows:
        return ""
    device = rows[0]["library_device"]
    header = ["patch", "images", f"library ({device}) M patches/s", "numpy (CPU) M patches/s", "library / numpy",
              "library s for 50k images", "numpy s for 50k images", "max rel. difference"]
    table = [[f"{r['kernel']}×{r['kernel']} (d={r['dim']})", _num(r["images"]), _num(r["library_patches_per_s"] / 1e6, 2),
              _num(r["numpy_patches_per_s"] / 1e6, 2), _ratio(r["ratio"]), _num(r["library_seconds_50k"], 2),
              _num(r["numpy_seconds_50k"], 2), f"{r['max_relative_difference']:.1e}"] for r in rows]
    note = " (seconds for 50k images extrapolated from the patches/s measured)" if rows[0]["seconds_50k_extrapolated"] else ""
    return (f"### Patch covariance\n\n'Same' padding: 1,024 patches per 32×32 image{note}.\n\n" + _table(header, table))


def _workflow(result: dict) -> str:
    rows = result["benchmarks"].get("workflow")
    if not rows:
        return ""
    table = [[r["seeds"], _num(r["jobs"]), f"{r['seconds']:.1f}", f"{r['ms_per_job']:.1f}", len(r["trial_seconds"])]
             for r in rows]
    return "### DAG build (`snakemake -n`)\n\n" + _table(["seeds", "jobs", "seconds", "ms per job", "trials"], table)


def _data(result: dict) -> str:
    rows = result["benchmarks"].get("data")
    if not rows:
        return ""
    table = [[r["dataset"], _num(r["images"]), f"{r['library_seconds']:.1f}", f"{r['baseline_seconds']:.1f}",
              _ratio(r["ratio"])] for r in rows]
    return ("### Dataset preparation\n\nLibrary: the prepared HDF5 file, checksums and normalization included; "
            "baseline: torchvision's dataset class with ToTensor over a DataLoader, arrays only.\n\n"
            + _table(["source", "images", "library s", "baseline s", "baseline / library"], table))


def _models(result: dict) -> str:
    rows = result["benchmarks"].get("models")
    if not rows:
        return ""
    table = [[", ".join(f"{k}={v}" for k, v in r["spec"].items()), f"{r['library_seconds']:.2f}",
              f"{r['baseline_seconds']:.2f}", _ratio(r["ratio"])] for r in rows]
    return ("### Building a network\n\nOne CPU thread, 32×32×3 input, 10 classes. Library: `build_model`; "
            "baseline: torchvision's whole VGG16, then its head replaced.\n\n"
            + _table(["spec", "library s", "baseline s", "baseline / library"], table))


def _host_memory(result: dict) -> str:
    rows = result["benchmarks"].get("host_memory")
    if not rows:
        return ""
    table = []
    for r in rows:
        for arm, name in (("default", "glibc defaults"), ("kept", "freed memory kept (a CPU job)")):
            table.append([name, f"{r[f'{arm}_seconds']:.1f}", f"{r[f'{arm}_system_seconds']:.1f}",
                          _num(r[f"{arm}_minor_faults"]), f"{r[f'{arm}_peak_rss_gib']:.2f}"])
    first = rows[0]
    same = "the same" if first["same_numbers"] else "**different**"
    return (f"### Host memory of a CPU job\n\nOne epoch of `fmnist_cnn`'s network on {first['images']:,} images "
            f"(batch 32, evaluation in batches of 2,048), one thread, a fresh process per trial; medians of "
            f"{first['trials']} trials. Default / kept: {_ratio(first['ratio'])}; final losses {same}.\n\n"
            + _table(["allocator", "seconds", "system seconds", "minor page faults", "peak memory GiB"], table))


def _startup(result: dict) -> str:
    rows = result["benchmarks"].get("startup")
    if not rows:
        return ""
    r = rows[0]
    table = [[name, f"{r[f'{arm}_seconds']:.2f}", f"{r[f'{arm}_script_seconds']:.2f}",
              "yes" if r[f"{arm}_dynamo_imported"] else "no"]
             for arm, name in (("torch_optim", "torch.optim.SGD + LambdaLR"), ("library", "randlabels SGD"))]
    same = "the same" if r["same_numbers"] else "**different**"
    return (f"### Start-up of a training job\n\nA fresh process per trial, 20 steps of a small network; medians of "
            f"{r['trials']} trials. torch.optim / library: {_ratio(r['ratio'])}, {r['saved_seconds']:.2f} s saved "
            f"per job; final losses {same}.\n\n"
            + _table(["optimizer", "process seconds", "script seconds", "imports torch._dynamo"], table))


def _resume(result: dict) -> str:
    rows = result["benchmarks"].get("resume")
    if not rows:
        return ""
    r = rows[0]
    table = [[name, f"{r[f'{arm}_epoch_seconds']:.2f}", f"{r[f'{arm}_saves']:g}"]
             for arm, name in (("every_epoch", "a save after every epoch"),
                               ("floor", f"saves at least {r['floor_seconds']:g} s apart (the default)"))]
    return (f"### Resume saves\n\nVGG16 on {r['images']:,} random CIFAR-shaped images per epoch, {r['epochs']} epochs, "
            f"batch 128; medians of {r['trials']} trials. One save of the weights and momentum: {r['save_mb']:.0f} MB "
            f"in {r['save_seconds']:.2f} s. Every epoch / floor: {_ratio(r['ratio'])}.\n\n"
            + _table(["resume saves", "seconds per epoch", "saves per run"], table))


def render_section(result: dict) -> str:
    device = result["machine"]["device"]
    parts = [f"## {DEVICES[device]}", _machine(result), "### Targets", _targets_table(result)]
    parts += [p for p in (_engine(result), _packing(result), _covariance(result), _workflow(result), _data(result),
                               _models(result), _host_memory(result), _startup(result), _resume(result)) if p]
    notes = result.get("notes") or []
    if notes:
        parts.append("Notes:\n\n" + "\n".join(f"- {n}" for n in notes))
    return "\n\n".join(parts)


def placeholder(device: str) -> str:
    if device == "cuda":
        rows = [[text, NO_GPU, "–"] for _, text, where in TARGETS if where in ("cuda",)]
        return (f"## {DEVICES[device]}\n\nNot measured: no GPU available. Run `make bench-gpu` on a machine "
                "with a CUDA device to fill this section.\n\n" + _table(["target (issue 6)", "measured", "status"], rows))
    return f"## {DEVICES[device]}\n\nNot measured yet: run `make bench`."


def _marker(device: str, end: bool) -> str:
    return f"<!-- {'END' if end else 'BEGIN'} {device} results (written by python -m benchmarks) -->"


def update_document(result: dict, path: Path = DOCUMENT) -> Path:
    """Rewrite ``path`` with this result's section, keeping the other device's section
    and whatever follows the last section (sections written by hand)."""
    device = result["machine"]["device"]
    existing = path.read_text() if path.exists() else ""
    sections = {}
    for name in DEVICES:
        match = re.search(re.escape(_marker(name, False)) + r"\n(.*?)\n" + re.escape(_marker(name, True)),
                          existing, re.DOTALL)
        sections[name] = match.group(1) if match else placeholder(name)
    sections[device] = render_section(result)
    ends = [existing.rfind(_marker(name, True)) + len(_marker(name, True))
            for name in DEVICES if _marker(name, True) in existing]
    trailer = existing[max(ends):].strip() if ends else ""
    text = HEADER.rstrip() + "\n"
    for name in DEVICES:
        text += f"\n{_marker(name, False)}\n{sections[name].strip()}\n{_marker(name, True)}\n"
    if trailer:
        text += f"\n{trailer}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
