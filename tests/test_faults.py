"""The fault suite: each fault is injected for real, and both the message and what is
left on disk are asserted.

Config faults are refused before any job starts. Damaged inputs stop the job that
reads them with a message naming the file, and leave none of its outputs; a .pt file
whose pickle would run code is refused before any of it runs, and a file of another
run (copied over this one's) is refused naming both runs. A full disk or a read-only
folder leaves no partial file and names the output. Out-of-memory names the batch
size. A second process on a run being trained stops at once, naming the holder;
Ctrl-C saves the state like SIGTERM. Divergence is recorded or stops the run, as
configured. (Kills and signals: tests/test_interrupt.py and the kill loop in
tests/test_workflow.py.)
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from randlabels import provenance
from randlabels.errors import InputFileError, ResourceError, TrainingDiverged
from randlabels.io import read_table
from randlabels.models.networks import build_model, initialize
from randlabels.training.engine import DeviceData, TrainConfig, Trainer
from randlabels.training.job import run_training
from randlabels.workflow.config import ConfigError, check_config
from randlabels.workflow.config import main as config_main
from workflow_helpers import ROOT, copy_project, job_counts, snakemake

SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
DEFAULT = yaml.safe_load((ROOT / "config.yaml").read_text())
TINY = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())


# --------------------------------------------------------------------------- config


def _set(path: str, value):
    """A mutation of the default config: set the dotted ``path`` to ``value``."""

    def mutate(config):
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return mutate


def _delete(path: str):
    def mutate(config):
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


def _add(mapping: str, name: str, like: str):
    """Add ``name`` under the dotted ``mapping``, a copy of the entry at ``like``."""

    def mutate(config):
        node = config
        for key in like.split("."):
            node = node[key]
        entry = copy.deepcopy(node)
        parent = config
        for key in mapping.split("."):
            parent = parent[key]
        parent[name] = entry

    return mutate


def _gaussian_variances(values):
    """The synthetic dataset described by explicit ``values`` instead of its spectrum."""

    def mutate(config):
        config["datasets"]["gaussian"].pop("spectrum")
        config["datasets"]["gaussian"]["variances"] = values

    return mutate


EXP = "experiments.digits_cnn"
FC = "experiments.gaussian_fc"
CONFIG_FAULTS = {
    # unknown keys
    "unknown top-level key": (_set("device_name", "cpu"), "device_name"),
    "unknown nested key": (_set(f"{EXP}.pretrain.epoch", 3), f"{EXP}.pretrain.epoch"),
    "unknown model option": (_set(f"{EXP}.model.width", 3), f"{EXP}.model"),
    # wrong types
    "seeds as a string": (_set("seeds", "0,1"), "seeds"),
    "lr as a word": (_set(f"{EXP}.pretrain.lr", "fast"), f"{EXP}.pretrain.lr"),
    "epochs as a float": (_set(f"{EXP}.pretrain.epochs", 2.5), f"{EXP}.pretrain.epochs"),
    "split as a list": (_set(f"{EXP}.split", [800, 800]), f"{EXP}.split"),
    # out of range
    "zero epochs": (_set(f"{EXP}.pretrain.epochs", 0), f"{EXP}.pretrain.epochs"),
    "negative lr": (_set(f"{EXP}.pretrain.lr", -0.1), f"{EXP}.pretrain.lr"),
    "negative init scale": (_set(f"{EXP}.init_scales", [-1.0]), f"{EXP}.init_scales"),
    "negative seed": (_set("seeds", [-1]), "seeds"),
    "momentum above one": (_set(f"{EXP}.finetune.momentum", 1.5), f"{EXP}.finetune.momentum"),
    "split larger than the data": (_set(f"{EXP}.split.upstream", 5000), f"{EXP}.split"),
    "checkpoint after the last epoch": (_set(f"{EXP}.pretrain.checkpoints", [0, 400]), f"{EXP}.pretrain.checkpoints"),
    "unknown divergence policy": (_set("on_divergence", "ignore"), "on_divergence"),
    "zero jobs per gpu": (_set("jobs_per_gpu", 0), "jobs_per_gpu"),
    # empty grids
    "no seeds": (_set("seeds", []), "seeds"),
    "no init scales": (_set(f"{EXP}.init_scales", []), f"{EXP}.init_scales"),
    "no label kinds": (_set(f"{EXP}.pretrain.labels", []), f"{EXP}.pretrain.labels"),
    "no variants": (_set(f"{EXP}.finetune.variants", []), f"{EXP}.finetune.variants"),
    "no experiments": (_set("experiments", {}), "experiments"),
    # duplicates and collisions
    "a seed twice": (_set("seeds", [0, 1, 0]), "seeds"),
    "an init scale twice": (_set(f"{EXP}.init_scales", [0.5, 0.5]), f"{EXP}.init_scales"),
    "scales with one path label": (_set(f"{EXP}.init_scales", [0.1234561, 0.1234562]), f"{EXP}.init_scales"),
    "a variant twice": (_set(f"{EXP}.finetune.variants", ["scratch", "scratch"]), f"{EXP}.finetune.variants"),
    # references and names
    "undefined dataset": (_set(f"{EXP}.dataset", "mnist"), f"{EXP}.dataset"),
    "unknown architecture": (_set(f"{EXP}.model.arch", "vit"), f"{EXP}.model.arch"),
    "unknown dataset source": (_set("datasets.digits.source", "svhn"), "datasets.digits.source"),
    "experiment name with a slash": (lambda c: c["experiments"].update({"a/b": c["experiments"]["digits_cnn"]}), "experiments"),
    "missing pretrain section": (_delete(f"{EXP}.pretrain"), EXP),
    "transfer from labels not pre-trained": (_set(f"{EXP}.pretrain.labels", ["real"]), f"{EXP}.finetune.from_labels"),
    # whole-number floats where an integer is due (JSON schema's integer accepts 2.0;
    # Snakemake would see changed params, delete finished results, and range() fail)
    "epochs as a whole-number float": (_set(f"{EXP}.pretrain.epochs", 40.0), f"{EXP}.pretrain.epochs: 40.0 is not an integer (write 40)"),
    "a seed as a whole-number float": (_set("seeds", [0, 1.0]), "seeds.1: 1.0 is not an integer"),
    "a checkpoint as a whole-number float": (_set(f"{EXP}.pretrain.checkpoints", [0, 5.0]), f"{EXP}.pretrain.checkpoints.1"),
    "an fc width as a whole-number float": (_set(f"{FC}.model.widths", [64.0]), f"{FC}.model.widths.0"),
    "a resource as a whole-number float": (_set("resources.training.mem_mb", 4000.0), "resources.training.mem_mb"),
    # layer names and depths resolved against a built-in architecture before any job
    "stats layer the cnn2 lacks": (_set(f"{EXP}.stats.layers", ["first", "conv9"]), f"{EXP}.stats.layers: no conv/linear layer 'conv9'"),
    "sample layer the cnn2 lacks": (_set(f"{EXP}.sample.layer", "fc9"), f"{EXP}.sample.layer: no conv/linear layer 'fc9'"),
    "stats layer the fc lacks": (_set(f"{FC}.stats.layers", ["fc3"]), "fc1, fc2, classifier"),
    "stats layer the resnet18 lacks": (
        lambda c: _set(f"{EXP}.stats.layers", ["layer5.0.conv1"])(c) or c["datasets"].update(c10={"source": "torchvision", "name": "CIFAR10", "root": "data"}) or c["experiments"]["digits_cnn"].update(dataset="c10", model={"arch": "resnet18"}),
        f"{EXP}.stats.layers: no conv/linear layer 'layer5.0.conv1'",
    ),
    "firstK deeper than the cnn2": (_set(f"{EXP}.finetune.variants", ["scratch", "first3"]), f"{EXP}.finetune.variants: first3"),
    "layerwiseK deeper than the cnn2": (_set(f"{EXP}.finetune.variants", ["layerwise3"]), f"{EXP}.finetune.variants: layerwise3"),
    # NaN and infinity pass every bound (comparisons with NaN are false)
    "NaN target accuracy": (_set(f"{EXP}.finetune.target_accuracy", float("nan")), f"{EXP}.finetune.target_accuracy: nan is not a finite number"),
    "NaN lr": (_set(f"{EXP}.pretrain.lr", float("nan")), f"{EXP}.pretrain.lr: nan"),
    "infinite lr": (_set(f"{EXP}.pretrain.lr", float("inf")), f"{EXP}.pretrain.lr: inf"),
    "NaN momentum": (_set(f"{EXP}.finetune.momentum", float("nan")), f"{EXP}.finetune.momentum"),
    "NaN init scale": (_set(f"{EXP}.init_scales", [0.5, float("nan")]), f"{EXP}.init_scales.1"),
    "infinite upper width": (_set(f"{FC}.model.upper_width", float("inf")), f"{FC}.model.upper_width"),
    "NaN variance": (_gaussian_variances([float("nan")] * 30), "datasets.gaussian.variances.0"),
    "infinite spectrum end": (_set("datasets.gaussian.spectrum.high", float("inf")), "datasets.gaussian.spectrum.high"),
    # inconsistent ranges of the synthetic data
    "fewer variances than dim": (_gaussian_variances([1.0, 2.0]), "datasets.gaussian.variances: 2 values for dim 30"),
    "spectrum low above high": (_set("datasets.gaussian.spectrum.low", 5.0), "datasets.gaussian.spectrum: low"),
    # names that end in a newline ("$" matches before one in Python's re.search)
    "experiment name with a trailing newline": (_add("experiments", "extra\n", FC), "experiments: 'extra\\n'"),
    "dataset name with a trailing newline": (_add("datasets", "digits\n", "datasets.digits"), "datasets: 'digits\\n'"),
    "variant with a trailing newline": (_set(f"{EXP}.finetune.variants", ["scratch\n"]), f"{EXP}.finetune.variants.0: unknown variant 'scratch\\n'"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_FAULTS))
def test_config_fault_is_refused_naming_the_key(case):
    mutate, key = CONFIG_FAULTS[case]
    config = copy.deepcopy(DEFAULT)
    mutate(config)
    with pytest.raises(ConfigError) as info:
        check_config(config, SCHEMA)
    assert key in str(info.value), str(info.value)


def test_a_key_given_twice_in_the_yaml_file_is_refused(tmp_path):
    text = (ROOT / "config.yaml").read_text()
    doubled = tmp_path / "doubled.yaml"
    # The same experiment name twice: plain YAML would keep only the second.
    doubled.write_text(text + "\n" + textwrap.dedent("""\
        experiments:
          other: {}
        """))
    with pytest.raises(ConfigError, match=r"doubled.yaml, line \d+: key 'experiments' given twice"):
        check_config(yaml.safe_load(text), SCHEMA, files=[doubled])


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    # Snakemake reads --configfile files before the workflow's code runs, and its
    # message names neither file nor line; python -m randlabels.workflow.config FILE does.
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config.yaml").read_text() + "\nseeds: [0, 1\non_divergence: stop\n")
    assert config_main([str(bad)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(rf"{re.escape(str(bad))}, line \d+: .*flow sequence.*", lines[0]), lines
    with pytest.raises(ConfigError, match=r"bad.yaml, line \d+: "):
        check_config(DEFAULT, SCHEMA, files=[bad])


def test_a_valid_config_file_passes_the_command_line_check(capsys):
    assert config_main([str(ROOT / "config.yaml")]) == 0
    assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["unknown nested key", "no seeds", "scales with one path label", "undefined dataset", "epochs as a whole-number float"])
def test_config_faults_stop_snakemake_before_any_job(tmp_path, case):
    project = copy_project(tmp_path / "project")
    config = copy.deepcopy(DEFAULT)
    mutate, key = CONFIG_FAULTS[case]
    mutate(config)
    (project / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(project, "--cores", "1", "--configfile", "bad.yaml", check=False)
    assert result.returncode != 0
    assert key in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "results").exists()


def test_duplicate_key_stops_snakemake(tmp_path):
    project = copy_project(tmp_path / "project")
    (project / "bad.yaml").write_text((ROOT / "config.yaml").read_text() + "\nseeds: [4]\n")
    result = snakemake(project, "-n", "--configfile", "bad.yaml", check=False)
    assert result.returncode != 0
    assert "key 'seeds' given twice" in result.stdout + result.stderr


def test_a_yaml_syntax_error_in_config_yaml_names_file_and_line(tmp_path):
    """Snakemake's own message names neither; the workflow reads config.yaml first."""
    project = copy_project(tmp_path / "project")
    lines = (ROOT / "config.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("seeds:"))
    lines[at] = "seeds: [0, 1"
    (project / "config.yaml").write_text("\n".join(lines) + "\n")
    result = snakemake(project, "-n", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "config.yaml, line " in output and "expected ',' or ']'" in output
    assert f"(while parsing a flow sequence begun on line {at + 1})" in output


# --------------------------------------------------------------------------- input files


@pytest.fixture
def project(finished_tiny_run, tmp_path):
    """The session's finished tiny run (tests/conftest.py), copied afresh for each fault."""
    copy = tmp_path / "project"
    shutil.copytree(finished_tiny_run, copy, symlinks=True)
    return copy


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


RUN = "results/tiny/pretrain/random/scale0.5/seed0"
STATS = "results/tiny/stats/random/scale0.5/seed0.h5"
REAL_RUN = "results/tiny/pretrain/real/scale0.5/seed0"  # the same seed and scale, pre-trained on real labels
REAL_STATS = "results/tiny/stats/real/scale0.5/seed0.h5"
# A file of the real-labels run copied over its random-labels twin, as its reader words it.
ANOTHER_RUN = ("written for experiment=tiny labels=real scale=0.5 seed=0, "
               "but this rule expects experiment=tiny labels=random scale=0.5 seed=0")


def _other_architecture_checkpoints(path: Path) -> None:
    """Overwrite a checkpoint set with one of a narrower network (8 filters, not 16)."""
    saved = torch.load(path, weights_only=True)  # the workflow's files load weights-only
    spec = {**saved["spec"], "filters": 8}
    model = build_model(spec, saved["input_shape"], saved["num_classes"])
    saved["states"] = {e: model.state_dict() for e in saved["states"]}
    torch.save(saved, path)


class _RunsCode:
    """A pickle payload that runs a shell command when it is unpickled (``os.system``,
    as in a crafted checkpoint): it creates ``marker``, which must never appear."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


CODE_RAN = "CODE_RAN"  # the marker file a payload would create, in the project


def _code_running_checkpoints(path: Path, marker: Path) -> None:
    """Overwrite a checkpoint set with a well-formed one that carries a payload."""
    saved = torch.load(path, weights_only=True)
    torch.save({**saved, "labels": _RunsCode(marker)}, path)


# fault name: (damage, the rule that reads the file, its output, what the message says)
INPUT_FAULTS = {
    "truncated statistics file": (
        lambda p: _truncate(p / STATS), "aggregate_statistics", "results/tiny/tables/misalignment.tsv",
        "statistics file",
    ),
    "truncated checkpoint set": (
        lambda p: _truncate(p / RUN / "checkpoints.pt"), "statistics", STATS, "not a readable checkpoint",
    ),
    "checkpoint set that runs code on load": (
        lambda p: _code_running_checkpoints(p / RUN / "checkpoints.pt", p / CODE_RAN), "statistics", STATS,
        "not a weights-only checkpoint",
    ),
    "checkpoint of another architecture": (
        lambda p: _other_architecture_checkpoints(p / RUN / "checkpoints.pt"), "finetune",
        "results/tiny/finetune/random10/pretrained/scale0.5/seed0.tsv", "does not fit the configured model",
    ),
    "truncated dataset file": (
        lambda p: _truncate(p / "results/data/digits.h5", 0.3), "make_split", "results/tiny/splits/seed0.h5",
        "not a readable HDF5 dataset file",
    ),
    "checkpoint set of another run": (
        lambda p: shutil.copy(p / REAL_RUN / "checkpoints.pt", p / RUN / "checkpoints.pt"), "statistics", STATS,
        ANOTHER_RUN,
    ),
    "checkpoint set of another run, fine-tuned from": (
        lambda p: shutil.copy(p / REAL_RUN / "checkpoints.pt", p / RUN / "checkpoints.pt"), "finetune",
        "results/tiny/finetune/random10/pretrained/scale0.5/seed0.tsv", ANOTHER_RUN,
    ),
    "statistics file of another run": (
        lambda p: shutil.copy(p / REAL_STATS, p / STATS), "aggregate_statistics",
        "results/tiny/tables/misalignment.tsv", ANOTHER_RUN,
    ),
    "truncated split file": (
        lambda p: _truncate(p / "results/tiny/splits/seed0.h5", 0.3), "pretrain", f"{RUN}/metrics.tsv",
        "not a readable split file",
    ),
}


@pytest.mark.slow
def test_packed_finetuning_writes_what_separate_jobs_write(project, finished_tiny_run):
    """finetune.pack_variants on the session's finished tiny run (tests/conftest.py):
    one job trains the four variants, four unpack jobs write the tables the separate
    finetune jobs wrote, equal up to floating-point rounding (rtol 1e-4, atol 1e-6, as
    tests/test_packed.py), probe columns and flags included; upstream is not rerun."""
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["experiments"]["tiny"]["finetune"]["pack_variants"] = True
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    tables = [f"results/tiny/finetune/random10/{variant}/scale0.5/seed0.tsv" for variant in config["experiments"]["tiny"]["finetune"]["variants"]]
    for table in tables:
        (project / table).unlink()
    result = snakemake(project, "--cores", "2", *tables)
    assert job_counts(result.stdout + result.stderr) == {"finetune_packed": 1, "unpack_finetune": 4}
    for table in tables:
        want, got = read_table(finished_tiny_run / table), read_table(project / table)
        assert list(got.columns) == list(want.columns) and len(got) == len(want) == 6, table
        assert any(column.startswith("frac_active:") for column in got.columns)
        for column in want.columns:
            if want[column].dtype.kind == "f":
                np.testing.assert_allclose(got[column], want[column], rtol=1e-4, atol=1e-6, err_msg=f"{table}: {column}")
            else:
                assert got[column].tolist() == want[column].tolist(), f"{table}: {column}"
        assert provenance.read(project / table)["rule"] == "unpack_finetune"
    assert job_counts(snakemake(project, "-n", *tables).stdout) == {}
    assert not list((project / "results" / "_resume").rglob("*.pt")), "resume state left behind"


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(INPUT_FAULTS))
def test_damaged_input_stops_its_reader_naming_the_file(project, case):
    damage, rule, output, problem = INPUT_FAULTS[case]
    damage(project)
    damaged = {
        "truncated statistics file": STATS,
        "truncated checkpoint set": f"{RUN}/checkpoints.pt",
        "checkpoint set that runs code on load": f"{RUN}/checkpoints.pt",
        "checkpoint of another architecture": f"{RUN}/checkpoints.pt",
        "truncated dataset file": "results/data/digits.h5",
        "truncated split file": "results/tiny/splits/seed0.h5",
        "checkpoint set of another run": f"{RUN}/checkpoints.pt",
        "checkpoint set of another run, fine-tuned from": f"{RUN}/checkpoints.pt",
        "statistics file of another run": STATS,
    }[case]
    # Only the reader may run (its producer would simply rewrite the damaged file).
    result = snakemake(project, output, "--cores", "1", "--forcerun", rule, "--allowed-rules", rule, check=False)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert damaged in text and problem in text, text[-3000:]
    assert not (project / output).exists(), "the failed job's output survived"
    assert not (project / CODE_RAN).exists(), "a pickle payload ran on load"
    assert not list((project / "results").rglob(".*.tmp-*")), "temporary file left behind"
    log = next((project / "results/logs" / rule).rglob("*seed0.log"), None) if rule != "aggregate_statistics" else None
    if log is not None:
        assert "Traceback" not in log.read_text()  # the message, not a traceback


def test_nan_in_a_dataset_is_refused_naming_the_file(tmp_path):
    from randlabels.data.gaussian import prepare_gaussian
    from randlabels.data.h5file import DatasetFileError, read_dataset

    path = tmp_path / "gauss.h5"
    prepare_gaussian(path, dim=4, variances=[1, 1, 1, 1], n_samples=50, seed=0)
    with h5py.File(path, "r+") as f:
        f["images"][3, 1] = np.inf
    with pytest.raises(DatasetFileError) as info:
        read_dataset(path)
    assert str(info.value) == f"{path}: /images contains NaN or Inf"


def test_input_errors_are_logged_as_one_line_without_traceback(tmp_path):
    """The rule scripts' exception hook: the message for user errors, tracebacks for bugs."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'src')!r})
        from randlabels import runlog
        from randlabels.errors import InputFileError
        runlog.start({str(tmp_path / 'job.log')!r})
        raise InputFileError("results/x.h5", "damaged or incomplete statistics file")
        """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "results/x.h5: damaged or incomplete statistics file" in result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in (tmp_path / "job.log").read_text()
    # The last line says whose failure it is and where its log is.
    assert result.stderr.strip().splitlines()[-1].endswith(f"job failed; its log: {tmp_path / 'job.log'}")


def test_a_failing_job_names_its_run_and_log(tmp_path):
    """A bug (traceback) in a job logged under logs/: the last lines name the job (its
    log path below logs/) and the log, in the log and on stderr."""
    log = tmp_path / "results" / "logs" / "pretrain" / "tiny" / "random" / "scale0.5" / "seed3.log"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'src')!r})
        from randlabels import runlog
        runlog.start({str(log)!r})
        raise KeyError("boom")
        """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode == 1
    expected = f"pretrain/tiny/random/scale0.5/seed3 failed; its log: {log}"
    assert "Traceback" in log.read_text() and log.read_text().strip().splitlines()[-1].endswith(expected)
    assert expected in result.stderr


def _written_for(kind: str, path: Path, **run) -> None:
    """A file of ``kind`` written by the library's own writer for ``run`` (experiment,
    labels or init, init_scale, seed)."""
    from randlabels.analysis.statsfile import write_stats
    from randlabels.training.checkpoints import save_checkpoints, save_init
    from randlabels.training.packed_job import save_bundle

    state = {"fc1.weight": torch.zeros(2, 2)}
    shape = dict(spec={"arch": "fc"}, input_shape=[4], num_classes=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoints = dict(**shape, init_scale=run["init_scale"], seed=run["seed"], labels=run.get("labels"),
                       experiment=run["experiment"], states={0: state}, diverged=False)
    if kind == "checkpoint set":
        save_checkpoints(path, **checkpoints)
    elif kind == "initialization":
        save_init(path, **shape, state=state, description="test", **run)
    elif kind == "packed bundle":
        save_bundle(path, {run["seed"]: {"checkpoints": checkpoints, "metrics": pd.DataFrame({"epoch": [0]})}})
    else:
        write_stats(path, [], {key: value for key, value in run.items() if value is not None})


def _read_expecting(kind: str, path: Path, wildcards: dict):
    """``path`` read as its rule reads it, expecting the run of ``wildcards``."""
    from randlabels.analysis.statsfile import expect_path_identities
    from randlabels.identity import expected
    from randlabels.training.checkpoints import read_checkpoints, read_init
    from randlabels.training.packed_job import read_bundle_run
    from randlabels.workflow import plan

    if kind == "checkpoint set":
        return read_checkpoints(path, expect=expected(wildcards))
    if kind == "initialization":
        return read_init(path, expect=expected(wildcards, init="gaussian"))
    if kind == "packed bundle":
        return read_bundle_run(path, int(wildcards["seed"]), expect=expected(wildcards))
    return expect_path_identities([path], plan.PATHS["stats"])  # the wildcards of the file's own path


@pytest.mark.parametrize("kind", ["checkpoint set", "initialization", "packed bundle", "statistics file"])
def test_a_file_of_another_run_is_refused_naming_both_runs(tmp_path, kind):
    """A file copied over another run's keeps the identity it was written with."""
    from randlabels.workflow import plan

    wildcards = {"exp": "tiny", "labels": "random", "scale": "0.5", "seed": "0"}
    path = tmp_path / (plan.path("stats", **wildcards) if kind == "statistics file" else "file.pt")
    if kind == "initialization":  # an initialization is of a variant, not of a label kind
        wildcards.pop("labels")
        mine = dict(experiment="tiny", init="gaussian", init_scale=0.5, seed=0)
        others = {"seed": dict(mine, seed=1), "init": dict(mine, init="layerwise2")}
    else:
        mine = dict(experiment="tiny", labels="random", init_scale=0.5, seed=0)
        others = {"labels": dict(mine, labels="real"), "experiment": dict(mine, experiment="other"),
                  "scale": dict(mine, init_scale=1.0)}
    _written_for(kind, path, **mine)
    _read_expecting(kind, path, wildcards)  # its own run: read as always
    others["nothing recorded (an older file)"] = dict(mine, experiment=None)
    for differs, run in others.items():
        _written_for(kind, path, **run)
        with pytest.raises(InputFileError) as info:
            _read_expecting(kind, path, wildcards)
        message = str(info.value)
        expects = "experiment=tiny labels=random scale=0.5 seed=0" if kind != "initialization" else \
            "experiment=tiny init=gaussian scale=0.5 seed=0"
        assert message.startswith(f"{path}: written for "), message
        assert f"but this rule expects {expects}" in message, message
        if differs in ("labels", "seed", "init", "scale", "experiment"):
            assert f"{differs}=" in message.split("but this rule")[0] and f"({differs} differs)" in message, message
        else:
            assert "experiment=?" in message, message  # shown as unknown, and refused


def test_a_dataset_too_small_for_the_split_names_the_file_and_the_numbers(tmp_path):
    """Sizes the config check cannot know (an own data set): the make_split job stops
    with one line naming the dataset file, the config section and the numbers."""
    from randlabels.data.gaussian import prepare_gaussian
    from randlabels.data.h5file import read_dataset

    dataset = tmp_path / "small.h5"
    prepare_gaussian(dataset, dim=4, variances=[1, 1, 1, 1], n_samples=50, seed=0)
    training = int((~read_dataset(dataset).is_test).sum())
    out, log = tmp_path / "split.h5", tmp_path / "make_split.log"
    split = {"upstream": training, "downstream": 10, "test": None, "upstream_classes": 10, "downstream_classes": 10}
    job = textwrap.dedent(f"""
        import runpy, sys
        from types import SimpleNamespace
        sys.path.insert(0, {str(ROOT / 'workflow/scripts')!r})
        snakemake = SimpleNamespace(input=SimpleNamespace(dataset={str(dataset)!r}), output=[{str(out)!r}],
                                    log=[{str(log)!r}], wildcards=SimpleNamespace(exp="small", seed="0"),
                                    params=SimpleNamespace(split={split!r}, seed=0))
        runpy.run_path({str(ROOT / 'workflow/scripts/make_split.py')!r}, init_globals={{"snakemake": snakemake}},
                       run_name="__main__")
        """)
    result = subprocess.run([sys.executable, "-c", job], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    expected = (f"{dataset}: {training} training samples, too few for experiments.small.split: "
                f"upstream {training} + downstream 10 = {training + 10}")
    assert expected in result.stderr and expected in log.read_text(), result.stderr[-2000:]
    assert "Traceback" not in result.stderr + log.read_text()
    assert not out.exists()


# --------------------------------------------------------------------------- files that run code


def _crafted(kind: str, marker: Path) -> dict:
    """A well-formed file of ``kind`` (right format tag) with a code-running payload."""
    from randlabels.training.checkpoints import CHECKPOINT_FORMAT, INIT_FORMAT
    from randlabels.training.packed_job import BUNDLE_FORMAT

    payload = _RunsCode(marker)
    state = {"fc1.weight": torch.zeros(2, 2)}
    if kind == "checkpoint set":
        return {"format": CHECKPOINT_FORMAT, "spec": {"arch": "fc"}, "labels": payload, "states": {0: state}}
    if kind == "initialization":
        return {"format": INIT_FORMAT, "spec": {"arch": "fc"}, "description": payload, "state": state}
    if kind == "packed bundle":
        return {"format": BUNDLE_FORMAT, "runs": {0: {"checkpoints": {"labels": payload}, "metrics": {}}}}
    return {"fingerprint": "run", "progress": {"epoch": payload}, "model": state}  # resume state


def _load(kind: str, path: Path):
    from randlabels.io import load_torch
    from randlabels.training.checkpoints import read_checkpoints, read_init
    from randlabels.training.packed_job import read_bundle_run
    from randlabels.training.resume import ResumeStore

    return {
        "checkpoint set": read_checkpoints,
        "initialization": read_init,
        "packed bundle": lambda p: read_bundle_run(p, 0),
        "resume state": lambda p: ResumeStore(p, "run").load(),
        "any .pt file": load_torch,
    }[kind](path)


CRAFTED_KINDS = ["checkpoint set", "initialization", "packed bundle", "resume state", "any .pt file"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize("protocol", [2, 4])  # 2: torch.save's default; 4 frames its globals differently
@pytest.mark.parametrize("kind", CRAFTED_KINDS)
def test_a_file_whose_pickle_runs_code_is_refused_and_nothing_runs(tmp_path, caplog, kind, protocol):
    """Each loader of the workflow's .pt files, given one whose payload calls os.system."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "crafted dir" / "checkpoints.pt"
    path.parent.mkdir()
    payload = _crafted(kind, marker) if kind != "any .pt file" else {"w": _RunsCode(marker)}
    torch.save(payload, path, pickle_protocol=protocol)
    if kind == "resume state":
        # As any unreadable resume state: reported, ignored, the run starts over.
        with caplog.at_level(logging.WARNING, logger="randlabels"):
            assert _load(kind, path) is None
        message = caplog.text
    else:
        with pytest.raises(InputFileError) as info:
            _load(kind, path)
        message = str(info.value)
        assert info.value.path == str(path)
        assert "Traceback" not in message and "weights_only=False" not in message  # no advice to load it unsafely
    assert not marker.exists(), "the payload ran"
    assert f"{path}: not a weights-only checkpoint" in message
    assert "refused to load it, and nothing in it ran" in message
    if protocol == 2:
        assert f"asks to load or call {os.system.__module__}.system" in message


# --------------------------------------------------------------------------- resources

WRITERS = {
    "table": "from randlabels.io import write_table; import pandas as pd; "
             "write_table(pd.DataFrame({'x': range(200000)}), OUT)",
    "checkpoint": "from randlabels.io import save_torch; import torch; save_torch({'w': torch.zeros(100000)}, OUT)",
    "statistics": "from randlabels.analysis.statsfile import write_stats; write_stats(OUT, [], {'big': 'x' * 60000})",
    "split": "from randlabels.data.splits import make_split, write_split; import numpy as np;"
             "write_split(make_split(np.zeros(200000, bool), upstream=90000, downstream=90000, test=1000,"
             " upstream_classes=10, downstream_classes=10, seed=0), OUT)",
    "figure": "from randlabels.plots.style import save_figure; import matplotlib; matplotlib.use('Agg');"
              "import matplotlib.pyplot as plt; import numpy as np; fig, ax = plt.subplots(figsize=(20, 20));"
              "ax.imshow(np.random.default_rng(0).random((800, 800))); save_figure(fig, OUT)",
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_full_disk_leaves_no_partial_output(tmp_path, writer):
    """A file-size limit (RLIMIT_FSIZE) fails the write the way a full disk does."""
    out = tmp_path / "out" / f"result.{writer}"
    code = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(ROOT / 'src')!r})
        OUT = {str(out)!r}
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, 32 * 1024))
        {WRITERS[writer]}
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, "the write was expected to fail"
    assert "OutputWriteError" in result.stderr, result.stderr[-2000:]
    assert str(out) in result.stderr and "file too large" in result.stderr
    assert "no partial file was left behind" in result.stderr
    assert not out.exists() and not any(out.parent.iterdir())


def _tiny_trainer(lr=0.05, model=None, batch_size=8, data_class=DeviceData, **data_options):
    rng = np.random.default_rng(0)
    data = data_class(rng.integers(0, 256, (32, 6, 6, 1), dtype=np.uint8), rng.integers(0, 3, 32), [0.5], [0.25],
                      **data_options)
    if model is None:
        model = initialize(build_model({"arch": "cnn2", "filters": 4, "kernel_size": 3, "hidden": 8}, (1, 6, 6), 3), 1.0, 0)
    return Trainer(model, data, TrainConfig(epochs=3, batch_size=batch_size, lr=lr), seed=0)


class _OutOfMemory(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_names_the_batch_size_to_lower(tmp_path):
    trainer = _tiny_trainer(model=_OutOfMemory(), batch_size=4096)
    with pytest.raises(ResourceError) as info:
        run_training(trainer, resume_path=tmp_path / "r.pt", run_settings={}, inputs=[],
                     where="experiments.x.pretrain", log=logging.getLogger("test"))
    message = str(info.value)
    assert "batch size 4096" in message and "lower experiments.x.pretrain.batch_size" in message


def _write_in_read_only_folder(folder: Path, code: str) -> subprocess.CompletedProcess:
    """Run Python ``code`` while ``folder`` may not be written: by file modes for a plain
    user; for root, whom modes do not stop, as a read-only bind mount in a mount
    namespace of its own (``unshare``), which goes away with the process."""
    command = [sys.executable, "-c", code]
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=120)
        finally:
            folder.chmod(0o755)
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: no folder is read-only to root")
    where = shlex.quote(str(folder))
    mount = f"mount --bind {where} {where} && mount -o remount,bind,ro {where} && exec {shlex.join(command)}"
    result = subprocess.run(["unshare", "-Urm", "sh", "-c", mount], capture_output=True, text=True, timeout=120)
    if "unshare:" in result.stderr or "mount:" in result.stderr:
        pytest.skip(f"cannot make a read-only folder here: {result.stderr.strip()}")
    return result


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_read_only_folder_names_the_output_not_its_temporary_file(tmp_path, writer):
    folder = tmp_path / "read-only"
    folder.mkdir()
    for out in (folder / f"result.{writer}", folder / "not-yet" / f"result.{writer}"):  # the folder, or one to make in it
        code = textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(ROOT / 'src')!r})
            OUT = {str(out)!r}
            {WRITERS[writer]}
            """)
        result = _write_in_read_only_folder(folder, code)
        assert result.returncode != 0, "the write was expected to fail"
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"randlabels.errors.OutputWriteError: {out}: could not be written ("), result.stderr[-2000:]
        assert f"the folder {folder} is not writable" in last and "Make the folder writable" in last
        assert ".tmp-" not in last  # the output, not its temporary name
        assert not list(tmp_path.rglob("*result*"))


# --------------------------------------------------------------------------- runs trained twice, Ctrl-C


_HOLD_RUN = """
import sys
sys.path.insert(0, {src!r})
from randlabels.training.resume import RunLock
RunLock({resume!r}).acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes stdin or kills this process
"""


def _hold_run(resume: Path) -> subprocess.Popen:
    """Another process that trains the run of ``resume`` (holds its lock)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_RUN.format(src=str(ROOT / "src"), resume=str(resume))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_run_another_process_trains_is_refused_and_free_once_it_dies(tmp_path):
    """Two processes never train one run; the lock dies with its holder, kill -9 included."""
    import signal
    import socket

    from randlabels.training.resume import RunLocked

    resume = tmp_path / "_resume" / "run.pt"
    holder = _hold_run(resume)
    try:
        with pytest.raises(RunLocked) as info:
            run_training(_tiny_trainer(), resume_path=resume, run_settings={}, inputs=[],
                         where="experiments.x.pretrain", log=logging.getLogger("test"))
        message = str(info.value)
        assert message.startswith(f"{resume}: this run is being trained by another process "
                                  f"(pid {holder.pid} on {socket.gethostname()} since "), message
        assert "\n" not in message and not resume.exists()  # refused before any state was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert resume.with_name("run.pt.lock").exists()  # left behind by kill -9, and no obstacle:
    result, store = run_training(_tiny_trainer(), resume_path=resume, run_settings={}, inputs=[],
                                 where="experiments.x.pretrain", log=logging.getLogger("test"))
    assert len(result.metrics) == 4
    store.clear()  # once the outputs are written: the lock is given back, its file removed
    assert not resume.with_name("run.pt.lock").exists()


@pytest.mark.slow
def test_a_second_job_on_a_run_being_trained_stops_before_touching_it(project):
    """What a second Snakemake (after `--unlock` on a live run) does to a run the first
    one trains: Snakemake deletes the job's declared outputs (the first job writes
    them, atomically, when it ends) and its log file, then the job stops at once with
    one line naming the run and its holder, and writes nothing (the first job's log
    lines from then on go to the removed file: Snakemake's doing, out of a job's reach)."""
    resume = project / "results/_resume/tiny/pretrain/random/scale0.5/seed0.pt"
    log = project / "results/logs/pretrain/tiny/random/scale0.5/seed0.log"
    log.write_text("the first job's log\n")
    holder = _hold_run(resume)
    try:
        result = snakemake(project, f"{RUN}/metrics.tsv", "--cores", "1", "--forcerun", "pretrain",
                           "--allowed-rules", "pretrain", check=False)
        assert holder.poll() is None  # the first one goes on
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert (f"error: results/_resume/tiny/pretrain/random/scale0.5/seed0.pt: this run is being trained by "
            f"another process (pid {holder.pid} on ") in text, text[-3000:]
    assert "Traceback" not in text
    assert log.read_text() == ""  # removed by Snakemake before the job, created empty after it failed
    assert not resume.exists()  # no state written or removed by the refused job
    assert not (project / RUN / "checkpoints.pt").exists()  # deleted by Snakemake before the job started


class _CtrlC(DeviceData):
    """Data whose ``at``-th training batch sends this process SIGINT, as Ctrl-C would."""

    def __init__(self, *args, at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.at = 0, at

    def batch(self, index):
        import signal

        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().batch(index)


def test_ctrl_c_during_training_saves_the_state_like_sigterm(tmp_path, caplog):
    from randlabels.training.resume import ResumeStore, fingerprint

    def run(trainer):
        return run_training(trainer, resume_path=tmp_path / "r.pt", run_settings={}, inputs=[],
                            where="experiments.x.pretrain", log=logging.getLogger("test"))

    expected = _tiny_trainer().fit().metrics.drop(columns="seconds")
    try:
        with pytest.raises(SystemExit) as info, caplog.at_level(logging.INFO):
            run(_tiny_trainer(data_class=_CtrlC, at=6))  # 4 steps an epoch: step 6 is in epoch 2
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C during training raised KeyboardInterrupt: no state was saved")
    assert info.value.code == 75  # as for SIGTERM and SIGUSR1: run again
    assert "interrupted by SIGINT in epoch 2 at step 6; resume state saved to" in caplog.text
    assert ResumeStore(tmp_path / "r.pt", fingerprint({}, [])).load()["step_count"] == 6
    with caplog.at_level(logging.INFO):
        result, store = run(_tiny_trainer())
    assert "resuming from" in caplog.text
    pd.testing.assert_frame_equal(result.metrics.drop(columns="seconds"), expected)
    store.clear()


# --------------------------------------------------------------------------- numerics


def test_divergence_is_recorded_when_going_on(tmp_path, caplog):
    result, _ = run_training(_tiny_trainer(lr=1e8), resume_path=tmp_path / "r.pt", run_settings={}, inputs=[],
                             where="experiments.x.pretrain", log=logging.getLogger("test"))
    assert result.diverged and bool(result.metrics["diverged"].iloc[-1])
    assert "recorded as diverged" in caplog.text


def test_divergence_stops_the_run_when_configured(tmp_path):
    with pytest.raises(TrainingDiverged, match="experiments.x.pretrain: run diverged.*on_divergence: continue"):
        run_training(_tiny_trainer(lr=1e8), resume_path=tmp_path / "r.pt", run_settings={}, inputs=[],
                     where="experiments.x.pretrain", on_divergence="stop", log=logging.getLogger("test"))
    assert not (tmp_path / "r.pt").exists()


def test_eval_every_above_the_number_of_steps_is_warned_and_the_last_step_recorded(tmp_path, caplog):
    """3 epochs of 4 steps with finetune.eval_every 100: the curve would be the
    untrained network alone; the log says so, and the trained network is recorded."""
    trainer = _tiny_trainer()
    with caplog.at_level(logging.INFO):
        result, store = run_training(trainer, resume_path=tmp_path / "r.pt", run_settings={}, inputs=[],
                                     where="experiments.x.finetune", log=logging.getLogger("test"), eval_every=100)
    store.clear()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warnings if "experiments.x.finetune.eval_every (100) is more than the 12 training steps" in w], warnings
    assert result.curve["step"].tolist() == [0, 12]
    assert result.curve["train_acc"].iloc[-1] == result.metrics["train_acc"].iloc[-1]  # the trained network
    # A step count that eval_every does not divide ends with the last step too, without a warning.
    caplog.clear()
    result, store = run_training(_tiny_trainer(), resume_path=tmp_path / "r2.pt", run_settings={}, inputs=[],
                                 where="experiments.x.finetune", log=logging.getLogger("test"), eval_every=5)
    store.clear()
    assert result.curve["step"].tolist() == [0, 5, 10, 12] and "eval_every" not in caplog.text


def test_singular_weight_covariance_gives_undefined_misalignment_with_reason():
    from randlabels.analysis.stats import UndefinedStatistic, misalignment

    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 9))  # 3 filters in 9 dimensions: Σw has rank ≤ 3
    cov_w = np.cov(w, rowvar=False)
    with pytest.raises(UndefinedStatistic, match="singular"):
        misalignment(np.eye(9), cov_w)
    # An ill-conditioned but invertible Σw is scored in float64, not via a pseudo-inverse.
    cov = np.diag([1.0, 1e-9, 1.0])
    assert np.isfinite(misalignment(np.diag([2.0, 1.0, 3.0]), cov))
    with pytest.raises(UndefinedStatistic, match="ill-conditioned"):
        misalignment(np.diag([2.0, 1.0, 3.0]), np.diag([1.0, 1e-12, 1.0]))


def _diverging_config(policy: str) -> dict:
    """The tiny config, one seed, pre-trained at a learning rate that blows up."""
    config = copy.deepcopy(TINY)
    config["seeds"] = [0]
    config["on_divergence"] = policy
    config["experiments"]["tiny"]["pretrain"].update(labels=["random"], lr=1e4)
    return config


@pytest.mark.slow
def test_a_diverged_run_is_recorded_and_the_workflow_goes_on(tmp_path):
    project = copy_project(tmp_path / "project")
    (project / "config.yaml").write_text(yaml.safe_dump(_diverging_config("continue")))
    result = snakemake(project, "--cores", "2")
    tables = project / "results/tiny/tables"
    metrics = read_table(tables / "pretrain_metrics.tsv")
    assert metrics["diverged"].any() and not np.isfinite(metrics["loss"].iloc[-1])
    misalignment = read_table(tables / "misalignment.tsv")
    assert misalignment["diverged"].all()
    assert set(misalignment["epoch"]) == {0}  # the only finite checkpoint
    curves = read_table(tables / "finetune_curves.tsv")
    from_pretraining = curves["variant"] != "scratch"
    assert curves.loc[from_pretraining, "source_diverged"].all()
    assert not curves.loc[~from_pretraining, "source_diverged"].any()
    summary = read_table(tables / "transfer_summary.tsv")
    assert set(summary["variant"]) == {"scratch", "pretrained", "pretrained_norescale", "gaussian"}
    for figure in ("misalignment", "learning_curves", "transfer_summary"):
        assert (project / f"results/tiny/figures/{figure}.png").stat().st_size > 1000
    log = (project / "results/logs/pretrain/tiny/random/scale0.5/seed0.log").read_text()
    assert "run diverged" in log and "recorded as diverged" in log
    assert result.returncode == 0


@pytest.mark.slow
def test_a_diverged_run_stops_the_workflow_when_configured(tmp_path):
    project = copy_project(tmp_path / "project")
    (project / "config.yaml").write_text(yaml.safe_dump(_diverging_config("stop")))
    result = snakemake(project, "--cores", "1", check=False)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "experiments.tiny.pretrain: run diverged" in text and "on_divergence: continue" in text
    run = project / "results/tiny/pretrain/random/scale0.5/seed0"
    assert not (run / "checkpoints.pt").exists() and not (run / "metrics.tsv").exists()
    assert not (project / "results/tiny/stats").exists()
