"""Running the Snakemake workflow from tests, on a throwaway copy of the project."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_PARTS = ("Snakefile", "config.yaml", "workflow", "src", "profiles", "envs", "configs")

# Snakemake loads the SLURM executor plugin at start-up, which asks `scontrol show config`
# for MinJobAge: with a SLURM client installed but no controller running (as after
# `make test-slurm`), that waits 9 s on every start. Runs that do not use the cluster
# point SLURM at an empty config instead, which fails at once.
NO_CLUSTER = {"SLURM_CONF": os.devnull}


def killable_env(project: Path) -> dict[str, str]:
    """TMPDIR in a folder beside ``project``, for a Snakemake run a test kills: Snakemake
    removes its temporary folder (/tmp/snakemakeXXXX) only when it exits, so a kill -9
    would leave one in /tmp for every test run."""
    folder = project.parent / "tmp"
    folder.mkdir(exist_ok=True)
    return {"TMPDIR": str(folder)}


SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def load_config(path: Path) -> dict:
    """A YAML config file as a dict."""
    import yaml

    return yaml.safe_load(path.read_text())


def refused(config: dict) -> str:
    """The config check's message for ``config``, which must be refused."""
    import pytest

    from randlabels.workflow.config import ConfigError, check_config

    with pytest.raises(ConfigError) as info:
        check_config(config, SCHEMA)
    return str(info.value)


def copy_project(destination: Path) -> Path:
    """Copy what the workflow needs (not results/, not .venv) to ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for part in PROJECT_PARTS:
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, destination / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, destination / part)
    return destination


def made_once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder ``name``, made by ``make(folder)`` once per test session and shared by
    the pytest-xdist workers: the first worker to ask makes it, under a file lock, and
    the others wait for it. A test must not change it (copy it first), as another
    worker may be reading it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    folder, made = root / name, root / f"{name}.made"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the worker dies
        if not made.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a failed attempt's leftovers
            make(folder)
            made.touch()
    return folder


def snakemake(
    project: Path, *args: str, check: bool = True, timeout: int = 900, env: dict | None = None,
    cluster: bool = False,
) -> subprocess.CompletedProcess:
    """Run the venv's snakemake in ``project`` (``env`` adds variables; ``cluster``: SLURM's
    commands see the real cluster config); on failure show its output."""
    result = subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=project,
        env={**os.environ, **({} if cluster else NO_CLUSTER), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return result


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run as {rule: count}; empty if nothing to do."""
    counts: dict[str, int] = {}
    in_table = False
    for line in output.splitlines():
        if re.match(r"^job\s+count\s*$", line.strip()):
            in_table = True
            continue
        if in_table:
            match = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
            if match:
                if match.group(1) == "total":
                    break
                counts[match.group(1)] = int(match.group(2))
    return counts


def target_outputs(project: Path, names) -> dict:
    """Each named target's table (results/paper/NAME.tsv, which must not be empty), after
    checking that its figure (NAME.png) is a real, non-blank image."""
    import matplotlib.image as mpimg
    import numpy as np

    from randlabels.io import read_table

    paper = project / "results" / "paper"
    tables = {}
    for name in names:
        image = mpimg.imread(paper / f"{name}.png")
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200, name
        assert float(np.std(image)) > 0.01, f"{name}.png is blank"
        tables[name] = read_table(paper / f"{name}.tsv")
        assert not tables[name].empty, name
    return tables


def figure_caption(figure: str) -> str:
    """workflow/report/figure.rst as Snakemake's report renders it (with Jinja) for the
    job that draws ``figure``."""
    import jinja2

    job = type("Job", (), {"wildcards": type("Wildcards", (), {"figure": figure})})
    return jinja2.Environment().from_string((ROOT / "workflow/report/figure.rst").read_text()).render(snakemake=job)
