rule finetune:
    input:
        unpack(finetune_source),
        dataset=exp_dataset_file,
        split=plan.PATHS["split"],
        code=TRAINING_CODE,
    output:
        plan.PATHS["finetune"],
    log:
        logs("finetune/{exp}/{variant}/scale{scale}/seed{seed}"),
    benchmark:
        benchmarks("finetune/{exp}/{variant}/scale{scale}/seed{seed}")
    conda:
        ENV
    threads: 1
    resources:
        **RESOURCES_TRAINING,
    params:
        model=lambda w: plan.model_settings(config, w.exp),
        training=lambda w: plan.finetune_settings(config, w.exp),
        experiment=lambda w: w.exp,
        variant=lambda w: w.variant,
        init_scale=scale_of,
        seed=lambda w: int(w.seed),
        device=config.get("device", "auto"),
        jobs_per_gpu=config.get("jobs_per_gpu", 1),
        on_divergence=config.get("on_divergence", "continue"),
        resume=lambda w: plan.path("finetune_resume", **w),
    message:
        "Fine-tuning {wildcards.exp} from {wildcards.variant}, init scale {wildcards.scale}, seed {wildcards.seed}"
    script:
        "../scripts/finetune.py"
