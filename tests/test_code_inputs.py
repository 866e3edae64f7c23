"""Code as a rule input: each rule's library inputs are its script's import closure
(randlabels.workflow.codedeps), as paths relative to the project, so that an edit reruns what
runs the edited file and a moved project keeps its cache; and rule scripts import this
checkout's library even where another clone's is on sys.path.

The finished project here is made with `snakemake --touch` on empty outputs: Snakemake
records the same metadata (input files, checksums) as after a run, in seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from randlabels.workflow.codedeps import code_files
from workflow_helpers import ROOT, copy_project, job_counts, snakemake

# Every rule with a script, with as few jobs as that takes: packed pre-training
# (pretrain_packed, unpack_pretrain), a Gaussian and a layer-wise init, a paper target,
# a dataset drawn per seed (prepare_dataset_draw).
CONFIG = """
device: cpu
seeds: [0]
datasets:
  digits: {source: digits}
  g: {source: gaussian, dim: 4, variances: [1, 2, 3, 4], n_samples: 50, per_seed: true}
experiments:
  drawn:
    dataset: g
    model: {arch: fc, widths: [8]}
    init_scales: [1.0]
    split: {upstream: 50, downstream: 0, test: 0}
    pretrain: {labels: [random], epochs: 1, batch_size: 10}
  tiny:
    dataset: digits
    model: {arch: cnn2, filters: 16, kernel_size: 3, hidden: 32}
    init_scales: [0.5]
    split: {upstream: 200, downstream: 200, test: 100}
    pretrain: {labels: [random], epochs: 1, batch_size: 32}
    construct: {samples: 200}
    finetune: {labels: random, variants: [scratch, gaussian, layerwise1], epochs: 1, batch_size: 32, target_accuracy: 0.2}
  packed:
    dataset: digits
    seeds: [0, 1]
    model: {arch: cnn2, filters: 16, kernel_size: 3, hidden: 32}
    init_scales: [1.0]
    split: {upstream: 200, downstream: 100}
    pretrain: {labels: [random], epochs: 1, batch_size: 32, pack_seeds: 2}
    finetune: {labels: random, variants: [scratch, pretrained], epochs: 1, batch_size: 32, pack_variants: true}
targets:
  fig_misalignment: {experiments: [tiny]}
