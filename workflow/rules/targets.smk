# The paper's experiments as named targets (randlabels.workflow.targets): `snakemake fig_transfer`
# builds results/paper/fig_transfer.tsv and .png from the experiments that
# targets.fig_transfer.experiments lists, and everything they need.


rule paper_target:
    """one of the paper's named experiments as a table and a figure, by randlabels.workflow.targets"""
    input:
        unpack(lambda w: targets.table_inputs(config, w.target)),
        code=script_code("paper_target"),
    output:
        table=report(
            plan.PATHS["target_table"],
            caption="../report/paper_target.rst",
            category="Paper",
            subcategory="Tables",
        ),
        figure=report(
            plan.PATHS["target_figure"],
            caption="../report/paper_target.rst",
            category="Paper",
            subcategory="Figures",
        ),
    log:
        logs("paper_target/{target}"),
    benchmark:
        benchmarks("paper_target/{target}")
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    params:
        target=lambda w: w.target,
        description=lambda w: targets.TARGETS[w.target].description,
        experiments=lambda w: targets.experiments(config, w.target),
        info=lambda w: targets.experiment_info(config, w.target),
    message:
        "Building the paper's {wildcards.target}"
    script:
        "../scripts/paper_target.py"


# One named rule per target, so that `snakemake NAME` runs it (and only it).
for _name in targets.TARGETS:

    rule:
        """a paper target: `snakemake NAME` builds results/paper/NAME.tsv and NAME.png, by randlabels.workflow.targets"""
        name:
            _name
        input:
            lambda w, name=_name: targets.target_files(config, name),
        localrule: True


# A name on the command line that is neither a rule nor a file (a misspelled target):
# its nearest target names and the list, instead of "No rule to produce NAME". Only
# top-level names without a dot match, and an existing file is left alone.
rule unknown_target:
    """a name that is neither a rule nor a file: the nearest target names, by randlabels.workflow.targets"""
    input:
        lambda w: targets.refuse_unknown_target(w.name, ["all", *targets.TARGETS]),
    output:
        "{name}",
    log:
        logs("unknown_target/{name}"),
    benchmark:
        benchmarks("unknown_target/{name}")
    wildcard_constraints:
        name=r"[A-Za-z][A-Za-z0-9_-]*",
    localrule: True
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    shell:
        "false"
