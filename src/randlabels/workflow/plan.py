"""What the workflow builds for a config: file paths, targets and per-stage settings.

The Snakefile asks this module which files to make and which settings each stage
gets, so the logic is plain, testable Python. Settings are returned with every default
filled in; they are what a rule passes as ``params:``, so Snakemake reruns a stage
exactly when one of *its* settings changes.
"""

from __future__ import annotations

import functools
import json
import os

from randlabels.models.architectures import is_factory
from randlabels.plots import FIGURES

RESULTS = "results"

# Defaults of optional keys (the schema documents the same values; a test checks it).
TRAINING_DEFAULTS = {
    "batch_size": 128,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": "constant",
    "eval_batch_size": 2048,
    "compile": False,
}
# Keys of a pretrain or finetune section that say how a training job runs, not what it
# computes: left out of the training settings (the rules' params), so that changing them
# reruns nothing; the job reads them from the config (randlabels.training.job.resume_policy).
JOB_KEYS = ("resume_every", "resume_min_seconds")
# Training keys added after results existed, off unless given (TrainConfig holds their
# neutral defaults): left out of the settings when absent, so that a run made before
# they existed keeps its params and is not rerun.
TRAINING_OPTIONAL = {"warmup_epochs": 0, "clip_grad_norm": None}
# Keys of an experiment's `pretrain` section that are not training settings: how the
# seeds are grouped into jobs (see seed_groups), and which label kinds are pre-trained
# (each run trains one, its `labels` wildcard). Not among pretrain_settings, so the
# plain `pretrain` rule's params do not depend on them: adding real labels reruns no
# random-label run.
PRETRAIN_DEFAULTS = {"pack_seeds": 1}
PRETRAIN_RUN_KEYS = ("labels",)
SPLIT_DEFAULTS = {"test": None, "upstream_classes": 10, "downstream_classes": 10}
STATS_DEFAULTS = {"layers": ["first"], "batch_size": 512, "precision": "float64"}
SAMPLE_DEFAULTS = {"layer": "first", "pool_seeds": False, "zero_mean": False}
FINETUNE_DEFAULTS = {
    "labels": "real",
    "from_labels": "random",
    "eval_every": 10,
    "target_accuracy": 0.9,
    "reset_head": True,
    "probe_samples": 1024,
}
# Keys of an experiment's `finetune` section that say which downstream tasks exist
# (see finetune_tasks), which initializations are fine-tuned (finetune_variants) and
# from which pre-training (from_labels: the sources' paths carry it), what the summary
# measures (target_accuracy), or which runs share a job (pack_variants), not how one
# run trains; left out of finetune_settings, so that a fine-tuning job's params do not
# depend on them: adding a variant or changing the target accuracy reruns no training.
TASK_KEYS = ("labels", "classes")
NOT_TRAINING_KEYS = ("variants", "from_labels", "target_accuracy")
FINETUNE_JOB_DEFAULTS = {"pack_variants": False}
CONSTRUCT_DEFAULTS = {"batch_size": 512, "samples": 10000}
RESOURCE_DEFAULTS = {
    "training": {"mem_mb": 4000, "runtime": 120, "cpus_per_task": 2, "gpu": 0},
    "light": {"mem_mb": 2000, "runtime": 30, "cpus_per_task": 1},
}
DATASET_DEFAULTS = {
    "gaussian": {"seed": 0, "num_classes": 10},
    "torchvision": {"download": True},
    "folder": {"resize": None, "color": "auto"},
    "arrays": {"num_classes": None},
    "imagenet": {"root": "data/imagenet", "resolution": 32},
}

