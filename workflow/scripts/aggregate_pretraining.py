"""Rule aggregate_pretraining: stack per-run metrics into one tidy table, each run
flagged ``collapsed`` if its random-label training never left chance
(randlabels.analysis.memorization)."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

import pandas as pd

from randlabels import provenance, runlog
from randlabels.analysis.memorization import collapsed_runs, with_collapsed
from randlabels.io import read_table, write_table

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
table = pd.concat([read_table(path) for path in snakemake.input.metrics], ignore_index=True)
split = snakemake.params.split
runs = collapsed_runs(table, classes=split["upstream_classes"], samples=split["upstream"])
table = with_collapsed(table, runs)
write_table(table, snakemake.output[0])
log.info("%d rows from %d runs → %s", len(table), len(snakemake.input.metrics), snakemake.output[0])
for run in runs[runs["collapsed"]].itertuples():
    log.warning(
        "%s %s labels, init scale %g, seed %d collapsed: final training accuracy %.3f is at chance",
        run.experiment, run.labels, run.init_scale, run.seed, run.final_train_acc,
    )
