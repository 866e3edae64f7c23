"""Rule finetune: downstream training from one initialization variant."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

import torch

from randlabels import runlog
from randlabels.gpus import bind_gpus
from randlabels.data.h5file import read_dataset
from randlabels.engine import DeviceData, Trainer, TrainConfig, resolve_device
from randlabels.io import write_table
from randlabels.resume import hold_run
from randlabels.training_job import run_training
from randlabels.models import head_prefix
from randlabels.identity import expected
from randlabels.plan import from_labels, parse_variant
from randlabels.probes import activation_probe
from randlabels.seeding import stream_seed
from randlabels.splits import read_split
from randlabels.transfer import (
    clone_state,
    fresh_model,
    load_into,
    partial_state,
    read_checkpoints,
    read_init,
    transferred_state,
    variant_layers,
)



def with_fresh_head(state: dict, fresh: dict, head: str) -> dict:
    """``state`` with the classifier taken from ``fresh`` (this task's class count)."""
    return {k: fresh[k] if k == head or k.startswith(head + ".") else v for k, v in state.items()}


# First: one process per run (a second job on a run another process trains stops here,
# before opening, and so truncating, the run's log). Given back by store.clear().
hold_run(snakemake.params.resume)
log = runlog.start(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
params = snakemake.params
settings = params.training
variant, task = params.variant, params.task
family, _depth = parse_variant(variant)
bind_gpus(snakemake.resources.gpu, params.jobs_per_gpu)  # before CUDA starts
device = resolve_device(params.device)

dataset = read_dataset(snakemake.input.dataset)
split = read_split(snakemake.input.split)
labels, num_classes = split.downstream_task(task, dataset.labels, dataset.num_classes)
train = DeviceData(dataset.images[split.downstream], labels, dataset.norm_mean, dataset.norm_std, device)
test = None
if task == "real":
    test = DeviceData(dataset.images[split.test], dataset.labels[split.test], dataset.norm_mean, dataset.norm_std, device)

source_diverged = False  # whether the initialization came from a diverged pre-training
model = fresh_model(params.model, train.input_shape, num_classes, params.init_scale, stream_seed(params.seed, "init", "finetune"),
                    where=f"experiments.{params.experiment}.model")
if family in ("pretrained", "pretrained_norescale", "first", "last"):
    # The pre-training transferred from (finetune.from_labels) of this experiment, scale
    # and seed; a checkpoint set of another run copied here is refused, naming both.
    source = read_checkpoints(
        snakemake.input.source,
        expect=expected(snakemake.wildcards, labels=from_labels(snakemake.config, params.experiment)),
    )
    if source["diverged"]:
        log.warning("%s: pre-training diverged; transferring its last finite checkpoint", snakemake.input.source)
    init_state, trained_state = source["states"][0], source["states"][max(source["states"])]
    if family in ("first", "last"):  # only some layers, rescaled; the rest (and the head) fresh
        groups = variant_layers(variant, model)
        state = partial_state(init_state, trained_state, clone_state(model), groups, rescale=True)
        log.info("transferring %s pre-trained layer(s): %s", variant, ", ".join(g[0] for g in groups))
    else:
        state = transferred_state(
            init_state=init_state,
            trained_state=trained_state,
            fresh_state=clone_state(model),
            head=head_prefix(model),
            rescale=family == "pretrained",
            reset_head=settings["reset_head"],
        )
    load_into(model, state, snakemake.input.source)
    source_diverged = bool(source["diverged"])
elif family in ("gaussian", "layerwise", "covariance"):
    # Built for the upstream class count: the head is this task's fresh one.
    init = read_init(snakemake.input.source, expect=expected(snakemake.wildcards, init=variant))
    load_into(model, with_fresh_head(init["state"], clone_state(model), head_prefix(model)), snakemake.input.source)
    source_diverged = bool(init.get("source_diverged", False))

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
)
curve = result.curve.assign(
    experiment=params.experiment, task=task, variant=variant, init_scale=params.init_scale, seed=params.seed,
    source_diverged=source_diverged,
)
write_table(curve, snakemake.output[0])
store.clear()
