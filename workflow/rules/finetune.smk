rule finetune:
    """fine-tune from one initialization variant and record its learning curve, by randlabels.inits.variants and randlabels.training.engine"""
    input:
        sources=finetune_source_files,
        dataset=exp_dataset_file,
        split=plan.PATHS["split"],
        code=script_code("finetune"),
        model_code=lambda w: plan.model_code(config, w.exp),
    output:
        plan.PATHS["finetune"],
    log:
        logs("finetune/{exp}/{task}/{variant}/scale{scale}/seed{seed}"),
    benchmark:
        benchmarks("finetune/{exp}/{task}/{variant}/scale{scale}/seed{seed}")
    wildcard_constraints:
        exp=UNPACKED_FINETUNE,
    conda:
        ENV
    threads: 1
    resources:
        **RESOURCES_TRAINING,
    params:
        model=lambda w: plan.model_settings(config, w.exp),
        training=lambda w: plan.finetune_settings(config, w.exp),
        experiment=lambda w: w.exp,
        variants=lambda w: [w.variant],
        sources=finetune_sources,
        task=lambda w: w.task,
        init_scale=scale_of,
        seed=lambda w: int(w.seed),
        device=config.get("device", "auto"),
        jobs_per_gpu=config.get("jobs_per_gpu", 1),
        on_divergence=config.get("on_divergence", "continue"),
        resume=lambda w: plan.path("finetune_resume", **w),
        progress=lambda w: {
            "live": plan.path("finetune_live", **w),
            "tensorboard": plan.path("finetune_tensorboard", **w),
        },
    message:
        "Fine-tuning {wildcards.exp} on {wildcards.task} labels from {wildcards.variant}, init scale {wildcards.scale}, seed {wildcards.seed}"
    script:
        "../scripts/finetune.py"


# pack_variants: every variant of one (task, scale, seed) trained in one job
# (randlabels.training.packed.PackedTrainer), then unpacked into the per-variant tables above.
rule finetune_packed:
    """fine-tune every variant of one task, init scale and seed in one process, by randlabels.training.packed"""
    input:
        sources=finetune_source_files,
        dataset=exp_dataset_file,
        split=plan.PATHS["split"],
        code=script_code("finetune"),
        model_code=lambda w: plan.model_code(config, w.exp),
    output:
        plan.PATHS["finetune_packed"],
    log:
        logs("finetune_packed/{exp}/{task}/scale{scale}/seed{seed}"),
    benchmark:
        benchmarks("finetune_packed/{exp}/{task}/scale{scale}/seed{seed}")
    wildcard_constraints:
        exp=PACKED_FINETUNE,
    conda:
        ENV
    threads: 1
    resources:
        **RESOURCES_TRAINING,
    params:
        model=lambda w: plan.model_settings(config, w.exp),
        training=lambda w: plan.finetune_settings(config, w.exp),
        experiment=lambda w: w.exp,
        variants=lambda w: plan.finetune_variants(config, w.exp),
        sources=finetune_sources,
        task=lambda w: w.task,
        init_scale=scale_of,
        seed=lambda w: int(w.seed),
        device=config.get("device", "auto"),
        jobs_per_gpu=config.get("jobs_per_gpu", 1),
        on_divergence=config.get("on_divergence", "continue"),
        resume=lambda w: plan.path("finetune_packed_resume", **w),
        progress=lambda w: {
            "live": plan.path("finetune_packed_live", **w),
            "tensorboard": plan.path("finetune_packed_tensorboard", **w),
        },
    message:
        "Fine-tuning {wildcards.exp} on {wildcards.task} labels from every variant, init scale {wildcards.scale}, seed {wildcards.seed}, packed in one job"
    script:
        "../scripts/finetune.py"


# A filter of a table: run where Snakemake runs, not as a cluster job of its own.
rule unpack_finetune:
    """one variant's learning curve from its packed fine-tuning table, by randlabels.training.unpack"""
    input:
        packed=plan.PATHS["finetune_packed"],
        code=script_code("unpack_finetune"),
    output:
        plan.PATHS["finetune"],
    log:
        logs("unpack_finetune/{exp}/{task}/{variant}/scale{scale}/seed{seed}"),
    benchmark:
        benchmarks("unpack_finetune/{exp}/{task}/{variant}/scale{scale}/seed{seed}")
    wildcard_constraints:
        exp=PACKED_FINETUNE,
    localrule: True
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    params:
        variant=lambda w: w.variant,
    message:
        "Unpacking the fine-tuning of {wildcards.exp} on {wildcards.task} labels from {wildcards.variant}, init scale {wildcards.scale}, seed {wildcards.seed}"
    script:
        "../scripts/unpack_finetune.py"


rule construct_init:
    """the first k layers built from data covariances, without training, by randlabels.inits.construct"""
    input:
        unpack(construct_source),
        dataset=exp_dataset_file,
        split=plan.PATHS["split"],
        code=script_code("construct_init"),
        model_code=lambda w: plan.model_code(config, w.exp),
    output:
        plan.PATHS["constructed_init"],
    log:
        logs("construct_init/{exp}/{construct}/scale{scale}/seed{seed}"),
    benchmark:
        benchmarks("construct_init/{exp}/{construct}/scale{scale}/seed{seed}")
    conda:
        ENV
    threads: 1
    resources:
        **RESOURCES_LIGHT,
    params:
        model=lambda w: plan.model_settings(config, w.exp),
        method=lambda w: variants.parse(w.construct).family,
        depth=lambda w: variants.parse(w.construct).depth,
        init_scale=scale_of,
        seed=lambda w: int(w.seed),
        batch_size=lambda w: plan.construct_settings(config, w.exp)["batch_size"],
        samples=lambda w: plan.construct_settings(config, w.exp)["samples"],
        device=config.get("device", "auto"),
    message:
        "Constructing the first layers of {wildcards.exp} from data covariances ({wildcards.construct}), init scale {wildcards.scale}, seed {wildcards.seed}"
    script:
        "../scripts/construct_init.py"
