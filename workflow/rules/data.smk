rule prepare_dataset:
    input:
        code=script_code("prepare_dataset"),
    output:
        plan.PATHS["dataset"],
    log:
        logs("prepare_dataset/{dataset}"),
    benchmark:
        benchmarks("prepare_dataset/{dataset}")
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    params:
        settings=lambda w: plan.dataset_settings(config, w.dataset),
    message:
        "Preparing dataset {wildcards.dataset}"
    script:
        "../scripts/prepare_dataset.py"


rule make_split:
    input:
        dataset=exp_dataset_file,
        code=script_code("make_split"),
    output:
        plan.PATHS["split"],
    log:
        logs("make_split/{exp}/seed{seed}"),
    benchmark:
        benchmarks("make_split/{exp}/seed{seed}")
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    params:
        split=lambda w: plan.split_settings(config, w.exp),
        seed=lambda w: int(w.seed),
    message:
        "Drawing split and random labels of {wildcards.exp}, seed {wildcards.seed}"
    script:
        "../scripts/make_split.py"
