"""Rule pretrain_packed: train a group of seeds of one configuration in one process.

Each replica gets what the pretrain rule would give that seed alone: its split (its
own upstream images and random labels), init seed, data-order seed and test set. The
bundle holds each seed's checkpoint set and metrics; unpack_pretrain writes them to
the per-seed files.
"""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

from randlabels import provenance, runlog
from randlabels.data import task_data
from randlabels.data.h5file import read_dataset
from randlabels.data.splits import read_split
from randlabels.inits.pretrained import fresh_model
from randlabels.seeding import stream_seed
from randlabels.training.engine import TrainConfig, job_device
from randlabels.training.job import resume_policy
from randlabels.training.packed import PackedTrainer
from randlabels.training.packed_job import run_packed_training, save_bundle
from randlabels.training.progress import job_monitor
from randlabels.training.resume import hold_run

# First: one process per run (a second job on a run another process trains stops here,
# before opening, and so truncating, the run's log). Given back by store.clear().
hold_run(snakemake.params.resume)
log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
params = snakemake.params
seeds = list(params.seeds)
labels_kind = snakemake.wildcards.labels
device = job_device(params.device, snakemake.threads, snakemake.resources.gpu, params.jobs_per_gpu)

# One dataset file for the group, read once; a per-seed dataset: each seed's own draw.
datasets = {path: read_dataset(path) for path in dict.fromkeys(snakemake.input.datasets)}
models, trains, tests, classes = [], [], [], []
for seed, dataset_path, split_path in zip(seeds, snakemake.input.datasets, snakemake.input.splits, strict=True):
    train, test, num_classes = task_data.upstream(datasets[dataset_path], read_split(split_path), labels_kind, device)
    if test is not None:
        tests.append(test)
    trains.append(train)
    classes.append(num_classes)
    models.append(fresh_model(params.model, train.input_shape, num_classes, params.init_scale, stream_seed(seed, "init"),
                              where=f"experiments.{snakemake.wildcards.exp}.model"))
if len(set(classes)) != 1:
    raise ValueError(f"seeds {seeds} have different numbers of classes {classes}; they cannot be packed")

config = TrainConfig.from_dict(params.training)
log.info(
    "pre-training %s on %d samples with %s labels (%d classes), init scale %g, seeds %s packed in one job, on %s: %s",
    params.model, len(trains[0]), labels_kind, classes[0], params.init_scale, seeds, device, config,
)
trainer = PackedTrainer(
    models,
    trains,
    config,
    seeds=[stream_seed(seed, "order", "pretrain") for seed in seeds],
    test_data=tests or None,
    log=log,
)
# Everything the numbers depend on; the save interval is not among them.
run_settings = {"model": params.model, "init_scale": params.init_scale, "seeds": seeds}
run_settings["training"] = params.training
run_settings["labels"] = labels_kind
results, store = run_packed_training(
    trainer,
    seeds=seeds,
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
        [{"seed": seed} for seed in seeds], params.progress, tensorboard=snakemake.config.get("tensorboard", False), log=log,
    ),
)

runs = {}
for seed, train, num_classes, result in zip(seeds, trains, classes, results):
    checkpoints = dict(
        spec=params.model,
        input_shape=train.input_shape,
        num_classes=num_classes,
        init_scale=params.init_scale,
        seed=seed,
        labels=labels_kind,
        experiment=snakemake.wildcards.exp,
        states=result.checkpoints,
        diverged=result.diverged,
    )
    metrics = result.metrics.assign(
        experiment=snakemake.wildcards.exp, labels=labels_kind, init_scale=params.init_scale, seed=seed
    )
    runs[seed] = {"checkpoints": checkpoints, "metrics": metrics}
    log.info("seed %d: kept checkpoints at epochs %s%s", seed, sorted(result.checkpoints),
             " (diverged)" if result.diverged else "")
save_bundle(snakemake.output.bundle, runs)
store.clear()
