# Helpers shared by the rule files (functions only; rules live in the other .smk files).
import os

import yaml

# The library of this checkout, first on sys.path since preflight.smk.
SRC = os.path.join(workflow.basedir, "src")

from randlabels.inits import variants
from randlabels.plots import FIGURES, figure_module
from randlabels.workflow import codedeps, plan, targets
from randlabels.workflow.config import (
    ConfigError,
    check_config,
    command_line_config,
    config_warnings,
)

# --config KEY=VALUE: on config.yaml unless --configfile files were given, and a dotted
# KEY sets one nested value (randlabels.workflow.config.command_line_config).
if workflow.config_settings.overwrite_config:
    try:
        _resolved = command_line_config(
            config,
            workflow.config_settings.overwrite_config,
            default=(
                yaml.safe_load(open("config.yaml", encoding="utf-8"))
                if not workflow.overwrite_configfiles and os.path.exists("config.yaml")
                else None
            ),
        )
    except ConfigError as error:
        raise WorkflowError(str(error)) from None
    config.clear()
    config.update(_resolved)

try:
    check_config(
        config,
        os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"),
        files=workflow.configfiles,
    )
except ConfigError as error:
    raise WorkflowError(str(error)) from None
for _warning in config_warnings(config):
    logger.warning(f"config warning: {_warning}")

ENV = "../../envs/randlabels.yaml"
RESOURCES_TRAINING = plan.resources(config, "training")
RESOURCES_LIGHT = plan.resources(config, "light")


wildcard_constraints:
    exp="|".join(config["experiments"]),
    dataset="|".join(config["datasets"]),
    labels="random|real",
    scale=r"[0-9][0-9.e-]*",
    seed=r"\d+",
    variant=variants.PATTERN,
    task=plan.TASK_PATTERN,
    construct=variants.CONSTRUCT_PATTERN,
    target="|".join(targets.TARGETS),


def script_code(script, *modules):
    """The library files that workflow/scripts/SCRIPT.py runs, read off its imports
    (randlabels.workflow.codedeps), plus ``modules`` it imports by a name known only at run
    time: as inputs, edits to them rerun the rule. Relative paths, so that a copied or
    moved project keeps its cache."""
    path = os.path.join(workflow.basedir, "workflow/scripts", f"{script}.py")
    return [os.path.relpath(f) for f in codedeps.code_files(path, SRC, modules)]


# Fine-tuned experiments whose variants are trained one per job (finetune) or all of
# one (task, scale, seed) in one (pack_variants: finetune_packed, then unpack_finetune).
UNPACKED_FINETUNE = plan.finetune_pattern(config, packed=False)
PACKED_FINETUNE = plan.finetune_pattern(config, packed=True)

# Experiments whose seeds are pre-trained one per job (pretrain) or in groups
# (pack_seeds > 1: pretrain_packed, then unpack_pretrain), as wildcard constraints.
UNPACKED_EXPERIMENTS = plan.experiments_pattern(config, packed=False)
PACKED_EXPERIMENTS = plan.experiments_pattern(config, packed=True)


def logs(name):
    return f"results/logs/{name}.log"


def benchmarks(name):
    return f"results/benchmarks/{name}.tsv"


def exp_dataset_file(wildcards):
    """The dataset file one seed of an experiment reads (a per-seed dataset: its own draw)."""
    return plan.dataset_file(config, wildcards.exp, wildcards.seed)


def scale_of(wildcards):
    return plan.scale_value(config, wildcards.exp, wildcards.scale)


def variant_source(exp, scale, seed, variant):
    """The file fine-tuning variant ``variant`` starts from (None for scratch)."""
    kind = variants.parse(variant).source
    if kind is None:
        return None
    where = {"exp": exp, "scale": scale, "seed": seed}
    if kind == "checkpoints":
        where["labels"] = plan.from_labels(config, exp)
    if kind == "constructed_init":
        where["construct"] = variant
    return plan.path(kind, **where)


def finetune_sources(wildcards):
    """Each fine-tuned variant of the job's (experiment, scale, seed) and the file it
    starts from (None for scratch): the one variant of a finetune job, or all of
    them for a packed one (finetune_packed)."""
    chosen = (
        [wildcards.variant]
        if "variant" in wildcards.keys()
        else plan.finetune_variants(config, wildcards.exp)
    )
    return {
        variant: variant_source(wildcards.exp, wildcards.scale, wildcards.seed, variant)
        for variant in chosen
    }


def finetune_source_files(wildcards):
    """The files of finetune_sources, an input of the job."""
    return [path for path in finetune_sources(wildcards).values() if path is not None]


def construct_source(wildcards):
    """The pre-trained network a layer-wise construction estimates f from (none for
    the parametric covariance construction)."""
    family = variants.parse(wildcards.construct).family
    if variants.CONSTRUCT_SOURCE[family] is None:
        return {}
    labels = plan.from_labels(config, wildcards.exp)
    return {
        "source": plan.path(
            "checkpoints",
            exp=wildcards.exp,
            labels=labels,
            scale=wildcards.scale,
            seed=wildcards.seed,
        )
    }


def packed_splits(wildcards):
    """The split files of the seeds of one packed group, in the group's order."""
    seeds = plan.group_seeds(config, wildcards.exp, wildcards.first, wildcards.last)
    return [plan.path("split", exp=wildcards.exp, seed=seed) for seed in seeds]


def packed_datasets(wildcards):
    """The dataset file of each seed of one packed group, in the group's order (one
    file repeated, unless the dataset is drawn per seed)."""
    seeds = plan.group_seeds(config, wildcards.exp, wildcards.first, wildcards.last)
    return [plan.dataset_file(config, wildcards.exp, seed) for seed in seeds]


def packed_bundle(wildcards):
    """The bundle holding the pre-training of one seed of a packed experiment."""
    return plan.packed_path(
        config, wildcards.exp, wildcards.labels, wildcards.scale, wildcards.seed
    )
