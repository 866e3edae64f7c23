"""The fault suite: each fault is injected for real, and both the message and what is
left on disk are asserted.

Config faults are refused before any job starts. Damaged inputs stop the job that
reads them with a message naming the file, and leave none of its outputs. A full disk
leaves no partial file. Out-of-memory names the batch size. Divergence is recorded
or stops the run, as configured. (Kills and signals: tests/test_interrupt.py and the
kill loop in tests/test_workflow.py.)
"""

from __future__ import annotations

import copy
import logging
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

from randlabels import runlog
from randlabels.config import ConfigError, check_config
from randlabels.engine import DeviceData, TrainConfig, Trainer
from randlabels.errors import InputFileError, OutputWriteError, ResourceError, TrainingDiverged
from randlabels.models import build_model, initialize
from randlabels.training_job import run_training
from workflow_helpers import ROOT, copy_project, snakemake

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


EXP = "experiments.digits_cnn"
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


@pytest.mark.parametrize("case", ["unknown nested key", "no seeds", "scales with one path label", "undefined dataset"])
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


# --------------------------------------------------------------------------- input files


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of a one-seed tiny config, copied afresh for each fault."""
    project = copy_project(tmp_path_factory.mktemp("finished") / "project")
    config = copy.deepcopy(TINY)
    config["seeds"] = [0]
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(project, "--cores", "2")
    return project


@pytest.fixture
def project(finished, tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(finished, copy, symlinks=True)
    return copy


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


RUN = "results/tiny/pretrain/random/scale0.5/seed0"
STATS = "results/tiny/stats/random/scale0.5/seed0.h5"


def _other_architecture_checkpoints(path: Path) -> None:
    """Overwrite a checkpoint set with one of a narrower network (8 filters, not 16)."""
    saved = torch.load(path, weights_only=False)
    spec = {**saved["spec"], "filters": 8}
    model = build_model(spec, saved["input_shape"], saved["num_classes"])
    saved["states"] = {e: model.state_dict() for e in saved["states"]}
    torch.save(saved, path)


# fault name: (damage, the rule that reads the file, its output, what the message says)
INPUT_FAULTS = {
    "truncated statistics file": (
        lambda p: _truncate(p / STATS), "aggregate_statistics", "results/tiny/tables/misalignment.tsv",
        "statistics file",
    ),
    "truncated checkpoint set": (
        lambda p: _truncate(p / RUN / "checkpoints.pt"), "statistics", STATS, "not a readable checkpoint",
    ),
    "checkpoint of another architecture": (
        lambda p: _other_architecture_checkpoints(p / RUN / "checkpoints.pt"), "finetune",
        "results/tiny/finetune/random10/pretrained/scale0.5/seed0.tsv", "does not fit the configured model",
    ),
    "truncated dataset file": (
        lambda p: _truncate(p / "results/data/digits.h5", 0.3), "make_split", "results/tiny/splits/seed0.h5",
        "not a readable HDF5 dataset file",
    ),
    "truncated split file": (
        lambda p: _truncate(p / "results/tiny/splits/seed0.h5", 0.3), "pretrain", f"{RUN}/metrics.tsv",
        "not a readable split file",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(INPUT_FAULTS))
def test_damaged_input_stops_its_reader_naming_the_file(project, case):
    damage, rule, output, problem = INPUT_FAULTS[case]
    damage(project)
    damaged = {
        "truncated statistics file": STATS,
        "truncated checkpoint set": f"{RUN}/checkpoints.pt",
        "checkpoint of another architecture": f"{RUN}/checkpoints.pt",
        "truncated dataset file": "results/data/digits.h5",
        "truncated split file": "results/tiny/splits/seed0.h5",
    }[case]
    # Only the reader may run (its producer would simply rewrite the damaged file).
    result = snakemake(project, output, "--cores", "1", "--forcerun", rule, "--allowed-rules", rule, check=False)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert damaged in text and problem in text, text[-3000:]
    assert not (project / output).exists(), "the failed job's output survived"
    assert not list((project / "results").rglob(".*.tmp-*")), "temporary file left behind"
    log = next((project / "results/logs" / rule).rglob("*seed0.log"), None) if rule != "aggregate_statistics" else None
    if log is not None:
        assert "Traceback" not in log.read_text()  # the message, not a traceback


def test_nan_in_a_dataset_is_refused_naming_the_file(tmp_path):
    from randlabels.datasets import DatasetFileError, prepare_gaussian, read_dataset

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


# --------------------------------------------------------------------------- resources

WRITERS = {
    "table": "from randlabels.io import write_table; import pandas as pd; "
             "write_table(pd.DataFrame({'x': range(200000)}), OUT)",
    "checkpoint": "from randlabels.io import save_torch; import torch; save_torch({'w': torch.zeros(100000)}, OUT)",
    "statistics": "from randlabels.statsfile import write_stats; write_stats(OUT, [], {'big': 'x' * 60000})",
    "split": "from randlabels.splits import make_split, write_split; import numpy as np;"
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


def _tiny_trainer(lr=0.05, model=None, batch_size=8):
    rng = np.random.default_rng(0)
    data = DeviceData(rng.integers(0, 256, (32, 6, 6, 1), dtype=np.uint8), rng.integers(0, 3, 32), [0.5], [0.25])
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


def test_singular_weight_covariance_gives_undefined_misalignment_with_reason():
    from randlabels.stats import UndefinedStatistic, misalignment

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
    metrics = pd.read_csv(tables / "pretrain_metrics.tsv", sep="\t")
    assert metrics["diverged"].any() and not np.isfinite(metrics["loss"].iloc[-1])
    misalignment = pd.read_csv(tables / "misalignment.tsv", sep="\t")
    assert misalignment["diverged"].all()
    assert set(misalignment["epoch"]) == {0}  # the only finite checkpoint
    curves = pd.read_csv(tables / "finetune_curves.tsv", sep="\t")
    from_pretraining = curves["variant"] != "scratch"
    assert curves.loc[from_pretraining, "source_diverged"].all()
    assert not curves.loc[~from_pretraining, "source_diverged"].any()
    summary = pd.read_csv(tables / "transfer_summary.tsv", sep="\t")
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
