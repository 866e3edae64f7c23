"""Rule finetune: downstream training from one initialization variant."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

from randlabels import provenance, runlog
from randlabels.analysis.probes import activation_probe
from randlabels.data import task_data
from randlabels.data.h5file import read_dataset
from randlabels.data.splits import read_split
from randlabels.identity import expected
from randlabels.inits import variants
from randlabels.inits.pretrained import fresh_model, load_into
from randlabels.io import write_table
from randlabels.seeding import stream_seed
from randlabels.training.engine import Trainer, TrainConfig, job_device
from randlabels.training.job import run_training
from randlabels.training.progress import job_monitor
from randlabels.training.resume import hold_run
from randlabels.workflow.plan import from_labels


# First: one process per run (a second job on a run another process trains stops here,
# before opening, and so truncating, the run's log). Given back by store.clear().
hold_run(snakemake.params.resume)
log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
params = snakemake.params
settings = params.training
variant, task = params.variant, params.task
parsed = variants.parse(variant)
device = job_device(params.device, snakemake.threads, snakemake.resources.gpu, params.jobs_per_gpu)

train, test, num_classes = task_data.downstream(
    read_dataset(snakemake.input.dataset), read_split(snakemake.input.split), task, device
)

model = fresh_model(params.model, train.input_shape, num_classes, params.init_scale, stream_seed(params.seed, "init", "finetune"),
                    where=f"experiments.{params.experiment}.model")
source_diverged = False  # whether the initialization came from a diverged pre-training
if parsed.source is not None:
    # The file of this experiment, scale and seed (pre-training: of finetune.from_labels);
    # a file of another run copied here is refused, naming both.
    if parsed.source == "checkpoints":
        expect = expected(snakemake.wildcards, labels=from_labels(snakemake.config, params.experiment))
    else:
        expect = expected(snakemake.wildcards, init=variant)
    state, source_diverged = variants.initial_state(
        variant, model, snakemake.input.source, expect, reset_head=settings["reset_head"], log=log
    )
    load_into(model, state, snakemake.input.source)

config = TrainConfig.from_dict(settings)
log.info("fine-tuning from %s on %d samples (task %s, %d classes), init scale %g, seed %d, on %s: %s",
         variant, len(train), task, num_classes, params.init_scale, params.seed, device, config)
probe = None
if settings["probe_samples"] > 0:  # per-layer ReLU statistics at every curve point
    probe_images = train.normalized(slice(0, min(settings["probe_samples"], len(train))))
    probe = activation_probe(lambda: probe_images.split(settings["eval_batch_size"]))
trainer = Trainer(model, train, config, seed=stream_seed(params.seed, "order", "finetune"), test_data=test, log=log, probe=probe)
# Everything the numbers depend on; the save interval is not among them.
run_settings = {key: params[key] for key in ("model", "init_scale", "seed", "variant", "task")}
run_settings["training"] = {k: v for k, v in settings.items() if k != "resume_every"}
result, store = run_training(
    trainer,
    resume_path=params.resume,
    run_settings=run_settings,
    inputs=snakemake.input,
    where=f"experiments.{params.experiment}.finetune",
    save_every=settings["resume_every"],
    on_divergence=params.on_divergence,
    log=log,
    eval_every=settings["eval_every"],
    monitor=job_monitor(
        {"experiment": params.experiment, "task": task, "init": variant, "init_scale": params.init_scale},
        [params.seed], params.progress, tensorboard=snakemake.config.get("tensorboard", False), log=log,
    ),
)
curve = result.curve.assign(
    experiment=params.experiment, task=task, variant=variant, init_scale=params.init_scale, seed=params.seed,
    source_diverged=source_diverged,
)
write_table(curve, snakemake.output[0])
store.clear()
