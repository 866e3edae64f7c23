"""Rule make_split: disjoint upstream/downstream/test subsets and random labels of one seed."""

import _bootstrap  # noqa: F401  (puts src/ on sys.path)

from randlabels import provenance, runlog
from randlabels.data.gaussian import check_draw
from randlabels.data.h5file import read_dataset
from randlabels.data.splits import make_split, write_split

log = runlog.start(snakemake.log[0])
provenance.record_job(snakemake)  # rule and params into every file this job writes
settings = snakemake.params.split
dataset = read_dataset(snakemake.input.dataset)
check_draw(dataset.attrs, snakemake.params.seed, snakemake.input.dataset)  # a per-seed draw: this seed's own
split = make_split(
    dataset.is_test,
    upstream=settings["upstream"],
    downstream=settings["downstream"],
    test=settings["test"],
    upstream_classes=settings["upstream_classes"],
    downstream_classes=settings["downstream_classes"],
    seed=snakemake.params.seed,
    source=snakemake.input.dataset,  # named, with the config section, if it is too small
    where=f"experiments.{snakemake.wildcards.exp}.split",
)
write_split(split, snakemake.output[0])
log.info(
    "upstream %d, downstream %d, test %d samples; wrote %s",
    len(split.upstream), len(split.downstream), len(split.test), snakemake.output[0],
)
