rule prepare_dataset:
    """a named dataset as one HDF5 file of arrays, labels and provenance, by randlabels.data.sources"""
    input:
        code=script_code("prepare_dataset"),
    output:
        plan.PATHS["dataset"],
    log:
        logs("prepare_dataset/{dataset}"),
    benchmark:
        benchmarks("prepare_dataset/{dataset}")
    wildcard_constraints:
        dataset=plan.datasets_pattern(config, drawn_per_seed=False),
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


# A dataset drawn afresh for each experiment seed (gaussian, per_seed: true): one file
# per seed, so that adding a seed leaves the others' files, and all made from them, as they are.
rule prepare_dataset_draw:
    """one seed's draw of a per-seed Gaussian dataset, a file of its own, by randlabels.data.gaussian"""
    input:
        code=script_code("prepare_dataset"),
    output:
        plan.PATHS["dataset_draw"],
    log:
        logs("prepare_dataset/{dataset}/seed{seed}"),
    benchmark:
        benchmarks("prepare_dataset/{dataset}/seed{seed}")
    wildcard_constraints:
        dataset=plan.datasets_pattern(config, drawn_per_seed=True),
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    params:
        settings=lambda w: plan.dataset_settings(config, w.dataset, int(w.seed)),
    message:
        "Drawing dataset {wildcards.dataset} for seed {wildcards.seed}"
    script:
        "../scripts/prepare_dataset.py"


rule make_split:
    """one seed's disjoint upstream, downstream and test indices, and its random labels, by randlabels.data.splits"""
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
