"""Rule aggregate_eigenfilters: the first-layer filters of an experiment's seeds pooled
(diverged and collapsed runs left out), beside the top eigenvectors of their covariance
and of the data's (one tidy table)."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

from randlabels import provenance, runlog
from randlabels.analysis import eigenfilters
from randlabels.analysis.statsfile import expect_path_identities, first_layer_name, pooled_layer_records
from randlabels.errors import RandlabelsError
from randlabels.identity import path_wildcards
from randlabels.io import read_table, write_table
from randlabels.workflow import plan

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
paths = list(snakemake.input.stats)
expect_path_identities(paths, plan.PATHS["stats"])  # each file written for the run its path names
run = path_wildcards(plan.PATHS["stats"], paths[0])  # the first init scale, the label kind pooled
layer = first_layer_name(paths[0])
records, left_out = pooled_layer_records(paths, layer, read_table(snakemake.input.pretrain_metrics))
if not records:
    raise RandlabelsError(f"{snakemake.wildcards.exp}: no seed left to pool for the eigen-filter table "
                          f"({'; '.join(left_out)}); train more seeds, or look at why these failed")
table = eigenfilters.table(records, snakemake.wildcards.exp, layer, run["labels"], float(run["scale"]),
                           left_out=left_out)
write_table(table, snakemake.output[0])
log.info("pooled %d filters of layer %s over %d seeds into %s%s", table["filters"].iloc[0], layer, len(records),
         snakemake.output[0], f" (left out: {'; '.join(left_out)})" if left_out else "")
