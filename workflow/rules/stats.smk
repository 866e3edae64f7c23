rule statistics:
    """Σx, Σw, misalignment, f(σ) and activations of one run at every checkpoint, by randlabels.analysis.measure"""
    input:
        checkpoints=plan.PATHS["checkpoints"],
        dataset=exp_dataset_file,
        split=plan.PATHS["split"],
        code=script_code("statistics"),
        model_code=lambda w: plan.model_code(config, w.exp),
    output:
        plan.PATHS["stats"],
    log:
        logs("statistics/{exp}/{labels}/scale{scale}/seed{seed}"),
    benchmark:
        benchmarks("statistics/{exp}/{labels}/scale{scale}/seed{seed}")
    conda:
        ENV
    threads: 1
    resources:
        **RESOURCES_LIGHT,
    params:
        stats=lambda w: plan.stats_settings(config, w.exp),
        experiment=lambda w: w.exp,
        seed=lambda w: int(w.seed),
        device=config.get("device", "auto"),
    message:
        "Measuring Σx, Σw, misalignment and f(σ) of {wildcards.exp}/{wildcards.labels}, scale {wildcards.scale}, seed {wildcards.seed}"
    script:
        "../scripts/statistics.py"
