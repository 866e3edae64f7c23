# Maennel et al. (NeurIPS 2020), "What Do Neural Networks Learn When Trained With
# Random Labels?": random-label pre-training, alignment statistics, Gaussian
# initializations and downstream transfer. See README.md and docs/METHODS.md.
from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/preflight.smk"


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/targets.smk"


rule all:
    default_target: True
    input:
        plan.all_targets(config),
        targets.all_target_files(config),
