rule aggregate_pretraining:
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
    input:
        curves=lambda w: plan.finetune_files(config, w.exp),
        dataset=exp_dataset_file,  # the real task's number of classes
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
        target=lambda w: plan.finetune_settings(config, w.exp)["target_accuracy"],
    message:
        "Collecting learning curves and the transfer summary of {wildcards.exp}"
    script:
        "../scripts/aggregate_finetuning.py"


rule plot_misalignment:
    input:
        table=plan.path("table", exp="{exp}", table="misalignment"),
        pooled=plan.path("table", exp="{exp}", table="misalignment_pooled"),
        code=script_code("plot_table", "randlabels.plots.misalignment"),
    output:
        report(
            plan.path("figure", exp="{exp}", figure="misalignment"),
            caption="../report/misalignment.rst",
            category="{exp}",
            subcategory="Figures",
        ),
    log:
        logs("plot_misalignment/{exp}"),
    benchmark:
        benchmarks("plot_misalignment/{exp}")
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    params:
        module="randlabels.plots.misalignment",
        options=lambda w, input: {"pooled": input.pooled},
    message:
        "Plotting misalignment of {wildcards.exp}"
    script:
        "../scripts/plot_table.py"


rule plot_transfer_function:
    input:
        table=plan.path("table", exp="{exp}", table="transfer_function"),
        code=script_code("plot_table", "randlabels.plots.transfer_function"),
    output:
        report(
            plan.path("figure", exp="{exp}", figure="transfer_function"),
            caption="../report/transfer_function.rst",
            category="{exp}",
            subcategory="Figures",
        ),
    log:
        logs("plot_transfer_function/{exp}"),
    benchmark:
        benchmarks("plot_transfer_function/{exp}")
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    params:
        module="randlabels.plots.transfer_function",
        options={},
    message:
        "Plotting f(σ) of {wildcards.exp}"
    script:
        "../scripts/plot_table.py"


rule plot_learning_curves:
    input:
        table=plan.path("table", exp="{exp}", table="finetune_curves"),
        code=script_code("plot_table", "randlabels.plots.learning_curves"),
    output:
        report(
            plan.path("figure", exp="{exp}", figure="learning_curves"),
            caption="../report/learning_curves.rst",
            category="{exp}",
            subcategory="Figures",
        ),
    log:
        logs("plot_learning_curves/{exp}"),
    benchmark:
        benchmarks("plot_learning_curves/{exp}")
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    params:
        module="randlabels.plots.learning_curves",
        options={},
    message:
        "Plotting downstream learning curves of {wildcards.exp}"
    script:
        "../scripts/plot_table.py"


rule plot_transfer_summary:
    input:
        table=plan.path("table", exp="{exp}", table="transfer_summary"),
        code=script_code("plot_table", "randlabels.plots.transfer_summary"),
    output:
        report(
            plan.path("figure", exp="{exp}", figure="transfer_summary"),
            caption="../report/transfer_summary.rst",
            category="{exp}",
            subcategory="Figures",
        ),
    log:
        logs("plot_transfer_summary/{exp}"),
    benchmark:
        benchmarks("plot_transfer_summary/{exp}")
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    params:
        module="randlabels.plots.transfer_summary",
        options={},  # the target accuracy is the table's own (per task)
    message:
        "Plotting the transfer summary of {wildcards.exp}"
    script:
        "../scripts/plot_table.py"


rule plot_eigenfilters:
    input:
        stats=lambda w: plan.eigenfilter_sources(config, w.exp),
        code=script_code("plot_eigenfilters"),
    output:
        report(
            plan.path("figure", exp="{exp}", figure="eigenfilters"),
            caption="../report/eigenfilters.rst",
            category="{exp}",
            subcategory="Figures",
        ),
    log:
        logs("plot_eigenfilters/{exp}"),
    benchmark:
        benchmarks("plot_eigenfilters/{exp}")
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    message:
        "Drawing filters and eigenvectors of {wildcards.exp}"
    script:
        "../scripts/plot_eigenfilters.py"
