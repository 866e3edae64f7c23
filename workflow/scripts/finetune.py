"""Rules finetune and finetune_packed: downstream training from initialization variants.

The finetune rule trains one variant. finetune_packed (``finetune.pack_variants``)
trains every variant of one (task, init scale, seed) in one process, one
:class:`~randlabels.training.packed.PackedTrainer` replica each: they share the
architecture, the data and the data order, only their initial weights differ. Either
way the table holds each variant's learning curve as a separate run would record it;
unpack_finetune writes a packed table's variants to their own files.
"""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

import pandas as pd

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
from randlabels.training.job import resume_policy, run_training
from randlabels.training.packed import PackedTrainer
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
task, chosen = params.task, list(params.variants)
packed = len(chosen) > 1
device = job_device(params.device, snakemake.threads, snakemake.resources.gpu, params.jobs_per_gpu)

train, test, num_classes = task_data.downstream(
    read_dataset(snakemake.input.dataset), read_split(snakemake.input.split), task, device
)


def initial_model(variant: str):
    """A fresh network of this seed with ``variant``'s initial state loaded, and whether
    that state came from a diverged pre-training."""
    model = fresh_model(params.model, train.input_shape, num_classes, params.init_scale,
                        stream_seed(params.seed, "init", "finetune"), where=f"experiments.{params.experiment}.model")
    source = params.sources[variant]
    if source is None:
        return model, False
    # The file of this experiment, scale and seed (pre-training: of finetune.from_labels);
    # a file of another run copied here is refused, naming both.
    if variants.parse(variant).source == "checkpoints":
        expect = expected(snakemake.wildcards, labels=from_labels(snakemake.config, params.experiment))
    else:
        expect = expected(snakemake.wildcards, init=variant)
    state, diverged = variants.initial_state(variant, model, source, expect, reset_head=settings["reset_head"], log=log)
    load_into(model, state, source)
    return model, diverged


models, source_diverged = zip(*(initial_model(variant) for variant in chosen))
config = TrainConfig.from_dict(settings)
log.info("fine-tuning from %s on %d samples (task %s, %d classes), init scale %g, seed %d, on %s%s: %s",
         ", ".join(chosen), len(train), task, num_classes, params.init_scale, params.seed, device,
         f", {len(chosen)} variants packed in one job" if packed else "", config)
probe = None
if settings["probe_samples"] > 0:  # per-layer ReLU statistics at every curve point
    probe_images = train.normalized(slice(0, min(settings["probe_samples"], len(train))))
    probe = activation_probe(lambda: probe_images.split(settings["eval_batch_size"]))
order_seed = stream_seed(params.seed, "order", "finetune")
if packed:
    trainer = PackedTrainer(models, train, config, seeds=[order_seed] * len(chosen), test_data=test, log=log, probe=probe)
else:
    trainer = Trainer(models[0], train, config, seed=order_seed, test_data=test, log=log, probe=probe)
# Live rows and TensorBoard folders: per seed for one variant, per variant for a packed job.
if packed:
    run = {"experiment": params.experiment, "task": task, "init_scale": params.init_scale, "seed": params.seed}
    replicas = [{"init": variant} for variant in chosen]
else:
    run = {"experiment": params.experiment, "task": task, "init": chosen[0], "init_scale": params.init_scale}
    replicas = [{"seed": params.seed}]
# Everything the numbers depend on; the save interval is not among them.
run_settings = {key: params[key] for key in ("model", "init_scale", "seed", "task")}
run_settings["variants"] = chosen
run_settings["training"] = settings
result, store = run_training(
    trainer,
    resume_path=params.resume,
    run_settings=run_settings,
    inputs=snakemake.input,
    where=f"experiments.{params.experiment}.finetune",
    **resume_policy(snakemake.config, params.experiment, "finetune"),
    on_divergence=params.on_divergence,
    log=log,
    replicas=[f"variant {variant}" for variant in chosen] if packed else None,
    pack_setting="pack_variants",
    eval_every=settings["eval_every"],
    monitor=job_monitor(run, replicas, params.progress, tensorboard=snakemake.config.get("tensorboard", False), log=log),
)
curves = [
    run.curve.assign(experiment=params.experiment, task=task, variant=variant, init_scale=params.init_scale,
                     seed=params.seed, source_diverged=diverged)
    for variant, run, diverged in zip(chosen, result if packed else [result], source_diverged, strict=True)
]
write_table(pd.concat(curves, ignore_index=True), snakemake.output[0])
store.clear()
