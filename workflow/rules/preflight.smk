# Runs before Snakemake reads config.yaml. First, this checkout's library: _bootstrap
# (which every rule script imports too) puts its src/ ahead of any other copy on
# sys.path, and the Snakefile plans with it. Then config.yaml's YAML, so that a syntax
# error names the file and the line (Snakemake's own message names neither). Files
# given with --configfile are read by Snakemake's command line before any of this runs;
# `python -m randlabels.workflow.config FILE` checks one the same way.
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_bootstrap", os.path.join(workflow.basedir, "workflow/scripts/_bootstrap.py")
)
_spec.loader.exec_module(importlib.util.module_from_spec(_spec))

from randlabels.workflow.config import yaml_errors

if os.path.exists("config.yaml"):
    _yaml_problems = yaml_errors(["config.yaml"])
    if _yaml_problems:
        raise WorkflowError("\n".join(_yaml_problems))
