"""Rule gaussian_init: new first-layer filters drawn from N(μw, Σw) of pre-trained ones."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

import numpy as np
import torch

from randlabels import provenance, runlog
from randlabels.analysis.stats import weight_vectors
from randlabels.data.splits import read_split
from randlabels.identity import expected, path_wildcards
from randlabels.inits.pretrained import clone_state, fresh_model
from randlabels.inits.sampling import fit_gaussian, sample_gaussian
from randlabels.models.networks import resolve_layer
from randlabels.seeding import stream_rng, stream_seed
from randlabels.training.checkpoints import buildable_spec, read_checkpoints, save_init
from randlabels.workflow import plan

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
params = snakemake.params
# Each source must be the pre-training its path names (experiment, from_labels, scale,
# seed): a checkpoint set of another run copied there is refused, naming both.
sources = [
    read_checkpoints(path, expect=expected(path_wildcards(plan.PATHS["checkpoints"], path)))
    for path in snakemake.input.sources
]
diverged = [path for path, source in zip(snakemake.input.sources, sources) if source["diverged"]]
for path in diverged:
    log.warning("%s: pre-training diverged; fitting to its last finite checkpoint (flagged downstream)", path)
first = sources[0]
split = read_split(snakemake.input.split)
# The head is re-initialized for each downstream task; it only has to exist here.
num_classes = split.upstream_classes

# The spec recorded in the checkpoint; an own model's factory runs only if the config names it.
spec = buildable_spec(first, snakemake.input.sources[0], snakemake.config["experiments"][snakemake.wildcards.exp]["model"])
fresh = fresh_model(spec, first["input_shape"], num_classes, params.init_scale, stream_seed(params.seed, "init", "finetune"),
                    where=f"experiments.{snakemake.wildcards.exp}.model")
layer = resolve_layer(fresh, params.sample["layer"])
key = layer + ".weight"
vectors = np.concatenate([weight_vectors(s["states"][max(s["states"])][key]) for s in sources])
mean, cov = fit_gaussian(vectors, zero_mean=params.sample["zero_mean"])
shape = fresh.state_dict()[key].shape
samples = sample_gaussian(mean, cov, shape[0], stream_rng(params.seed, "gaussian-sample"))
state = clone_state(fresh)
state[key] = torch.as_tensor(samples, dtype=state[key].dtype).reshape(shape)
log.info(
    "fitted N(μw, Σw) to %d filters of layer %s from %d run(s); drew %d new filters",
    len(vectors), layer, len(sources), shape[0],
)
save_init(
    snakemake.output[0],
    spec=spec,
    input_shape=first["input_shape"],
    num_classes=num_classes,
    state=state,
    description=f"Gaussian approximation of {layer} ({len(sources)} run(s), zero_mean={params.sample['zero_mean']})",
    source_diverged=bool(diverged),
    experiment=snakemake.wildcards.exp,
    init="gaussian",
    init_scale=params.init_scale,
    seed=params.seed,
)