PATHS = {
    "dataset": RESULTS + "/data/{dataset}.h5",
    # A per-seed dataset (gaussian, per_seed: true): one file per experiment seed.
    "dataset_draw": RESULTS + "/data/{dataset}/seed{seed}.h5",
    "split": RESULTS + "/{exp}/splits/seed{seed}.h5",
    "checkpoints": RESULTS + "/{exp}/pretrain/{labels}/scale{scale}/seed{seed}/checkpoints.pt",
    "pretrain_metrics": RESULTS + "/{exp}/pretrain/{labels}/scale{scale}/seed{seed}/metrics.tsv",
    # The checkpoint sets and metrics of a group of seeds trained in one job
    # (pack_seeds > 1); unpacked into the per-seed files above.
    "pretrain_packed": RESULTS + "/{exp}/pretrain/{labels}/scale{scale}/packed/seeds{first}-{last}.pt",
    "stats": RESULTS + "/{exp}/stats/{labels}/scale{scale}/seed{seed}.h5",
    "gaussian_init": RESULTS + "/{exp}/init/gaussian/scale{scale}/seed{seed}.pt",
    # Initializations built from data covariances (layerwise{k}, covariance{k}).
    "constructed_init": RESULTS + "/{exp}/init/{construct}/scale{scale}/seed{seed}.pt",
    "finetune": RESULTS + "/{exp}/finetune/{task}/{variant}/scale{scale}/seed{seed}.tsv",
    # The learning curves of every variant of one (task, scale, seed) trained in one job
    # (pack_variants); unpacked into the per-variant tables above.
    "finetune_packed": RESULTS + "/{exp}/finetune/{task}/packed/scale{scale}/seed{seed}.tsv",
    # Resumable training state: beside the outputs, never one of them (Snakemake
    # deletes a job's outputs before rerunning it).
    "pretrain_resume": RESULTS + "/_resume/{exp}/pretrain/{labels}/scale{scale}/seed{seed}.pt",
    "pretrain_packed_resume": RESULTS + "/_resume/{exp}/pretrain/{labels}/scale{scale}/packed/seeds{first}-{last}.pt",
    "finetune_resume": RESULTS + "/_resume/{exp}/finetune/{task}/{variant}/scale{scale}/seed{seed}.pt",
    "finetune_packed_resume": RESULTS + "/_resume/{exp}/finetune/{task}/packed/scale{scale}/seed{seed}.pt",
    # What a training job shows while it runs (randlabels.training.progress): a live metrics file
    # and, with tensorboard: true, TensorBoard event files (a folder per seed); neither
    # is an output, so both survive a failed job.
    "pretrain_live": RESULTS + "/_live/{exp}/pretrain/{labels}/scale{scale}/seed{seed}.jsonl",
    "pretrain_packed_live": RESULTS + "/_live/{exp}/pretrain/{labels}/scale{scale}/packed/seeds{first}-{last}.jsonl",
    "finetune_live": RESULTS + "/_live/{exp}/finetune/{task}/{variant}/scale{scale}/seed{seed}.jsonl",
    "finetune_packed_live": RESULTS + "/_live/{exp}/finetune/{task}/packed/scale{scale}/seed{seed}.jsonl",
    "pretrain_tensorboard": RESULTS + "/_tensorboard/{exp}/pretrain/{labels}/scale{scale}",
    "finetune_tensorboard": RESULTS + "/_tensorboard/{exp}/finetune/{task}/{variant}/scale{scale}",
    "finetune_packed_tensorboard": RESULTS + "/_tensorboard/{exp}/finetune/{task}/packed/scale{scale}/seed{seed}",
    "table": RESULTS + "/{exp}/tables/{table}.tsv",
    "figure": RESULTS + "/{exp}/figures/{figure}.png",
    # The paper's experiments as named targets (see randlabels.workflow.targets).
    "target_table": RESULTS + "/paper/{target}.tsv",
    "target_figure": RESULTS + "/paper/{target}.png",
}

TASK_PATTERN = r"real|random\d+"


def canonical(value):
    """A copy with dict keys sorted at every level.

    Snakemake compares ``params`` by their printed form, so key order would count
    as a change; reformatting a config file must not rerun anything.
    """
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    return value


def path(kind: str, **wildcards) -> str:
    """A concrete path of ``kind`` (see PATHS)."""
    return PATHS[kind].format(**wildcards)


def scale_label(scale: float) -> str:
    """How an init scale appears in paths: 1.0 → '1', 0.5 → '0.5'."""
    return f"{float(scale):g}"


