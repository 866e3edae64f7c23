"""Rule construct_init: the first k layers built from the data covariance (paper §2.5).

Method "layerwise" estimates the transfer function g from a network pre-trained on
random labels (input ``source``, its final checkpoint); method "covariance" uses the
training-free parametric g (randlabels.inits.construct.parametric_transfer). Σx is measured on
the first ``samples`` upstream images of the split.
"""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

import time

from randlabels import provenance, runlog
from randlabels.data.h5file import read_dataset
from randlabels.data.splits import read_split
from randlabels.identity import expected
from randlabels.inits.construct import construct_layers, constructible_layers
from randlabels.inits.pretrained import clone_state, fresh_model, load_into
from randlabels.models.networks import build_model
from randlabels.seeding import stream_seed
from randlabels.training.checkpoints import buildable_spec, read_checkpoints, save_init
from randlabels.training.engine import DeviceData, job_device
from randlabels.workflow.plan import from_labels

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
params = snakemake.params
method, depth = params.method, int(params.depth)
if int(params.samples) < 2:
    raise ValueError(f"construct_init: samples must be >= 2 for a covariance, got {params.samples}")
device = job_device(params.device, snakemake.threads)

dataset = read_dataset(snakemake.input.dataset)
split = read_split(snakemake.input.split)
index = split.upstream[: int(params.samples)]
data = DeviceData.subset(dataset, index, device)
num_classes = split.upstream_classes


def batches():
    """Normalized upstream inputs, in storage order, on the device."""
    for inputs, _ in data.batches(int(params.batch_size)):
        yield inputs


model = fresh_model(params.model, data.input_shape, num_classes, params.init_scale, stream_seed(params.seed, "init", "finetune"),
                    where=f"experiments.{snakemake.wildcards.exp}.model").to(device)

pretrained = None
source_diverged = False
if method == "layerwise":
    # The pre-training transferred from (finetune.from_labels) of this experiment, scale
    # and seed; a checkpoint set of another run copied here is refused, naming both.
    run = expected(snakemake.wildcards, labels=from_labels(snakemake.config, snakemake.wildcards.exp))
    run.pop("init", None)  # the construction's own name: the source is a pre-training
    source = read_checkpoints(snakemake.input.source, expect=run)
    if source["diverged"]:
        log.warning("%s: pre-training diverged; estimating g from its last finite checkpoint (flagged downstream)", snakemake.input.source)
    source_diverged = bool(source["diverged"])
    spec = buildable_spec(source, snakemake.input.source, params.model)  # a file's own-model factory runs only if configured
    pretrained = build_model(spec, source["input_shape"], source["num_classes"], where=f"experiments.{snakemake.wildcards.exp}.model")
    load_into(pretrained, source["states"][max(source["states"])], snakemake.input.source)
    pretrained.to(device)

layers = constructible_layers(model)[:depth] if depth >= 0 else []
log.info(
    "constructing %d layer(s) %s by method %s from %d upstream samples, init scale %g, seed %d, on %s",
    depth, layers, method, len(data), params.init_scale, params.seed, device,
)
start = time.perf_counter()
diagnostics = construct_layers(model, depth, method, batches, params.seed, pretrained=pretrained)
for name, info in diagnostics.items():
    log.info(
        "layer %s: d = %d, %d units, Σx from %d vectors (rank %d, σ_max %.3g), norm %.4g, %.1f s",
        name, info["dim"], info["units"], info["samples"], info["rank"], info["sigma_max"], info["norm"], info["seconds"],
    )
log.info("constructed in %.1f s", time.perf_counter() - start)

what = "estimated from a random-label pre-training" if method == "layerwise" else "parametric"
save_init(
    snakemake.output[0],
    spec=params.model,
    input_shape=data.input_shape,
    num_classes=num_classes,
    state=clone_state(model),
    description=f"layer-wise construction (method {method}, g {what}, k = {depth}: {', '.join(layers) or 'no layer'})",
    source_diverged=source_diverged,
    experiment=snakemake.wildcards.exp,
    init=snakemake.wildcards.construct,
    init_scale=params.init_scale,
    seed=params.seed,
)
