"""The workflow on a real SLURM cluster, through profiles/slurm (`make test-slurm`).

`make test-slurm` starts a single-node cluster on this machine
(tests/cluster/slurm_cluster.sh up), runs this module and stops the cluster again.
Selected explicitly as root (`pytest -m slurm tests/cluster`), the module starts and
afterwards stops the cluster itself when none runs; otherwise it needs a running
cluster and is skipped without one, except under CI=true, where a cluster that cannot
be brought up is a failure. The tests are also marked `slow`, so that a run with
`-m "not slow"` leaves them (and the cluster) alone.

The same config runs once through SLURM and once locally (`--cores`); the aggregated
tables must agree. The config is tests/configs/tiny.yaml (every stage, smallest sizes:
the test is about the profile, the submission and the grouping, and `make run` runs the
embedded default anyway) unless RANDLABELS_SLURM_CONFIG names another one (e.g.
config.yaml, the embedded default, about 20 minutes instead of 3).
Both runs add NODE_CONFIG, which sizes training jobs for the test node (1 CPU each,
as training runs one thread on the CPU) so that the two-CPU node runs two of them at
a time, like the local run; job sizes change no result.
RANDLABELS_SLURM_ACCOUNT and RANDLABELS_SLURM_PARTITION (default `randlabels` and
`test`) select where jobs go.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from randlabels.io import read_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for workflow_helpers
from workflow_helpers import ROOT, copy_project, job_counts, snakemake  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLUSTER = ROOT / "tests" / "cluster" / "slurm_cluster.sh"
ACCOUNT = os.environ.get("RANDLABELS_SLURM_ACCOUNT", "randlabels")
PARTITION = os.environ.get("RANDLABELS_SLURM_PARTITION", "test")
CONFIG = os.environ.get("RANDLABELS_SLURM_CONFIG", "tests/configs/tiny.yaml")
IN_CI = os.environ.get("CI", "").lower() == "true"
TIMEOUT = 3 * 3600  # seconds for each whole workflow run

# Config added to both runs (after config.yaml): job sizes for a small test node.
NODE_CONFIG = "resources:\n  training: {cpus_per_task: 1}\n"
CONFIG_ARGS = ("--configfile", "config.yaml", "test-node.yaml")

# Columns that measure time, not results: they differ between any two runs.
WALL_CLOCK = re.compile(r"(^|_)(seconds|time|elapsed|duration|timestamp)$")


def _cluster_ready() -> bool:
    """Whether the partition is up with a node that can take jobs."""
    if not shutil.which("sinfo"):
        return False
    result = subprocess.run(
        ["sinfo", "--noheader", f"--partition={PARTITION}", "--format=%a %T"],
        capture_output=True, text=True,
    )
    states = [line.split() for line in result.stdout.splitlines() if line.strip()]
    return result.returncode == 0 and any(
        avail == "up" and state.rstrip("*~#") in ("idle", "mixed", "allocated") for avail, state in states
    )


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"SLURM cluster unavailable under CI: {reason}")
    pytest.skip(reason)


def _selected_explicitly(config) -> bool:
    """Whether the run asked for these tests by marker (`-m slurm`), not merely let them in."""
    expression = config.getoption("markexpr") or ""
    return "slurm" in expression and "not slurm" not in expression


@pytest.fixture(scope="module")
def cluster(request):
    """A SLURM cluster that accepts jobs: the running one, or one started here."""
    started = False
    if not _cluster_ready():
        how = f"`make test-slurm`, or `sudo {CLUSTER.relative_to(ROOT)} up` first"
        if os.geteuid() != 0:
            _unavailable(f"no SLURM cluster is running, and starting one needs root ({how})")
        if not _selected_explicitly(request.config):
            _unavailable(f"no SLURM cluster is running; select these tests with -m slurm to start one ({how})")
        result = subprocess.run([str(CLUSTER), "up"], capture_output=True, text=True, timeout=900)
        if result.returncode != 0 or not _cluster_ready():
            pytest.fail(f"could not bring the SLURM cluster up:\n{result.stdout}\n{result.stderr}")
        started = True
    yield PARTITION
    if started:
        subprocess.run([str(CLUSTER), "down"], capture_output=True, text=True, timeout=300)


def _project(path: Path) -> Path:
    project = copy_project(path)
    if CONFIG:
        source = Path(CONFIG) if Path(CONFIG).is_absolute() else ROOT / CONFIG
        (project / "config.yaml").write_text(source.read_text())
    (project / "test-node.yaml").write_text(NODE_CONFIG)
    return project


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    """Two copies of the project, taken together: one for SLURM, one for a local run."""
    return _project(tmp_path_factory.mktemp("slurm") / "project"), _project(tmp_path_factory.mktemp("local") / "project")


@pytest.fixture(scope="module")
def slurm_run(cluster, projects):
    """The workflow, every job submitted through profiles/slurm to the test cluster."""
    project = projects[0]
    result = snakemake(
        project,
        "--workflow-profile", "profiles/slurm",
        # The profile's placeholders, set for the test cluster.
        "--default-resources", f"slurm_account={ACCOUNT}", f"slurm_partition={cluster}",
        # No accounting database here: sacct cannot report job states, squeue can.
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        "--slurm-keep-successful-logs",
        *CONFIG_ARGS,
        timeout=TIMEOUT,
        cluster=True,
    )
    return project, result.stdout + result.stderr


@pytest.fixture(scope="module")
def local_run(slurm_run, projects):
    """The same config on this machine (after the SLURM run: one workflow at a time)."""
    project = projects[1]
    snakemake(project, "--cores", str(min(2, os.cpu_count() or 1)), *CONFIG_ARGS, timeout=TIMEOUT, cluster=True)
    return project


def _submissions(output: str) -> dict[str, str]:
    """{Snakemake job id: SLURM job id} of every sbatch the run made."""
    return dict(re.findall(r"Job (\S+) has been submitted with SLURM jobid (\d+)", output))


def test_jobs_went_through_sbatch(slurm_run):
    project, output = slurm_run
    submitted = _submissions(output)
    assert submitted, "no job was submitted to SLURM:\n" + output[-4000:]

    # Every SLURM job of this run (they share its run ID as job name) completed.
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    queue = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--name={run_id}", "--format=%i|%T"],
        capture_output=True, text=True, check=True,
    ).stdout
    states = dict(line.split("|") for line in queue.split())
    assert set(submitted.values()) <= set(states), (submitted, states)
    assert {states[job] for job in submitted.values()} == {"COMPLETED"}, states

    # The plugin's per-job SLURM logs, named by SLURM job id.
    logs = {p.stem for p in (project / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert set(submitted.values()) <= logs


def test_small_jobs_are_grouped(slurm_run):
    """profiles/slurm bundles the short jobs: fewer SLURM jobs than Snakemake jobs."""
    project, output = slurm_run
    counts = job_counts(output)
    jobs = sum(n for rule, n in counts.items() if rule != "all")  # `all` runs locally
    submitted = _submissions(output)
    assert len(submitted) < jobs, (len(submitted), counts)
    groups = {p.name.split("_")[1] for p in (project / ".snakemake" / "slurm_logs").glob("group_*")}
    assert {"data", "measure", "summary"} <= groups, groups
    # Training jobs are never bundled: each is one SLURM job.
    singles = {p.name for p in (project / ".snakemake" / "slurm_logs").glob("rule_*")}
    assert "rule_pretrain" in singles


def _tables(project: Path) -> dict[str, Path]:
    results = project / "results"
    return {str(p.relative_to(results)): p for p in sorted(results.glob("*/tables/*.tsv"))}


def test_results_equal_a_local_run(slurm_run, local_run):
    cluster_tables, local_tables = _tables(slurm_run[0]), _tables(local_run)
    assert cluster_tables, "the SLURM run wrote no tables"
    assert sorted(cluster_tables) == sorted(local_tables)
    for name, path in cluster_tables.items():
        cluster = read_table(path)
        local = read_table(local_tables[name])
        timing = [c for c in cluster.columns if WALL_CLOCK.search(c)]
        cluster, local = cluster.drop(columns=timing), local.drop(columns=timing)
        assert len(cluster) > 0, name
        pd.testing.assert_frame_equal(cluster, local, check_exact=False, rtol=1e-6, atol=1e-6, obj=name)
