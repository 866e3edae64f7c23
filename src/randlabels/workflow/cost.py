"""What a config's named targets cost: images trained on per architecture, hours at
the training throughput a benchmark run measured, and the disk its weights take.

    python -m randlabels.workflow.cost configs/paper-cifar10.yaml
    python -m randlabels.workflow.cost configs/paper-cifar10.yaml --bench benchmarks/results/cuda.json

Each target is costed on its own (the experiments it lists, every pre-training and
fine-tuning run of them, counted once even when two of its experiments' needs overlap);
targets that share experiments share that cost when run together, so the total line
counts every experiment once. Only training steps are counted: evaluation passes,
statistics and job start-up come on top (a few percent for the paper's sizes).

``disk_gb`` is what the finished run keeps of files the size of a network: every
checkpoint set (one snapshot per checkpoint epoch) and every initialization file
(gaussian, layerwise, covariance). Tables, statistics and logs are small beside them;
the prepared datasets are not counted. While a group of packed seeds is unpacked, its
bundle holds the group's snapshots once more (it is deleted after).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import yaml

from randlabels.inits import variants
from randlabels.workflow import plan, targets

# The engine benchmark measures cnn2, vgg16 and resnet18; the other architectures are
# costed at the rate of the nearest measured one (fc is far cheaper than cnn2, so its
# cost is an upper bound).
BENCHMARKED_AS = {"cnn2": "cnn2", "fc": "cnn2", "vgg16": "vgg16", "vgg16_bn": "vgg16", "resnet18": "resnet18"}
# An own model (arch "module:function") has no benchmark: its images are counted under
# "custom" and its hours are not known (NaN).
UNBENCHMARKED = "custom"


def experiment_images(config: dict, exp: str) -> dict[str, int]:
    """Training images of every pre-training and fine-tuning run of ``exp``."""
    entry = plan.experiment(config, exp)
    split = plan.split_settings(config, exp)
    runs = len(entry["pretrain"]["labels"]) * len(entry["init_scales"]) * len(plan.seeds(config, exp))
    images = {"pretrain": runs * int(entry["pretrain"]["epochs"]) * int(split["upstream"]), "finetune": 0}
    if plan.has_finetune(config, exp):
        settings = plan.finetune_settings(config, exp)
        runs = (len(plan.finetune_tasks(config, exp)) * len(plan.finetune_variants(config, exp))
                * len(entry["init_scales"]) * len(plan.seeds(config, exp)))
        images["finetune"] = runs * int(settings["epochs"]) * int(split["downstream"])
    return images


def snapshot_bytes(config: dict, exp: str, shape: tuple[int, ...] | None = None) -> int | None:
    """Bytes of one snapshot of the network of ``exp`` (its state: parameters and
    buffers), built on the meta device; None where the input shape is not known from
    the config (an arrays file, a folder in ``color: auto``) and ``shape`` is not given."""
    shape = shape or plan.input_shape(config, exp)
    if shape is None:
        return None
    from randlabels.models.networks import check_model  # torch: only here

    model = check_model(plan.model_settings(config, exp), shape, plan.split_settings(config, exp)["upstream_classes"])
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def init_files(config: dict, exp: str) -> int:
    """How many initialization files fine-tuning of ``exp`` starts from (one per variant
    built before fine-tuning, init scale and seed; shared by its tasks)."""
    if not plan.has_finetune(config, exp):
        return 0
    built = [v for v in plan.finetune_variants(config, exp) if variants.parse(v).source not in (None, "checkpoints")]
    return len(built) * len(plan.scale_labels(config, exp)) * len(plan.seeds(config, exp))


def experiment_disk(config: dict, exp: str, shape: tuple[int, ...] | None = None) -> float:
    """Bytes of the checkpoint sets and initialization files of ``exp`` (NaN where the
    input shape is unknown; see :func:`snapshot_bytes`)."""
    snapshot = snapshot_bytes(config, exp, shape)
    if snapshot is None:
        return float("nan")
    checkpoints = len(plan.pretrain_settings(config, exp)["checkpoints"]) * len(plan.pretrain_runs(config, exp))
    return float(snapshot * (checkpoints + init_files(config, exp)))


def rates(bench_path: str | Path) -> tuple[dict[str, float], str]:
    """Engine images/s per benchmarked model, and the device they were measured on."""
    data = json.loads(Path(bench_path).read_text())
    rows = data["benchmarks"]["engine"]
    return ({row["model"]: float(row.get("best_engine_images_per_s", row["engine_images_per_s"])) for row in rows},
            str(data["machine"].get("device", "?")))


def cost_table(config: dict, bench_rates: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per target (and a total): images per architecture and, with rates, hours."""
    rows, everything = [], set()
    names = targets.configured(config) or list(config.get("targets", {}))
    disk = {exp: experiment_disk(config, exp) for name in names for exp in targets.experiments(config, name)}
    for name in names:
        exps = targets.experiments(config, name)
        everything.update(exps)
        rows.append(_row(config, name, exps, bench_rates, disk))
    if rows:
        rows.append(_row(config, "all targets", sorted(everything), bench_rates, disk))
    table = pd.DataFrame(rows)
    per_arch = [f"images_{m}" for m in dict.fromkeys([*BENCHMARKED_AS.values(), UNBENCHMARKED]) if f"images_{m}" in table]
    table[per_arch] = table[per_arch].fillna(0).astype("int64")
    return table[["target", "experiments", "images", *per_arch, *(["hours"] if bench_rates else []), "disk_gb"]]


def _row(config: dict, name: str, exps: list[str], bench_rates: dict[str, float] | None, disk: dict) -> dict:
    row: dict = {"target": name, "experiments": ", ".join(exps), "images": 0,
                 "disk_gb": sum(disk[exp] for exp in exps) / 1e9}
    seconds = 0.0
    for exp in exps:
        arch = plan.experiment(config, exp)["model"]["arch"]
        measured = BENCHMARKED_AS.get(arch, UNBENCHMARKED)
        count = sum(experiment_images(config, exp).values())
        row["images"] += count
        row[f"images_{measured}"] = row.get(f"images_{measured}", 0) + count
        if bench_rates is not None:
            seconds += count / bench_rates[measured] if measured in bench_rates else float("nan")
    if bench_rates is not None:
        row["hours"] = seconds / 3600
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m randlabels.workflow.cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a config file with a targets section")
    parser.add_argument("--bench", help="a benchmark JSON (benchmarks/results/DEVICE.json) for the throughput")
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    if not config.get("targets"):
        parser.error(f"{args.config} has no targets section")
    bench_rates, device = (rates(args.bench) if args.bench else (None, None))
    table = cost_table(config, bench_rates)
    pd.set_option("display.width", 200)
    print(table.drop(columns="experiments").to_string(
        index=False, formatters={c: "{:,}".format for c in table if c.startswith("images")},
        float_format=lambda v: f"{v:,.2f}"))
    if device:
        print(f"\nhours: training steps only, at the engine throughput measured on {device} ({args.bench})")
    print("disk_gb: checkpoint sets and initialization files the finished run keeps (NaN: input shape not"
          " known from the config)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
