rule aggregate_pretraining:
    """an experiment's pre-training metrics in one table, collapsed runs flagged, by randlabels.analysis.memorization"""
    input:
        metrics=lambda w: plan.pretrain_metric_files(config, w.exp),
        code=script_code("aggregate_pretraining"),
    output:
        report(
            plan.path("table", exp="{exp}", table="pretrain_metrics"),
            caption="../report/pretrain_metrics.rst",
            category="{exp}",
            subcategory="Tables",
        ),
    log:
        logs("aggregate_pretraining/{exp}"),
    benchmark:
        benchmarks("aggregate_pretraining/{exp}")
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    params:
        split=lambda w: plan.split_settings(config, w.exp),
    message:
        "Collecting pre-training metrics of {wildcards.exp}"
    script:
        "../scripts/aggregate_pretraining.py"


rule aggregate_statistics:
    """an experiment's misalignment, f(σ) and activation tables over its runs, by randlabels.analysis.statsfile"""
    input:
        stats=lambda w: plan.stats_files(config, w.exp),
        pretrain_metrics=plan.path("table", exp="{exp}", table="pretrain_metrics"),
        code=script_code("aggregate_statistics"),
    output:
        misalignment=report(
            plan.path("table", exp="{exp}", table="misalignment"),
            caption="../report/misalignment_table.rst",
            category="{exp}",
            subcategory="Tables",
        ),
        misalignment_pooled=report(
            plan.path("table", exp="{exp}", table="misalignment_pooled"),
            caption="../report/misalignment_pooled_table.rst",
            category="{exp}",
            subcategory="Tables",
        ),
        transfer_function=plan.path("table", exp="{exp}", table="transfer_function"),
        activations=plan.path("table", exp="{exp}", table="activations"),
    log:
        logs("aggregate_statistics/{exp}"),
    benchmark:
        benchmarks("aggregate_statistics/{exp}")
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    message:
        "Collecting statistics of {wildcards.exp}"
    script:
        "../scripts/aggregate_statistics.py"


rule aggregate_finetuning:
    """an experiment's learning curves and transfer summary, by randlabels.analysis.summary"""
    input:
        curves=lambda w: plan.finetune_files(config, w.exp),
        # The real task's number of classes (the same in every seed's file).
        dataset=lambda w: plan.dataset_file(config, w.exp, plan.seeds(config, w.exp)[0]),
        code=script_code("aggregate_finetuning"),
    output:
        curves=plan.path("table", exp="{exp}", table="finetune_curves"),
        summary=report(
            plan.path("table", exp="{exp}", table="transfer_summary"),
            caption="../report/transfer_summary_table.rst",
            category="{exp}",
            subcategory="Tables",
        ),
    log:
        logs("aggregate_finetuning/{exp}"),
    benchmark:
        benchmarks("aggregate_finetuning/{exp}")
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    params:
        target=lambda w: plan.target_accuracy(config, w.exp),
    message:
        "Collecting learning curves and the transfer summary of {wildcards.exp}"
    script:
        "../scripts/aggregate_finetuning.py"


rule aggregate_eigenfilters:
    """an experiment's first-layer filters pooled over seeds, beside the eigenvectors, by randlabels.analysis.eigenfilters"""
    input:
        stats=lambda w: plan.eigenfilter_sources(config, w.exp),
        pretrain_metrics=plan.path("table", exp="{exp}", table="pretrain_metrics"),
        code=script_code("aggregate_eigenfilters"),
    output:
        plan.path("table", exp="{exp}", table="eigenfilters"),
    log:
        logs("aggregate_eigenfilters/{exp}"),
    benchmark:
        benchmarks("aggregate_eigenfilters/{exp}")
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    message:
        "Pooling the first-layer filters of {wildcards.exp} over seeds"
    script:
        "../scripts/aggregate_eigenfilters.py"


# Every per-experiment figure (randlabels.plots.FIGURES): the module
# randlabels.plots.FIGURE draws the experiment's tables.
rule plot:
    """one figure of an experiment, drawn from its tables, by randlabels.plots.FIGURES"""
    input:
        unpack(lambda w: plan.figure_inputs(w.exp, w.figure)),
        code=lambda w: script_code("plot", figure_module(w.figure)),
    output:
        report(
            plan.path("figure", exp="{exp}", figure="{figure}"),
            caption="../report/figure.rst",
            category="{exp}",
            subcategory="Figures",
        ),
    log:
        logs("plot/{exp}/{figure}"),
    benchmark:
        benchmarks("plot/{exp}/{figure}")
    wildcard_constraints:
        figure="|".join(FIGURES),
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    message:
        "Drawing the {wildcards.figure} figure of {wildcards.exp}"
    script:
        "../scripts/plot.py"
