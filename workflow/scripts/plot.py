"""Rule plot: one per-experiment figure, drawn from its tables by its own module
(randlabels.plots.FIGURES)."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

import importlib

from randlabels import provenance, runlog
from randlabels.io import read_table
from randlabels.plots import FIGURES, figure_module

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
name = snakemake.wildcards.figure
module = importlib.import_module(figure_module(name))  # the rule lists it as a code input
extra = {keyword: read_table(snakemake.input[keyword]) for keyword in FIGURES[name].extra}
module.plot(read_table(snakemake.input.table), snakemake.output[0], **extra)
log.info("drew %s with %s", snakemake.output[0], module.__name__)