"""


def _summary(project: Path) -> list[dict[str, str]]:
    """`snakemake --detailed-summary`: a row per output file (rule, recorded inputs, ...)."""
    lines = snakemake(project, "--detailed-summary").stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("output_file"))
    return [dict(zip(lines[header].split("\t"), line.split("\t"))) for line in lines[header + 1:]]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, list[dict[str, str]]]:
    """A project copy whose every job is done as far as Snakemake can tell, and the
    detailed summary of its jobs (with the inputs recorded for each)."""
    project = copy_project(tmp_path_factory.mktemp("code") / "project")
    (project / "config.yaml").write_text(CONFIG)
    for row in _summary(project):
        output = project / row["output_file"]
        output.parent.mkdir(parents=True, exist_ok=True)
        output.touch()
    snakemake(project, "--touch", "--forceall", "--cores", "1")
    return project, _summary(project)


def _rule_scripts(project: Path) -> dict[str, str]:
    """{rule: its script's name} from the rule files."""
    rules = {}
    for smk in (project / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"(?m)^(?=rule )", smk.read_text()):
            script = re.search(r'script:\s*"\.\./scripts/(\w+)\.py"', block)
            if block.startswith("rule ") and script:
                rules[block[5:block.index(":")]] = script.group(1)
    return rules


def _run_time_modules(rule: str, output: str) -> list[str]:
    """Modules a job's script imports by a name known only at run time: rule plot's
    figure module, named by the figure's file."""
    return [f"randlabels.plots.{Path(output).stem}"] if rule == "plot" else []


def _edited(path: Path):
    """Append a comment to ``path`` (a real change: Snakemake checksums small inputs);
    return a function that restores its text and mtime."""
    original, stat = path.read_text(), path.stat()
    path.write_text(original + "\n# edited\n")

    def restore():
        path.write_text(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    return restore


def test_every_rule_declares_the_import_closure_of_its_script(finished):
    project, summary = finished
    rules = _rule_scripts(project)
    jobs = [row for row in summary if row["rule"] in rules]
    assert {row["rule"] for row in jobs} == set(rules)  # the config above has a job of every rule with a script
    for row in jobs:
        declared = {f for f in row["input-file(s)"].split(",") if "randlabels" in f}
        script = project / "workflow" / "scripts" / f"{rules[row['rule']]}.py"
        closure = code_files(script, project / "src", _run_time_modules(row["rule"], row["output_file"]))
        expected = {p.relative_to(project).as_posix() for p in closure}
        assert declared == expected, (row["rule"], row["output_file"])  # relative: src/randlabels/...
        assert "src/randlabels/io.py" in expected, row["rule"]
    figures = {Path(row["output_file"]).stem for row in jobs if row["rule"] == "plot"}
    assert figures == {"misalignment", "misalignment_change", "transfer_function", "eigenfilters", "transfer_summary",
                       "learning_curves"}


def test_a_moved_project_has_nothing_to_do(finished):
    project, _ = finished
    moved = project.with_name("renamed")
    project.rename(moved)
    try:
        result = snakemake(moved, "-n")
        assert job_counts(result.stdout) == {}, result.stdout[-3000:]
        assert "Nothing to be done" in result.stdout + result.stderr
    finally:
        moved.rename(project)


def _reruns_after_editing(project: Path, module: str) -> dict[str, int]:
    """The jobs of each rule `snakemake -n` schedules once ``module`` is edited."""
    restore = _edited(project / "src" / "randlabels" / module)
    try:
        return job_counts(snakemake(project, "-n").stdout)
    finally:
        restore()


def test_a_figure_module_edit_reruns_its_figure_only(finished):
    project, _ = finished
    counts = _reruns_after_editing(project, "plots/transfer_summary.py")
    # The transfer summary of each fine-tuned experiment; paper targets may draw any figure.
    assert counts == {"plot": 2, "paper_target": 1, "all": 1}


def test_an_augmentation_edit_reruns_all_training_but_no_data_preparation(finished):
    """augment.py is what the hand-kept list of the training rules lacked."""
    project, summary = finished
    counts = _reruns_after_editing(project, "data/augment.py")
    assert set(counts) == {row["rule"] for row in summary} - {"prepare_dataset", "prepare_dataset_draw", "make_split"} | {"all"}
    assert counts["pretrain"] == 2 and counts["pretrain_packed"] == 1 and counts["finetune"] == 3
    assert counts["finetune_packed"] == 2 and counts["unpack_finetune"] == 2 * 2  # seeds × variants


def test_rule_scripts_and_the_snakefile_use_this_checkouts_library(tmp_path):
    """Another clone's src/ ahead on sys.path (PYTHONPATH; an editable install does the
    same), this one's behind it as Snakemake's script preamble leaves it."""
    project = copy_project(tmp_path / "clone")
    (project / "where.smk").write_text(
        'include: "Snakefile"\n\n\n'
        "rule where:\n"
        '    output: "where.txt"\n'
        "    params: planner=plan.__file__\n"
        '    script: "workflow/scripts/where.py"\n'
    )
    (project / "workflow" / "scripts" / "where.py").write_text(
        "import _bootstrap\nimport randlabels.io\n\n"
        "with open(snakemake.output[0], 'w') as f:\n"
        "    print(randlabels.io.__file__, snakemake.params.planner, sep='\\n', file=f)\n"
    )
    other = os.pathsep.join([str(ROOT / "src"), str(project / "src")])
    snakemake(project, "-s", "where.smk", "--cores", "1", "where.txt", env={"PYTHONPATH": other})
    library, planner = (project / "where.txt").read_text().split()
    assert Path(library).resolve() == (project / "src" / "randlabels" / "io.py").resolve()
    assert Path(planner).resolve() == (project / "src" / "randlabels" / "workflow" / "plan.py").resolve()


def test_bootstrap_refuses_a_library_already_imported_from_elsewhere(tmp_path):
    project = copy_project(tmp_path / "clone")
    scripts = project / "workflow" / "scripts"

    def run(first_src: Path) -> subprocess.CompletedProcess:
        code = (f"import sys; sys.path.insert(0, {str(first_src)!r}); import randlabels; "
                f"sys.path.insert(0, {str(scripts)!r}); import _bootstrap; print(randlabels.__file__)")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    other = run(ROOT / "src")
    assert other.returncode != 0
    assert "randlabels was imported from" in other.stderr and str(ROOT / "src") in other.stderr
    own = run(project / "src")  # imported from this checkout already: nothing to refuse
    assert own.returncode == 0, own.stderr
    assert Path(own.stdout.strip()).resolve() == (project / "src" / "randlabels" / "__init__.py").resolve()
