"""Rule aggregate_statistics: tidy misalignment (per seed and pooled over seeds), f(σ) and
activation tables over runs."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

from randlabels import provenance, runlog
from randlabels.analysis.memorization import with_collapsed
from randlabels.io import read_table, write_table
from randlabels.workflow import plan
from randlabels.analysis.statsfile import (
    activation_table,
    expect_path_identities,
    misalignment_table,
    pooled_misalignment_table,
    transfer_function_table,
)

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
paths = list(snakemake.input.stats)
expect_path_identities(paths, plan.PATHS["stats"])  # each file written for the run its path names
runs = read_table(snakemake.input.pretrain_metrics)  # carries each run's collapsed flag
write_table(with_collapsed(misalignment_table(paths), runs), snakemake.output.misalignment)
# Σw of each configuration's filters pooled over its seeds (diverged and collapsed runs left out).
write_table(pooled_misalignment_table(paths, runs), snakemake.output.misalignment_pooled)
write_table(with_collapsed(transfer_function_table(paths), runs), snakemake.output.transfer_function)
write_table(with_collapsed(activation_table(paths), runs), snakemake.output.activations)
log.info("tables from %d statistics files written", len(paths))
