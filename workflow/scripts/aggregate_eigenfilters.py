"""Rule aggregate_eigenfilters: the first-layer filters of an experiment's seeds pooled,
beside the top eigenvectors of their covariance and of the data's (one tidy table)."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

from randlabels import provenance, runlog
from randlabels.analysis import eigenfilters
from randlabels.analysis.statsfile import expect_path_identities, first_layer_name, last_epoch, read_layer
from randlabels.identity import path_wildcards
from randlabels.io import write_table
from randlabels.workflow import plan

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
paths = list(snakemake.input.stats)
expect_path_identities(paths, plan.PATHS["stats"])  # each file written for the run its path names
run = path_wildcards(plan.PATHS["stats"], paths[0])  # the first init scale, the label kind pooled
layer = first_layer_name(paths[0])
records = [read_layer(path, last_epoch(path), layer) for path in paths]
table = eigenfilters.table(records, snakemake.wildcards.exp, layer, run["labels"], float(run["scale"]))
write_table(table, snakemake.output[0])
log.info("pooled %d filters of layer %s over %d seeds into %s", table["filters"].iloc[0], layer, len(paths),
         snakemake.output[0])