def scale_value(config: dict, exp: str, label: str) -> float:
    """The configured init scale whose label is ``label``."""
    for scale in config["experiments"][exp]["init_scales"]:
        if scale_label(scale) == label:
            return float(scale)
    raise ValueError(f"experiment {exp!r} has no init scale {label!r}")


def experiment(config: dict, exp: str) -> dict:
    return config["experiments"][exp]


def per_seed(config: dict, name: str) -> bool:
    """Whether dataset ``name`` is drawn afresh for each experiment seed (a Gaussian
    dataset with ``per_seed: true``): one file per seed, ``PATHS["dataset_draw"]``."""
    return bool(config["datasets"][name].get("per_seed", False))


def dataset_settings(config: dict, name: str, seed: int | None = None) -> dict:
    """A dataset's entry with defaults filled in.

    A per-seed dataset (:func:`per_seed`) is prepared once per experiment seed: its
    settings get ``draw_seed``, the ``seed`` given, which every other dataset refuses.
    ``per_seed: false`` (the default) is left out, so the settings, and with them the
    prepared file, are exactly what they were before the option existed.
    """
    entry = config["datasets"][name]
    settings = {**DATASET_DEFAULTS.get(entry["source"], {}), **entry}
    if per_seed(config, name) != (seed is not None):
        wanted = "needs the seed it is drawn for" if per_seed(config, name) else "is not drawn per seed"
        raise ValueError(f"dataset {name!r} {wanted}, got seed {seed!r}")
    if seed is not None:
        settings["draw_seed"] = int(seed)
    else:
        settings.pop("per_seed", None)
    return canonical(settings)


def dataset_file(config: dict, exp: str, seed: int | str) -> str:
    """The prepared dataset file that seed ``seed`` of ``exp`` reads: the dataset's
    one file, or, for a per-seed dataset, that seed's own draw."""
    name = experiment(config, exp)["dataset"]
    if per_seed(config, name):
        return path("dataset_draw", dataset=name, seed=int(seed))
    return path("dataset", dataset=name)


def datasets_pattern(config: dict, drawn_per_seed: bool) -> str:
    """A wildcard constraint matching the datasets that are (or are not) drawn per
    seed; one that matches nothing when there are none."""
    names = [name for name in config["datasets"] if per_seed(config, name) == drawn_per_seed]
    return "|".join(names) if names else "(?!)"


def model_settings(config: dict, exp: str) -> dict:
    return canonical(experiment(config, exp)["model"])


def split_settings(config: dict, exp: str) -> dict:
    return canonical({**SPLIT_DEFAULTS, **experiment(config, exp)["split"]})


def pretrain_settings(config: dict, exp: str) -> dict:
    """Training settings plus the checkpoint epochs (always including 0 and the last).

    ``pack_seeds`` and ``labels`` are left out: they say which seeds share a job and
    which runs exist, not how one is trained.
    """
    section = {**TRAINING_DEFAULTS, **experiment(config, exp)["pretrain"]}
    for key in (*PRETRAIN_DEFAULTS, *PRETRAIN_RUN_KEYS, *JOB_KEYS):
        section.pop(key, None)
    epochs = int(section["epochs"])
    wanted = set(section.get("checkpoints", [])) | {0, epochs}
    section["checkpoints"] = sorted(e for e in wanted if e <= epochs)
    return canonical(section)


def stats_settings(config: dict, exp: str) -> dict:
    return canonical({**STATS_DEFAULTS, **experiment(config, exp).get("stats", {})})


def sample_settings(config: dict, exp: str) -> dict:
    return canonical({**SAMPLE_DEFAULTS, **experiment(config, exp).get("sample", {})})


def finetune_settings(config: dict, exp: str) -> dict:
    """How one fine-tuning run trains (the task it trains on is a wildcard, see
    finetune_tasks; where it starts, finetune_variants and from_labels)."""
    section = {**TRAINING_DEFAULTS, **FINETUNE_DEFAULTS, **experiment(config, exp)["finetune"]}
    for key in (*TASK_KEYS, *NOT_TRAINING_KEYS, *FINETUNE_JOB_DEFAULTS, *JOB_KEYS):
        section.pop(key, None)
    return canonical(section)


