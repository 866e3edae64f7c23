"""Rule paper_target: one of the paper's experiments as a tidy table and a figure."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

import importlib

import numpy as np
import pandas as pd

from randlabels import plan, provenance, runlog, targets
from randlabels.io import read_table, write_table

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
params = snakemake.params
name = params.target
spec = targets.TARGETS[name]
log.info("%s: %s (experiments %s)", name, spec.description, ", ".join(params.experiments))

if spec.stats_files:  # fig_eigenfilters: pooled filters of the first experiment's seeds
    from randlabels.plots import eigenfilters
    from randlabels.stats import eigh_descending, weight_statistics
    from randlabels.statsfile import expect_path_identities, first_layer_name, last_epoch, read_layer

    frames, drawn = [], False
    paths = list(snakemake.input.stats)
    expect_path_identities(paths, plan.PATHS["stats"])  # each file written for the run its path names
    for exp in params.experiments:
        mine = [p for p in paths if f"/{exp}/stats/" in p]
        layer = first_layer_name(mine[0])
        records = [read_layer(p, last_epoch(p), layer) for p in mine]
        pooled = np.concatenate([r["weights"] for r in records])
        _, cov_w = weight_statistics(pooled)
        frames.append(targets.eigenfilter_table(exp, cov_w, records[0]["eigvec_x"], records[0]["sigma"] ** 2))
        if not drawn:
            _, eigvec_w = eigh_descending(cov_w)
            eigenfilters.plot(
                pooled, eigvec_w, records[0]["eigvec_x"], tuple(int(s) for s in records[0]["weight_shape"][1:]),
                snakemake.output.figure,
                title=f"{name}: {exp}, layer {layer}, {len(pooled)} filters pooled over {len(mine)} seeds",
            )
            drawn = True
    write_table(pd.concat(frames, ignore_index=True), snakemake.output.table)
else:
    tables = {
        kind: pd.concat([read_table(p) for p in snakemake.input[kind]], ignore_index=True)
        for kind in spec.tables
    }
    table, figure_table = targets.combine(name, tables, params.info)
    if table.empty:
        raise ValueError(f"{name}: the experiments {params.experiments} gave no rows for this target")
    write_table(table, snakemake.output.table)
    options = dict(spec.options)
    module = importlib.import_module(f"randlabels.plots.{spec.plot}")
    if spec.plot == "transfer_map":  # an accuracy, or {from_chance: f} (per class count in the table)
        options["target"] = params.target_accuracy[params.experiments[0]]
    module.plot(figure_table, snakemake.output.figure, **options)
log.info("wrote %s and %s", snakemake.output.table, snakemake.output.figure)
