"""Rule aggregate_statistics: tidy misalignment, f(σ) and activation tables over runs."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

from randlabels import runlog
from randlabels.io import write_table
from randlabels.statsfile import activation_table, misalignment_table, transfer_function_table

log = runlog.start(snakemake.log[0])
paths = list(snakemake.input.stats)
write_table(misalignment_table(paths), snakemake.output.misalignment)
write_table(transfer_function_table(paths), snakemake.output.transfer_function)
write_table(activation_table(paths), snakemake.output.activations)
log.info("tables from %d statistics files written", len(paths))