def _finetune_entry(config: dict, exp: str, key: str):
    return {**FINETUNE_DEFAULTS, **experiment(config, exp)["finetune"]}[key]


def finetune_variants(config: dict, exp: str) -> list[str]:
    """The initializations ``exp`` fine-tunes from (finetune.variants), in config order."""
    return list(_finetune_entry(config, exp, "variants"))


def target_accuracy(config: dict, exp: str):
    """The downstream training accuracy whose steps-to-reach the transfer summary
    compares: a number, or ``{"from_chance": f}`` (finetune.target_accuracy)."""
    return canonical(_finetune_entry(config, exp, "target_accuracy"))


def finetune_tasks(config: dict, exp: str) -> list[str]:
    """The downstream tasks of ``exp``: 'real' (the dataset's labels) and/or
    'random{C}' (fresh random labels over C classes) for each C of finetune.classes
    (default: split.downstream_classes)."""
    section = experiment(config, exp)["finetune"]
    kinds = section.get("labels", FINETUNE_DEFAULTS["labels"])
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    classes = section.get("classes") or [split_settings(config, exp)["downstream_classes"]]
    tasks = []
    for kind in kinds:
        tasks += ["real"] if kind == "real" else [f"random{int(c)}" for c in classes]
    return tasks


def task_classes(task: str) -> int | None:
    """Classes of a random-label task ('random10' → 10); None for 'real'."""
    return None if task == "real" else int(task[len("random"):])


def from_labels(config: dict, exp: str) -> str:
    """The pre-training (random or real labels) that fine-tuning transfers from."""
    return _finetune_entry(config, exp, "from_labels")


def construct_settings(config: dict, exp: str) -> dict:
    return canonical({**CONSTRUCT_DEFAULTS, **experiment(config, exp).get("construct", {})})


def resources(config: dict, kind: str) -> dict:
    """Resources of a job kind ('training' or 'light'), config over defaults."""
    return {**RESOURCE_DEFAULTS[kind], **config.get("resources", {}).get(kind, {})}


def has_finetune(config: dict, exp: str) -> bool:
    return "finetune" in experiment(config, exp)


def is_conv(config: dict, exp: str) -> bool:
    """Whether the measured first layer is a convolution (eigen-filters are images).

    For an own model (a factory path) the model is built cheaply
    (:func:`randlabels.models.networks.check_model`) where the input shape is known before the
    data are prepared (:func:`input_shape`); where it is not, or the build fails (the
    config check reports that), the answer is no (no eigen-filter figure).
    """
    arch = experiment(config, exp)["model"]["arch"]
    if not is_factory(arch):
        return arch != "fc"
    shape = input_shape(config, exp)
    if shape is None or len(shape) != 3:
        return False
    spec = json.dumps(model_settings(config, exp), sort_keys=True, default=str)
    return _first_layer_is_conv(spec, shape, split_settings(config, exp)["upstream_classes"])


@functools.lru_cache(maxsize=None)
def _first_layer_is_conv(spec_json: str, shape: tuple, num_classes: int) -> bool:
    """Cached: the Snakefile asks once per experiment and target."""
    from torch import nn

    from randlabels.models.networks import check_model, weight_layers

    try:
        model = check_model(json.loads(spec_json), shape, num_classes)
    except Exception:  # noqa: BLE001 - reported by the config check
        return False
    return isinstance(model.get_submodule(weight_layers(model)[0]), nn.Conv2d)


# The input shape a model sees, for datasets where it is known before they are prepared
# (by source, or torchvision's class name): (C, H, W). The config check builds an own
# model (a factory) with it; see input_shape.
KNOWN_INPUT_SHAPES = {
    "digits": (1, 8, 8),
    "MNIST": (1, 28, 28),
    "FashionMNIST": (1, 28, 28),
    "KMNIST": (1, 28, 28),
    "CIFAR10": (3, 32, 32),
    "CIFAR100": (3, 32, 32),
    "SVHN": (3, 32, 32),
    "STL10": (3, 96, 96),
}


