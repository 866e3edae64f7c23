rule pretrain:
    """pre-train one run, one label kind, init scale and seed of an experiment, keeping its checkpoints, by randlabels.training.engine"""
    input:
        dataset=exp_dataset_file,
        split=plan.PATHS["split"],
        code=script_code("pretrain"),
        model_code=lambda w: plan.model_code(config, w.exp),
    output:
        checkpoints=plan.PATHS["checkpoints"],
        metrics=plan.PATHS["pretrain_metrics"],
    log:
        logs("pretrain/{exp}/{labels}/scale{scale}/seed{seed}"),
    benchmark:
        benchmarks("pretrain/{exp}/{labels}/scale{scale}/seed{seed}")
    wildcard_constraints:
        exp=UNPACKED_EXPERIMENTS,
    conda:
        ENV
    threads: 1
    resources:
        **RESOURCES_TRAINING,
    params:
        model=lambda w: plan.model_settings(config, w.exp),
        training=lambda w: plan.pretrain_settings(config, w.exp),
        init_scale=scale_of,
        seed=lambda w: int(w.seed),
        device=config.get("device", "auto"),
        jobs_per_gpu=config.get("jobs_per_gpu", 1),
        on_divergence=config.get("on_divergence", "continue"),
        resume=lambda w: plan.path("pretrain_resume", **w),
        progress=lambda w: {
            "live": plan.path("pretrain_live", **w),
            "tensorboard": plan.path("pretrain_tensorboard", **w),
        },
    message:
        "Pre-training {wildcards.exp} on {wildcards.labels} labels, init scale {wildcards.scale}, seed {wildcards.seed}"
    script:
        "../scripts/pretrain.py"


# pack_seeds > 1: the seeds of one configuration are trained in groups, one job per
# group (randlabels.training.packed.PackedTrainer), then unpacked into the per-seed files above.
# The bundle is temp(): Snakemake deletes it once every seed of the group is unpacked,
# as it holds the same snapshots again (a third of the paper config's disk).
rule pretrain_packed:
    """pre-train a group of seeds of one run in one process, by randlabels.training.packed"""
    input:
        datasets=packed_datasets,
        splits=packed_splits,
        code=script_code("pretrain_packed"),
        model_code=lambda w: plan.model_code(config, w.exp),
    output:
        bundle=temp(plan.PATHS["pretrain_packed"]),
    log:
        logs("pretrain_packed/{exp}/{labels}/scale{scale}/seeds{first}-{last}"),
    benchmark:
        benchmarks("pretrain_packed/{exp}/{labels}/scale{scale}/seeds{first}-{last}")
    wildcard_constraints:
        exp=PACKED_EXPERIMENTS,
        first=r"\d+",
        last=r"\d+",
    conda:
        ENV
    threads: 1
    resources:
        **RESOURCES_TRAINING,
    params:
        model=lambda w: plan.model_settings(config, w.exp),
        training=lambda w: plan.pretrain_settings(config, w.exp),
        init_scale=scale_of,
        seeds=lambda w: plan.group_seeds(config, w.exp, w.first, w.last),
        device=config.get("device", "auto"),
        jobs_per_gpu=config.get("jobs_per_gpu", 1),
        on_divergence=config.get("on_divergence", "continue"),
        resume=lambda w: plan.path("pretrain_packed_resume", **w),
        progress=lambda w: {
            "live": plan.path("pretrain_packed_live", **w),
            "tensorboard": plan.path("pretrain_tensorboard", **w),
        },
    message:
        "Pre-training {wildcards.exp} on {wildcards.labels} labels, init scale {wildcards.scale}, seeds {wildcards.first}-{wildcards.last} packed in one job"
    script:
        "../scripts/pretrain_packed.py"


rule unpack_pretrain:
    """one seed's checkpoints and metrics from its group's bundle, by randlabels.training.unpack"""
    input:
        bundle=packed_bundle,
        code=script_code("unpack_pretrain"),
    output:
        checkpoints=plan.PATHS["checkpoints"],
        metrics=plan.PATHS["pretrain_metrics"],
    log:
        logs("unpack_pretrain/{exp}/{labels}/scale{scale}/seed{seed}"),
    benchmark:
        benchmarks("unpack_pretrain/{exp}/{labels}/scale{scale}/seed{seed}")
    wildcard_constraints:
        exp=PACKED_EXPERIMENTS,
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    params:
        seed=lambda w: int(w.seed),
    message:
        "Unpacking the pre-training of {wildcards.exp} on {wildcards.labels} labels, init scale {wildcards.scale}, seed {wildcards.seed}"
    script:
        "../scripts/unpack_pretrain.py"
