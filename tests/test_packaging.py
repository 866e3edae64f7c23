"""The conda environment of the rules matches pyproject's dependencies."""

from __future__ import annotations

import re
import tomllib

import yaml

from workflow_helpers import ROOT

# pip name → conda-forge name where they differ
CONDA_NAMES = {"torch": "pytorch"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].strip().lower()


def test_conda_env_lists_every_runtime_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {CONDA_NAMES.get(_name(r), _name(r)) for r in project["dependencies"]}
    env = yaml.safe_load((ROOT / "envs" / "randlabels.yaml").read_text())
    listed = {_name(d) for d in env["dependencies"] if isinstance(d, str)}
    assert wanted <= listed, f"missing from envs/randlabels.yaml: {sorted(wanted - listed)}"
    assert "pygments" in listed  # what snakemake[reports] adds for --report


def test_every_rule_uses_the_environment_and_has_log_and_benchmark():
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        rules = text.count("\nrule ") + text.startswith("rule ")
        for directive in ("conda:", "log:", "benchmark:", "resources:"):
            assert text.count(f"    {directive}") == rules, f"{smk.name}: {directive}"