def input_shape(config: dict, exp: str) -> tuple[int, ...] | None:
    """What the model of ``exp`` sees, (C, H, W) or (D,), if known from the config
    alone; None where only the prepared data tell (e.g. a folder of images in
    ``color: auto``, an arrays file)."""
    entry = config["datasets"][experiment(config, exp)["dataset"]]
    source = entry["source"]
    if source == "gaussian":
        return (int(entry["dim"]),)
    if source == "imagenet":
        side = int(entry.get("resolution", DATASET_DEFAULTS["imagenet"]["resolution"]))
        return (3, side, side)
    if source == "folder" and entry.get("resize") and entry.get("color") in ("grayscale", "rgb"):
        return (1 if entry["color"] == "grayscale" else 3, *(int(n) for n in entry["resize"]))
    return KNOWN_INPUT_SHAPES.get(entry.get("name", source))


def model_code(config: dict, exp: str) -> list[str]:
    """The source file of an own model's factory module (empty for a built-in arch):
    the stages that build the model depend on it like on the library. Relative to the
    working directory when it lies below it."""
    if not is_factory(experiment(config, exp)["model"]["arch"]):
        return []
    from randlabels.models.networks import factory_file

    try:
        path = factory_file(experiment(config, exp)["model"]["arch"])
    except Exception:  # noqa: BLE001 - the config check reports a factory that does not import
        return []
    if path is None:
        return []
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return [path]
    return [path if relative.startswith("..") else relative]


def seeds(config: dict, exp: str | None = None) -> list[int]:
    """The seeds of ``exp``: its own ``seeds`` list if it has one (e.g. many seeds
    pooled for the eigen-filter figure), else the config's."""
    if exp is not None and "seeds" in experiment(config, exp):
        return [int(s) for s in experiment(config, exp)["seeds"]]
    return [int(s) for s in config["seeds"]]


def scale_labels(config: dict, exp: str) -> list[str]:
    return [scale_label(s) for s in experiment(config, exp)["init_scales"]]


def pretrain_runs(config: dict, exp: str, labels: list[str] | None = None) -> list[dict]:
    """Wildcards of every pre-training run of ``exp`` (optionally of some label kinds)."""
    kinds = labels if labels is not None else experiment(config, exp)["pretrain"]["labels"]
    return [
        {"exp": exp, "labels": kind, "scale": scale, "seed": seed}
        for kind in kinds
        for scale in scale_labels(config, exp)
        for seed in seeds(config, exp)
    ]


def pack_seeds(config: dict, exp: str) -> int:
    """How many seeds of one pre-training configuration share a job (1: one job each)."""
    return int({**PRETRAIN_DEFAULTS, **experiment(config, exp)["pretrain"]}["pack_seeds"])


def packed_experiments(config: dict) -> list[str]:
    """Experiments whose seeds are pre-trained in groups (pack_seeds > 1)."""
    return [exp for exp in config["experiments"] if pack_seeds(config, exp) > 1]


def experiments_pattern(config: dict, packed: bool) -> str:
    """A wildcard constraint matching the experiments that are (or are not) packed;
    one that matches nothing when there are none."""
    chosen = set(packed_experiments(config))
    names = [exp for exp in config["experiments"] if (exp in chosen) == packed]
    return "|".join(names) if names else "(?!)"


def pack_variants(config: dict, exp: str) -> bool:
    """Whether the variants of one fine-tuning (task, scale, seed) share a job."""
    return bool({**FINETUNE_JOB_DEFAULTS, **experiment(config, exp)["finetune"]}["pack_variants"])


def finetune_pattern(config: dict, packed: bool) -> str:
    """A wildcard constraint matching the fine-tuned experiments whose variants are
    (or are not) trained in one job; one that matches nothing when there are none."""
    names = [exp for exp in config["experiments"] if "finetune" in config["experiments"][exp]
             and pack_variants(config, exp) == packed]
    return "|".join(names) if names else "(?!)"


