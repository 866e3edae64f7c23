"""The conda environment of the rules matches pyproject's dependencies."""

from __future__ import annotations

import ast
import re
import sys
import tomllib

import yaml

from workflow_helpers import ROOT

# pip name → conda-forge name where they differ
CONDA_NAMES = {"torch": "pytorch"}
# import name → distribution name where they differ
DISTRIBUTIONS = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml"}


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


def _third_party_imports(folder) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("randlabels", "_bootstrap")}


def test_every_imported_package_is_declared_for_pip_and_conda():
    """A package imported by the library or a rule script, present only because another
    one pulls it in, breaks when that one stops doing so (scipy, jsonschema, pillow were)."""
    imported = _third_party_imports(ROOT / "src" / "randlabels") | _third_party_imports(ROOT / "workflow" / "scripts")
    imported.discard("snakemake")  # the workflow's own runner
    wanted = {DISTRIBUTIONS.get(n, n).lower() for n in imported}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    assert wanted <= declared, f"imported but not in pyproject's dependencies: {sorted(wanted - declared)}"
    env = yaml.safe_load((ROOT / "envs" / "randlabels.yaml").read_text())
    listed = {_name(d) for d in env["dependencies"] if isinstance(d, str)}
    conda = {CONDA_NAMES.get(n, n) for n in wanted}
    assert conda <= listed, f"imported but not in envs/randlabels.yaml: {sorted(conda - listed)}"


def test_conda_channels_hold_the_packages():
    """The SLURM executor plugin is on bioconda; everything else on conda-forge."""
    env = yaml.safe_load((ROOT / "envs" / "randlabels.yaml").read_text())
    assert env["channels"][:2] == ["conda-forge", "bioconda"]
    assert "defaults" not in env["channels"]
