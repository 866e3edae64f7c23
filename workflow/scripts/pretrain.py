"""Rule pretrain: train one network on real or random labels, keep checkpoints."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

from randlabels import provenance, runlog
from randlabels.data import task_data
from randlabels.data.h5file import read_dataset
from randlabels.data.splits import read_split
from randlabels.inits.pretrained import fresh_model
from randlabels.io import write_table
from randlabels.seeding import stream_seed
from randlabels.training.checkpoints import save_checkpoints
from randlabels.training.engine import Trainer, TrainConfig, job_device
from randlabels.training.job import resume_policy, run_training
from randlabels.training.progress import job_monitor
from randlabels.training.resume import hold_run

# First: one process per run (a second job on a run another process trains stops here,
# before opening, and so truncating, the run's log). Given back by store.clear().
hold_run(snakemake.params.resume)
log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
params = snakemake.params
labels_kind = snakemake.wildcards.labels
device = job_device(params.device, snakemake.threads, snakemake.resources.gpu, params.jobs_per_gpu)

train, test, num_classes = task_data.upstream(
    read_dataset(snakemake.input.dataset), read_split(snakemake.input.split), labels_kind, device
)

model = fresh_model(params.model, train.input_shape, num_classes, params.init_scale, stream_seed(params.seed, "init"),
                    where=f"experiments.{snakemake.wildcards.exp}.model")
config = TrainConfig.from_dict(params.training)
log.info(
    "pre-training %s on %d samples with %s labels (%d classes), init scale %g, seed %d, on %s: %s",
    params.model, len(train), labels_kind, num_classes, params.init_scale, params.seed, device, config,
)
trainer = Trainer(model, train, config, seed=stream_seed(params.seed, "order", "pretrain"), test_data=test, log=log)
# Everything the numbers depend on; the save interval is not among them.
run_settings = {key: params[key] for key in ("model", "init_scale", "seed")}
run_settings["training"] = params.training
run_settings["labels"] = labels_kind
result, store = run_training(
    trainer,
    resume_path=params.resume,
    run_settings=run_settings,
    inputs=snakemake.input,
    where=f"experiments.{snakemake.wildcards.exp}.pretrain",
    **resume_policy(snakemake.config, snakemake.wildcards.exp, "pretrain"),
    on_divergence=params.on_divergence,
    log=log,
    checkpoint_epochs=params.training["checkpoints"],
    monitor=job_monitor(
        {"experiment": snakemake.wildcards.exp, "labels": labels_kind, "init_scale": params.init_scale},
        [{"seed": params.seed}], params.progress, tensorboard=snakemake.config.get("tensorboard", False), log=log,
    ),
)

save_checkpoints(
    snakemake.output.checkpoints,
    spec=params.model,
    input_shape=train.input_shape,
    num_classes=num_classes,
    init_scale=params.init_scale,
    seed=params.seed,
    labels=labels_kind,
    experiment=snakemake.wildcards.exp,
    states=result.checkpoints,
    diverged=result.diverged,
)
metrics = result.metrics.assign(
    experiment=snakemake.wildcards.exp, labels=labels_kind, init_scale=params.init_scale, seed=params.seed
)
write_table(metrics, snakemake.output.metrics)
store.clear()
log.info("kept checkpoints at epochs %s", sorted(result.checkpoints))
