"""Rules prepare_dataset and prepare_dataset_draw: one named dataset → results/data/NAME.h5
(a per-seed dataset: the draw of one seed → results/data/NAME/seedS.h5)."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

from randlabels import provenance, runlog
from randlabels.data.sources import prepare_dataset

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
settings = dict(snakemake.params.settings)
source = settings.pop("source")
log.info("preparing dataset %s from source %s %s", snakemake.wildcards.dataset, source, settings)
prepare_dataset(snakemake.output[0], source, **settings)
log.info("wrote %s", snakemake.output[0])
