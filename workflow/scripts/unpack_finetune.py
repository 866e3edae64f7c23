"""Rule unpack_finetune: one variant's learning curve from its packed fine-tuning
table, the same file the finetune rule writes for a variant trained alone."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

from randlabels import provenance, runlog
from randlabels.io import write_table
from randlabels.training.unpack import variant_curve

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
w = snakemake.wildcards
curve = variant_curve(snakemake.input.packed, snakemake.params.variant,
                      experiment=w.exp, task=w.task, scale=w.scale, seed=int(w.seed))
write_table(curve, snakemake.output[0])
log.info("%s from %s: %d learning-curve rows%s", snakemake.params.variant, snakemake.input.packed, len(curve),
         " (diverged)" if curve["diverged"].any() else "")
