"""pyproject's dependencies: the light library's, the `workflow` extra's, and the conda
environment of the rules, each against what the code imports."""

from __future__ import annotations

import ast
import re
import sys
import tomllib

import yaml

from randlabels.workflow.codedeps import code_files
from workflow_helpers import ROOT

# What `pip install randlabels` (no extras) must support: these modules and, recursively,
# every randlabels module they import (lazy imports in functions included).
LIBRARY_MODULES = ("randlabels.analysis.stats", "randlabels.analysis.covariance", "randlabels.models.networks")

# pip name → conda-forge name where they differ
CONDA_NAMES = {"torch": "pytorch"}
# import name → distribution name where they differ
DISTRIBUTIONS = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].strip().lower()


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _declared(*extras: str) -> set[str]:
    """Distribution names of pyproject's dependencies plus those of ``extras``."""
    project = _project()
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {_name(r) for r in requirements}


def test_conda_env_lists_every_runtime_dependency():
    wanted = {CONDA_NAMES.get(n, n) for n in _declared("workflow")}
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


def _third_party_imports(files) -> set[str]:
    names = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("randlabels", "_bootstrap")}


def _distributions(imported: set[str]) -> set[str]:
    return {DISTRIBUTIONS.get(n, n).lower() for n in imported}


def _rule_file_imports() -> set[str]:
    """Top-level packages the Snakefile and the .smk files import (not Python: read by line)."""
    names = set()
    for path in [ROOT / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk")]:
        for match in re.finditer(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", path.read_text(), re.M):
            names.add(match.group(1))
    return {n for n in names if n not in sys.stdlib_module_names and n != "randlabels"}


def test_the_library_needs_exactly_the_dependencies():
    """`pip install randlabels` gives stats and models: what they import (at any depth) is
    a dependency, and every dependency is imported by them (the rest is the workflow's)."""
    files = code_files("/dev/null", ROOT / "src", extra=LIBRARY_MODULES)
    assert {f.relative_to(ROOT / "src" / "randlabels").as_posix() for f in files} >= {
        "analysis/stats.py", "models/networks.py", "models/architectures.py"
    }
    wanted = _distributions(_third_party_imports(files))
    declared = _declared()
    assert wanted <= declared, f"imported by {LIBRARY_MODULES} but not in dependencies: {sorted(wanted - declared)}"
    assert declared <= wanted, (
        f"in dependencies but not imported by {LIBRARY_MODULES}: {sorted(declared - wanted)} "
        "(a package only the workflow needs belongs in the `workflow` extra)"
    )


def test_every_imported_package_is_declared_for_pip_and_conda():
    """A package imported by the library, a rule script or a rule file, present only because
    another one pulls it in, breaks when that one stops doing so (scipy, jsonschema, pillow were)."""
    library = _third_party_imports((ROOT / "src" / "randlabels").rglob("*.py"))
    scripts = _third_party_imports((ROOT / "workflow" / "scripts").rglob("*.py"))
    wanted = _distributions(library | scripts | _rule_file_imports())
    declared = _declared("workflow")
    assert "snakemake" in wanted  # the rule files were read
    assert wanted <= declared, (
        f"imported but not in pyproject's dependencies or `workflow` extra: {sorted(wanted - declared)}"
    )
    env = yaml.safe_load((ROOT / "envs" / "randlabels.yaml").read_text())
    listed = {_name(d) for d in env["dependencies"] if isinstance(d, str)}
    conda = {CONDA_NAMES.get(n, n) for n in wanted}
    assert conda <= listed, f"imported but not in envs/randlabels.yaml: {sorted(conda - listed)}"


def test_make_venv_installs_the_workflow_and_the_tests():
    assert "pip install --quiet -e '.[workflow,test]'" in (ROOT / "Makefile").read_text()
    assert set(_project()["optional-dependencies"]) >= {"workflow", "test"}


def test_conda_channels_hold_the_packages():
    """The SLURM executor plugin is on bioconda; everything else on conda-forge."""
    env = yaml.safe_load((ROOT / "envs" / "randlabels.yaml").read_text())
    assert env["channels"][:2] == ["conda-forge", "bioconda"]
    assert "defaults" not in env["channels"]
