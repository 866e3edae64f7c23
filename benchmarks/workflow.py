"""``snakemake -n``: the time to build the DAG against the number of jobs.

The default config.yaml with more seeds: each seed adds 24 jobs (splits,
pre-training, statistics, Gaussian inits and fine-tuning of both experiments) to 15
that do not depend on the seed, so 4, 41 and 416 seeds give about 100, 1,000 and
10,000 jobs. Each dry run is a fresh ``snakemake -n --configfile bench.yaml`` in a
temporary copy of the project (tests/workflow_helpers.copy_project: no results/, so
every job is to be run), its output captured as a script would; the wall-clock time
includes Python's start-up, parsing the Snakefile and checking the config.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import ROOT, Sizes, log, median

sys.path.insert(0, str(ROOT / "tests"))
from workflow_helpers import copy_project  # noqa: E402  (tests/ is no package)

SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def _jobs(output: str) -> int:
    match = re.search(r"^total\s+(\d+)\s*$", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no job count in snakemake's output:\n{output[-3000:]}")
    return int(match.group(1))


def run(device, sizes: Sizes) -> list[dict]:  # noqa: ARG001 (no device involved)
    rows = []
    with tempfile.TemporaryDirectory(prefix="randlabels-bench-") as tmp:
        project = copy_project(Path(tmp) / "project")
        config = yaml.safe_load((ROOT / "config.yaml").read_text())
        for seeds, trials in zip(sizes.dag_seeds, sizes.dag_trials):
            config["seeds"] = list(range(seeds))
            (project / "bench.yaml").write_text(yaml.safe_dump(config))
            times, jobs = [], None
            for _ in range(trials):
                start = time.perf_counter()
                result = subprocess.run([str(SNAKEMAKE), "-n", "--configfile", "bench.yaml"], cwd=project,
                                        capture_output=True, text=True, timeout=1800)
                times.append(time.perf_counter() - start)
                if result.returncode != 0:
                    raise RuntimeError(f"snakemake -n failed:\n{result.stderr[-3000:]}")
                jobs = _jobs(result.stdout + result.stderr)
            log(f"snakemake -n: {seeds} seeds, {jobs} jobs: {median(times):.1f} s (median of {trials})")
            rows.append({"seeds": seeds, "jobs": jobs, "seconds": median(times), "trial_seconds": times,
                         "ms_per_job": 1000 * median(times) / jobs})
    return rows
