"""Rule statistics: Σx, Σw, misalignment, f(σ) and activations at every checkpoint."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

from randlabels import provenance, runlog
from randlabels.analysis.measure import measure_checkpoints
from randlabels.analysis.statsfile import write_stats
from randlabels.data import task_data
from randlabels.data.h5file import read_dataset
from randlabels.data.splits import read_split
from randlabels.identity import expected
from randlabels.inits.pretrained import load_into
from randlabels.models.networks import build_model
from randlabels.training.checkpoints import buildable_spec, read_checkpoints
from randlabels.training.engine import job_device

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
params = snakemake.params
device = job_device(params.device, snakemake.threads)
# A checkpoint set of another run (copied here) is refused, naming both runs.
checkpoints = read_checkpoints(snakemake.input.checkpoints, expect=expected(snakemake.wildcards))
# Σx of the upstream images (the labels play no part).
data = task_data.upstream(read_dataset(snakemake.input.dataset), read_split(snakemake.input.split), "random", device).train
# The spec recorded in the checkpoint; an own model's factory runs only if the config names it.
spec = buildable_spec(checkpoints, snakemake.input.checkpoints, snakemake.config["experiments"][snakemake.wildcards.exp]["model"])
model = build_model(spec, checkpoints["input_shape"], checkpoints["num_classes"], where=f"experiments.{snakemake.wildcards.exp}.model").to(device)
batch_size = params.stats["batch_size"]
records = measure_checkpoints(
    model,
    checkpoints["states"],
    params.stats["layers"],
    batches=lambda: (inputs for inputs, _ in data.batches(batch_size)),
    seed=params.seed,
    load=lambda m, state: load_into(m, state, snakemake.input.checkpoints),
    log=log,
    memory_mb=getattr(snakemake.resources, "mem_mb", None),
    where=f"experiments.{snakemake.wildcards.exp}.stats.layers",
)
write_stats(
    snakemake.output[0],
    records,
    {
        "experiment": params.experiment,
        "labels": checkpoints["labels"],  # checked against the wildcards above
        "init_scale": checkpoints["init_scale"],
        "seed": checkpoints["seed"],
        "arch": checkpoints["spec"]["arch"],
        "diverged": checkpoints["diverged"],
        "source": str(snakemake.input.checkpoints),
    },
    precision=params.stats["precision"],
)
log.info("wrote %s (%d checkpoints)", snakemake.output[0], len(records))
