"""Rule aggregate_pretraining: stack per-run tables into one tidy table."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

import pandas as pd

from randlabels import runlog
from randlabels.io import read_table, write_table

log = runlog.start(snakemake.log[0])
table = pd.concat([read_table(path) for path in snakemake.input.metrics], ignore_index=True)
write_table(table, snakemake.output[0])
log.info("%d rows from %d runs → %s", len(table), len(snakemake.input.metrics), snakemake.output[0])
