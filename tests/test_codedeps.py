"""A rule's library inputs derived from its script's imports (randlabels.workflow.codedeps)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from randlabels.workflow.codedeps import code_files

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SCRIPTS = ROOT / "workflow" / "scripts"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def pkg(tmp_path):
    """A package ``pkg`` with sub-packages, relative imports, a cycle and an unused module."""
    return _tree(tmp_path / "src", {
        "pkg/__init__.py": "",
        "pkg/a.py": "from . import b\nfrom .sub import c\n",
        "pkg/b.py": "def later():\n    from pkg.sub.d import g\n    return g\n",
        "pkg/sub/__init__.py": "from .c import x\n",
        "pkg/sub/c.py": "from .. import e\nx = 1\n",
        "pkg/sub/d.py": "import pkg.a\ng = 2\n",
        "pkg/e.py": "",
        "pkg/unused.py": "import pkg.e\n",
        "pkg/plots/__init__.py": "",
        "pkg/plots/p1.py": "from . import style\n",
        "pkg/plots/p2.py": "",
        "pkg/plots/style.py": "",
    })


def _deps(script: Path, src: Path, *extra: str) -> set[str]:
    return {p.relative_to(src).as_posix() for p in code_files(script, src, extra, package="pkg")}


def test_closure_follows_nested_relative_and_cyclic_imports(pkg, tmp_path):
    script = tmp_path / "script.py"
    script.write_text("import os\nimport numpy as np\nfrom pkg import a\n")
    assert _deps(script, pkg) == {
        "pkg/__init__.py", "pkg/a.py", "pkg/b.py", "pkg/e.py",
        "pkg/sub/__init__.py", "pkg/sub/c.py", "pkg/sub/d.py",
    }


def test_submodules_imported_as_names_count_and_attributes_do_not(pkg, tmp_path):
    script = tmp_path / "script.py"
    script.write_text("from pkg.sub import c\nfrom pkg.e import missing, also_missing\nimport pkg.nothing\n")
    # c's package runs its __init__ (which imports c), c imports e through ``from .. import e``
    assert _deps(script, pkg) == {"pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/c.py", "pkg/e.py"}


def test_computed_imports_literal_prefix_and_extra_names(pkg, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        "import importlib\n"
        "def plot(name):\n"
        "    return importlib.import_module(f'pkg.plots.{name}')\n"
        "e = importlib.import_module('pkg.e')\n"
    )
    plots = {"pkg/plots/__init__.py", "pkg/plots/p1.py", "pkg/plots/p2.py", "pkg/plots/style.py"}
    assert _deps(script, pkg) == {"pkg/__init__.py", "pkg/e.py"} | plots

    script.write_text("import importlib, sys\nmodule = importlib.import_module(sys.argv[1])\n")
    assert _deps(script, pkg) == set()  # known only at run time: the caller names it
    assert _deps(script, pkg, "pkg.plots.p1") == {"pkg/__init__.py", "pkg/plots/__init__.py", "pkg/plots/p1.py", "pkg/plots/style.py"}
    with pytest.raises(ModuleNotFoundError, match="pkg.plots.p3"):
        _deps(script, pkg, "pkg.plots.p3")


def test_a_new_module_or_subpackage_counts_once_imported(pkg, tmp_path):
    script = tmp_path / "script.py"
    script.write_text("import pkg.e\n")
    assert _deps(script, pkg) == {"pkg/__init__.py", "pkg/e.py"}
    _tree(pkg, {"pkg/data/__init__.py": "", "pkg/data/digits.py": "from .arrays import load\n", "pkg/data/arrays.py": ""})
    (pkg / "pkg" / "e.py").write_text("from pkg.data import digits\n")
    assert _deps(script, pkg) == {
        "pkg/__init__.py", "pkg/e.py", "pkg/data/__init__.py", "pkg/data/digits.py", "pkg/data/arrays.py",
    }


def _script_deps(script: str, *extra: str) -> set[str]:
    return {p.relative_to(SRC / "randlabels").as_posix() for p in code_files(SCRIPTS / f"{script}.py", SRC, extra)}


def test_the_rule_scripts_depend_on_the_modules_the_hand_kept_lists_missed():
    assert "data/augment.py" in _script_deps("pretrain") and "data/augment.py" in _script_deps("pretrain_packed")
    finetune = {"data/augment.py", "analysis/probes.py", "analysis/stats.py", "training/gpus.py", "workflow/plan.py"}
    assert finetune <= _script_deps("finetune")
    assert "analysis/summary.py" in _script_deps("plot", "randlabels.plots.transfer_summary")
    assert {"plots/style.py", "analysis/eigenfilters.py", "workflow/targets.py"} <= _script_deps("paper_target")
    plots = {p.relative_to(SRC / "randlabels").as_posix() for p in (SRC / "randlabels" / "plots").glob("*.py")}
    assert plots <= _script_deps("paper_target")  # its figure module is chosen at run time
    assert "plots/misalignment.py" not in _script_deps("plot", "randlabels.plots.transfer_summary")


# Runs in a fresh interpreter: for each rule script, import (as the script would) every
# randlabels module it names, inside functions too, and report the library files
# Python actually loaded, the transitive imports included.
_LOADED = r"""
import ast, json, sys
from pathlib import Path
src, scripts = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(src))
loaded = {}
for script in sorted(scripts.glob("[!_]*.py")):
    for name in [m for m in sys.modules if m == "randlabels" or m.startswith("randlabels.")]:
        del sys.modules[name]
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and "randlabels" in ast.unparse(node):
            exec(ast.unparse(node), {})
    loaded[script.stem] = sorted(
        str(Path(m.__file__).resolve()) for n, m in list(sys.modules.items())
        if n.split(".")[0] == "randlabels" and getattr(m, "__file__", None)
    )
