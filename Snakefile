# Maennel et al. (NeurIPS 2020), "What Do Neural Networks Learn When Trained With
# Random Labels?": random-label pre-training, alignment statistics, Gaussian
# initializations and downstream transfer. See README.md and docs/METHODS.md.
import os

from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/preflight.smk"


configfile: "config.yaml"


# The report opens on the workflow's description and the summary of the last run
# (written by onsuccess below, randlabels.analysis.headlines); before any run, on the description.
DESCRIPTION = "workflow/report/workflow.rst"
FRONT_PAGE = os.path.abspath(os.path.join("results", "report_front.rst"))


report: FRONT_PAGE if os.path.exists(FRONT_PAGE) else DESCRIPTION


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/targets.smk"


rule all:
    """every experiment's tables and figures, and the paper targets the config lists, by randlabels.workflow.plan"""
    default_target: True
    input:
        plan.all_targets(config),
        targets.all_target_files(config),


# At the end of a run (make run, or any target): the headline numbers of each
# experiment, printed and written to results/SUMMARY.md and the report's front page.
onsuccess:
    from randlabels.analysis import headlines

    try:
        with open(
            os.path.join(workflow.basedir, DESCRIPTION), encoding="utf-8"
        ) as handle:
            print(headlines.write(config["experiments"], handle.read()))
    except Exception as error:  # a summary is no reason to fail a finished run
        print(f"results/SUMMARY.md not written: {type(error).__name__}: {error}")
