"""Rule aggregate_eigenfilters: the first-layer filters of an experiment's seeds pooled,
beside the top eigenvectors of their covariance, of their change from initialization and
of the data's covariance (one tidy table); diverged seeds left out, collapsed ones named."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

from randlabels import provenance, runlog
from randlabels.analysis import eigenfilters
from randlabels.analysis.memorization import collapsed_keys
from randlabels.analysis.statsfile import expect_path_identities, first_layer_name, last_epoch, read_layer
from randlabels.identity import path_wildcards
from randlabels.io import read_table, write_table
from randlabels.workflow import plan

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
paths = list(snakemake.input.stats)
expect_path_identities(paths, plan.PATHS["stats"])  # each file written for the run its path names
run = path_wildcards(plan.PATHS["stats"], paths[0])  # the first init scale, the label kind pooled
layer = first_layer_name(paths[0])
records = [read_layer(path, last_epoch(path), layer) for path in paths]
initial = [read_layer(path, 0, layer) for path in paths]  # W₀: epoch 0, kept in every checkpoint set
exp, scale = snakemake.wildcards.exp, float(run["scale"])
collapsed = {seed for e, labels, s, seed in collapsed_keys(read_table(snakemake.input.pretrain_metrics))
             if (e, labels, s) == (exp, run["labels"], scale)}
table = eigenfilters.table(records, exp, layer, run["labels"], scale, collapsed=collapsed, initial=initial)
write_table(table, snakemake.output[0])
head = table.iloc[0]
if head["reason"]:
    log.warning("%s: nothing to pool: %s", exp, head["reason"])
else:
    log.info("pooled %d filters of layer %s over %d of %d seeds into %s%s%s", head["filters"], layer, head["seeds"],
             len(paths), snakemake.output[0], f"; left out: {head['left_out']}" if head["left_out"] else "",
             f"; collapsed, pooled: {head['collapsed']}" if head["collapsed"] else "")
