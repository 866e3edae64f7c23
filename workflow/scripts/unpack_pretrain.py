"""Rule unpack_pretrain: one seed's checkpoints.pt and metrics.tsv from its group's
bundle, the same files the pretrain rule writes for a seed trained alone."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

from randlabels import provenance, runlog
from randlabels.identity import expected
from randlabels.io import write_table
from randlabels.training.checkpoints import save_checkpoints
from randlabels.training.packed_job import read_bundle_run

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
seed = snakemake.params.seed
# The seed's entry must be this run's (experiment, labels, scale, seed): a bundle of another is refused.
checkpoints, metrics = read_bundle_run(snakemake.input.bundle, seed, expect=expected(snakemake.wildcards))
save_checkpoints(snakemake.output.checkpoints, **checkpoints)
write_table(metrics, snakemake.output.metrics)
log.info("seed %d from %s: checkpoints at epochs %s%s", seed, snakemake.input.bundle,
         sorted(checkpoints["states"]), " (diverged)" if checkpoints["diverged"] else "")
