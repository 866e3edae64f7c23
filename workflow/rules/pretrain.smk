rule pretrain:
    input:
        dataset=exp_dataset_file,
        split=plan.PATHS["split"],
        code=TRAINING_CODE,
    output:
        checkpoints=plan.PATHS["checkpoints"],
        metrics=plan.PATHS["pretrain_metrics"],
    log:
        logs("pretrain/{exp}/{labels}/scale{scale}/seed{seed}"),
    benchmark:
        benchmarks("pretrain/{exp}/{labels}/scale{scale}/seed{seed}")
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
    message:
        "Pre-training {wildcards.exp} on {wildcards.labels} labels, init scale {wildcards.scale}, seed {wildcards.seed}"
    script:
        "../scripts/pretrain.py"