print(json.dumps(loaded))
"""


def test_what_python_loads_for_each_rule_script_is_in_its_derived_closure():
    result = subprocess.run([sys.executable, "-c", _LOADED, str(SRC), str(SCRIPTS)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout)
    assert "pretrain" in loaded and "plot" in loaded
    for script, files in loaded.items():
        derived = {str(p.resolve()) for p in code_files(SCRIPTS / f"{script}.py", SRC)}
        assert files and set(files) <= derived, (script, sorted(set(files) - derived))


# The jobs that only read and write tables and figures: importing torch (seconds per
# job, and the workflow runs many of them) buys them nothing.
_TABLE_JOBS = ("aggregate_eigenfilters", "aggregate_finetuning", "aggregate_pretraining", "aggregate_statistics",
               "make_split", "paper_target", "plot", "prepare_dataset")

# Runs in a fresh interpreter: every import statement of each script in turn (the figure
# modules too, which plot and paper_target import by a name known at run time), and the
# torch modules loaded once each script's imports are done.
_TORCH_LOADED = r"""
import ast, importlib, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
loaded = {}
for script in sys.argv[2:]:
    for node in ast.walk(ast.parse(Path(script).read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and "_bootstrap" not in ast.unparse(node):
            exec(ast.unparse(node), {})
    import randlabels.plots
    for name in randlabels.plots.FIGURES:
        importlib.import_module(randlabels.plots.figure_module(name))
    loaded[Path(script).stem] = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
print(json.dumps(loaded))
"""


def _torch_loaded(*scripts: str) -> dict[str, list[str]]:
    paths = [str(SCRIPTS / f"{script}.py") for script in scripts]
    result = subprocess.run([sys.executable, "-c", _TORCH_LOADED, str(SRC), *paths],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_table_and_figure_jobs_start_without_torch():
    loaded = _torch_loaded(*_TABLE_JOBS)
    assert list(loaded) == list(_TABLE_JOBS)
    assert all(modules == [] for modules in loaded.values()), loaded


def test_the_torch_probe_sees_torch_where_a_job_trains():
    """The check above can fail: the same probe finds torch once the training script's
    imports are done."""
    assert "torch" in _torch_loaded("plot", "pretrain")["pretrain"]
