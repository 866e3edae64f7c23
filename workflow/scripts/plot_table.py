"""Rules plot_*: draw one figure from one tidy table with the figure's own module."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

import importlib

from randlabels import provenance, runlog
from randlabels.io import read_table

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
module = importlib.import_module(snakemake.params.module)
module.plot(read_table(snakemake.input.table), snakemake.output[0], **snakemake.params.options)
log.info("drew %s with %s", snakemake.output[0], snakemake.params.module)
