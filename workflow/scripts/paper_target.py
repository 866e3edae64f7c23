"""Rule paper_target: one of the paper's experiments as a tidy table and a figure."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

import importlib

import pandas as pd

from randlabels import provenance, runlog
from randlabels.io import read_table, write_table
from randlabels.workflow import targets

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
params = snakemake.params
name = params.target
spec = targets.TARGETS[name]
log.info("%s: %s (experiments %s)", name, spec.description, ", ".join(params.experiments))

tables = {kind: pd.concat([read_table(p) for p in snakemake.input[kind]], ignore_index=True) for kind in spec.tables}
table, figure_table = targets.combine(name, tables, params.info)
if table.empty:
    raise ValueError(f"{name}: the experiments {params.experiments} gave no rows for this target")
write_table(table, snakemake.output.table)
module = importlib.import_module(f"randlabels.plots.{spec.plot}")
module.plot(figure_table, snakemake.output.figure, **spec.options(params.info))
log.info("wrote %s and %s", snakemake.output.table, snakemake.output.figure)
