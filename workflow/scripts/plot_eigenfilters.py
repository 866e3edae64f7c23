"""Rule plot_eigenfilters: filters beside the top eigenvectors of pooled Σw and of Σx."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

import numpy as np

from randlabels import plan, provenance, runlog
from randlabels.plots import eigenfilters
from randlabels.stats import eigh_descending, weight_statistics
from randlabels.statsfile import expect_path_identities, first_layer_name, last_epoch, read_layer

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
paths = list(snakemake.input.stats)
expect_path_identities(paths, plan.PATHS["stats"])  # each file written for the run its path names
layer = first_layer_name(paths[0])
records = [read_layer(path, last_epoch(path), layer) for path in paths]
pooled = np.concatenate([r["weights"] for r in records])
_, cov_w = weight_statistics(pooled)
_, eigvec_w = eigh_descending(cov_w)
shape = tuple(int(s) for s in records[0]["weight_shape"][1:])
eigenfilters.plot(
    pooled,
    eigvec_w,
    records[0]["eigvec_x"],
    shape,
    snakemake.output[0],
    title=f"{snakemake.wildcards.exp}: layer {layer}, {len(pooled)} filters pooled over {len(paths)} seeds",
)
log.info("drew %s", snakemake.output[0])
