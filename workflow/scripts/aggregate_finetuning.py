"""Rule aggregate_finetuning: all learning curves, and steps-to-target per variant."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

import pandas as pd

from randlabels import runlog
from randlabels.io import read_table, write_table
from randlabels.summary import transfer_summary

log = runlog.start(snakemake.log[0])
curves = pd.concat([read_table(path) for path in snakemake.input.curves], ignore_index=True)
write_table(curves, snakemake.output.curves)
summary = transfer_summary(curves, target=snakemake.params.target)
write_table(summary, snakemake.output.summary)
log.info("%d curves summarized at target accuracy %.2f", len(snakemake.input.curves), snakemake.params.target)
