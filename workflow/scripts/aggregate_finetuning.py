"""Rule aggregate_finetuning: all learning curves, and steps-to-target per variant."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

import h5py
import pandas as pd

from randlabels import provenance, runlog
from randlabels.analysis.summary import describe_target, is_relative, transfer_summary
from randlabels.io import read_table, write_table

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
curves = pd.concat([read_table(path) for path in snakemake.input.curves], ignore_index=True)
write_table(curves, snakemake.output.curves)
target = snakemake.params.target
real_classes = None
if is_relative(target) and "task" in curves.columns and "real" in set(curves["task"]):
    # A target relative to chance needs the real task's number of classes: the dataset's.
    dataset = snakemake.input.dataset
    with h5py.File(dataset, "r") as h5:
        real_classes = int(h5.attrs["num_classes"])
    log.info("real labels: %d classes (%s)", real_classes, dataset)
summary = transfer_summary(curves, target=target, real_classes=real_classes)
write_table(summary, snakemake.output.summary)
log.info("%d curves summarized at target accuracy %s (per task: %s)", len(snakemake.input.curves), describe_target(target),
         ", ".join(f"{task} {value:.4g}" for task, value in summary.groupby("task")["target"].first().items()))