def seed_groups(config: dict, exp: str) -> list[list[int]]:
    """The seeds cut into consecutive groups of pack_seeds (the last may be smaller)."""
    size, all_seeds = pack_seeds(config, exp), seeds(config, exp)
    return [all_seeds[i : i + size] for i in range(0, len(all_seeds), size)]


def group_seeds(config: dict, exp: str, first, last) -> list[int]:
    """The seeds of the group of ``exp`` that runs from seed ``first`` to ``last``."""
    for group in seed_groups(config, exp):
        if group[0] == int(first) and group[-1] == int(last):
            return group
    raise ValueError(f"experiment {exp!r} has no group of seeds {first}-{last} (pack_seeds {pack_seeds(config, exp)})")


def packed_path(config: dict, exp: str, labels: str, scale: str, seed) -> str:
    """The bundle that holds the pre-training of ``seed`` (a packed experiment)."""
    for group in seed_groups(config, exp):
        if int(seed) in group:
            return path("pretrain_packed", exp=exp, labels=labels, scale=scale, first=group[0], last=group[-1])
    raise ValueError(f"experiment {exp!r} has no seed {seed}")


def stats_files(config: dict, exp: str) -> list[str]:
    return [path("stats", **run) for run in pretrain_runs(config, exp)]


def pretrain_metric_files(config: dict, exp: str) -> list[str]:
    return [path("pretrain_metrics", **run) for run in pretrain_runs(config, exp)]


def finetune_files(config: dict, exp: str) -> list[str]:
    return [
        path("finetune", exp=exp, task=task, variant=variant, scale=scale, seed=seed)
        for task in finetune_tasks(config, exp)
        for variant in finetune_variants(config, exp)
        for scale in scale_labels(config, exp)
        for seed in seeds(config, exp)
    ]


def sample_sources(config: dict, exp: str, scale: str, seed: int) -> list[str]:
    """Checkpoint sets a Gaussian initialization is fitted to (one seed, or all)."""
    labels = from_labels(config, exp)
    chosen = seeds(config, exp) if sample_settings(config, exp)["pool_seeds"] else [int(seed)]
    return [path("checkpoints", exp=exp, labels=labels, scale=scale, seed=s) for s in chosen]


def tables(config: dict, exp: str) -> list[str]:
    """The per-experiment tables of ``exp`` (names), as the stages it runs make them."""
    names = ["pretrain_metrics", "misalignment", "misalignment_pooled", "transfer_function", "activations"]
    if is_conv(config, exp):
        names.append("eigenfilters")
    if has_finetune(config, exp):
        names += ["finetune_curves", "transfer_summary"]
    return names


def figures(config: dict, exp: str) -> list[str]:
    """The figures of ``exp`` (names of plots.FIGURES): those whose tables it has."""
    have = set(tables(config, exp))
    return [name for name, figure in FIGURES.items() if set(figure.tables) <= have]


def figure_inputs(exp: str, figure: str) -> dict[str, str]:
    """The table files a per-experiment figure is drawn from: ``table``, and one per
    keyword of its ``extra`` tables."""
    entry = FIGURES[figure]
    return {
        "table": path("table", exp=exp, table=entry.table),
        **{keyword: path("table", exp=exp, table=name) for keyword, name in entry.extra.items()},
    }


def all_targets(config: dict) -> list[str]:
    """Every table and figure of every experiment: what `rule all` asks for."""
    targets = []
    for exp in config["experiments"]:
        targets += [path("table", exp=exp, table=name) for name in tables(config, exp)]
        targets += [path("figure", exp=exp, figure=name) for name in figures(config, exp)]
    return targets


def eigenfilter_sources(config: dict, exp: str) -> list[str]:
    """Statistics files pooled for the eigen-filter figure: every seed of the first
    init scale, pre-trained on random labels when there are any."""
    kinds = experiment(config, exp)["pretrain"]["labels"]
    kind = "random" if "random" in kinds else kinds[0]
    scale = scale_labels(config, exp)[0]
    return [path("stats", exp=exp, labels=kind, scale=scale, seed=seed) for seed in seeds(config, exp)]
