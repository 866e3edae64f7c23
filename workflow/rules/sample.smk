rule gaussian_init:
    """first-layer filters drawn from N(μw, Σw) of pre-trained ones, by randlabels.inits.sampling"""
    input:
        sources=lambda w: plan.sample_sources(config, w.exp, w.scale, w.seed),
        split=plan.PATHS["split"],
        code=script_code("gaussian_init"),
        model_code=lambda w: plan.model_code(config, w.exp),
    output:
        plan.PATHS["gaussian_init"],
    log:
        logs("gaussian_init/{exp}/scale{scale}/seed{seed}"),
    benchmark:
        benchmarks("gaussian_init/{exp}/scale{scale}/seed{seed}")
    conda:
        ENV
    resources:
        **RESOURCES_LIGHT,
    params:
        sample=lambda w: plan.sample_settings(config, w.exp),
        init_scale=scale_of,
        seed=lambda w: int(w.seed),
    message:
        "Sampling a Gaussian-approximation initialization of {wildcards.exp}, scale {wildcards.scale}, seed {wildcards.seed}"
    script:
        "../scripts/gaussian_init.py"
