"""The workflow as a researcher runs it: dry runs, lint, a tiny full run, reruns, report."""

from __future__ import annotations

import importlib
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from randlabels import provenance
from randlabels.analysis import eigenfilters
from randlabels.io import read_table
from randlabels.workflow import plan, targets
from workflow_helpers import BIN, NO_CLUSTER, ROOT, copy_project, job_counts, killable_env, snakemake

CONFIG_DIR = ROOT / "tests" / "configs"


def test_lint_is_clean():
    result = snakemake(ROOT, "--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt_is_clean():
    result = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _resolve(dotted: str) -> object:
    """The module, or module attribute, that a dotted name names."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


def test_every_rule_says_what_it_makes_and_which_module_does_it():
    """`snakemake --list-rules`, the workflow's map on the command line: every rule with
    its docstring, which names the library module (or registry) that does its work."""
    listed = {}
    for line in snakemake(ROOT, "--list-rules").stdout.splitlines():
        match = re.fullmatch(r"(\w+)(?: \((.*)\))?", line.strip())
        if match:
            listed[match.group(1)] = match.group(2)
    assert {"all", "pretrain", "statistics", "aggregate_statistics", "plot", *targets.TARGETS} <= set(listed)
    for rule, docstring in listed.items():
        assert docstring, f"rule {rule} has no docstring"
        names = re.findall(r"randlabels(?:\.\w+)+", docstring)
        assert names, f"rule {rule}: its docstring names no randlabels module: {docstring}"
        for name in names:
            _resolve(name)


def test_dry_run_of_the_default_config(tmp_path):
    project = copy_project(tmp_path / "project")
    counts = job_counts(snakemake(project, "-n").stdout)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    seeds = len(config["seeds"])
    expected_pretrain = sum(
        len(e["pretrain"]["labels"]) * len(e["init_scales"]) * seeds for e in config["experiments"].values()
    )
    assert counts["pretrain"] == expected_pretrain
    assert counts["statistics"] == expected_pretrain
    assert counts["prepare_dataset"] == len(config["datasets"])
    digits = config["experiments"]["digits_cnn"]
    assert counts["finetune"] == len(digits["finetune"]["variants"]) * len(digits["init_scales"]) * seeds
    assert counts["gaussian_init"] == len(digits["init_scales"]) * seeds
    assert counts["plot"] == sum(len(plan.figures(config, exp)) for exp in config["experiments"])
    assert counts["aggregate_eigenfilters"] == sum(plan.is_conv(config, exp) for exp in config["experiments"])


def test_dry_run_of_the_cifar10_config(tmp_path):
    project = copy_project(tmp_path / "project")
    output = snakemake(project, "-n", "--configfile", "configs/cifar10.yaml").stdout
    counts = job_counts(output)
    assert counts["prepare_dataset"] == 1
    assert "results/data/cifar10.h5" in output
    assert counts["pretrain"] == 5 * 2 + 5 * 3  # cnn2: 2 label kinds × 1 scale; vgg16: 1 kind × 3 scales
    assert counts["finetune"] == 4 * 3 * 5


def test_command_line_values_change_the_default_config(tmp_path):
    project = copy_project(tmp_path / "project")
    default = job_counts(snakemake(project, "-n").stdout)
    assert job_counts(snakemake(project, "-n", "--config", "device=cpu").stdout) == default
    one_seed = job_counts(snakemake(project, "-n", "--config", "set=seeds=[0]").stdout)
    assert one_seed["pretrain"] * 3 == default["pretrain"]
    assert job_counts(snakemake(project, "-n", "--config", "seeds=[0]").stdout) == one_seed  # read as YAML
    bad = snakemake(project, "-n", "--config", "set=experiments.digits_cnn.pretrain.epoch=3", check=False)
    assert bad.returncode != 0
    assert "experiments.digits_cnn.pretrain.epoch (did you mean 'epochs'?)" in bad.stdout + bad.stderr


def test_invalid_config_stops_before_any_job(tmp_path):
    project = copy_project(tmp_path / "project")
    config = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    config["experiments"]["tiny"]["pretrain"]["epoch"] = 3
    (project / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(project, "--cores", "1", "--configfile", "bad.yaml", check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "experiments.tiny.pretrain.epoch" in message
    assert "did you mean 'epochs'" in message
    assert not (project / "results").exists()


@pytest.fixture(scope="module")
def tiny_run(finished_tiny_run, tmp_path_factory):
    """This file's copy of the session's tiny run (tests/conftest.py), which its tests
    change (edits, reruns, a report)."""
    project = tmp_path_factory.mktemp("tiny") / "project"
    shutil.copytree(finished_tiny_run, project, symlinks=True)
    return project


@pytest.mark.slow
def test_tiny_run_writes_every_stage(tiny_run):
    results = tiny_run / "results"
    with h5py.File(results / "data" / "digits.h5") as f:
        assert f["images"].shape == (1797, 8, 8, 1) and f["images"].dtype == np.uint8
        assert f.attrs["checksum"].startswith("sha256:")
    with h5py.File(results / "tiny" / "splits" / "seed0.h5") as f:
        upstream, downstream, test = f["upstream"][()], f["downstream"][()], f["test"][()]
    assert len(upstream) == 200 and len(downstream) == 200 and len(test) == 100
    assert not set(upstream) & set(downstream) and not set(test) & (set(upstream) | set(downstream))

    metrics = read_table(results / "tiny" / "tables" / "pretrain_metrics.tsv")
    assert set(metrics["epoch"]) == {0, 1, 2}
    assert len(metrics) == 2 * 2 * 3  # label kinds × seeds × (epoch 0 + 2 epochs)
    assert metrics.query("labels == 'random'")["test_acc"].isna().all()
    assert metrics.query("labels == 'real'")["test_acc"].notna().all()

    stats = results / "tiny" / "stats" / "random" / "scale0.5" / "seed1.h5"
    with h5py.File(stats) as f:
        assert sorted(f) == ["epoch_0000", "epoch_0001", "epoch_0002"]
        conv = f["epoch_0002"]["conv1"]
        assert conv["cov_x"].shape == (9, 9) and conv["cov_w"].shape == (9, 9)
        assert np.isfinite(conv.attrs["misalignment_data"]) and conv.attrs["misalignment_data"] >= 0
        fc = f["epoch_0002"]["fc1"]  # 32 units in 256 dimensions: Σw is singular
        assert np.isnan(fc.attrs["misalignment_data"])
        assert "singular" in fc.attrs["undefined_reason"]

    misalignment = read_table(results / "tiny" / "tables" / "misalignment.tsv")
    assert set(misalignment["basis"]) == {"data", "random"}
    pooled = read_table(results / "tiny" / "tables" / "misalignment_pooled.tsv")
    assert set(pooled.loc[pooled["epoch"] == 0, "of"]) == {"weights"}  # nothing has changed at epoch 0
    assert set(pooled.loc[pooled["epoch"] > 0, "of"]) == {"weights", "change"}
    assert misalignment.query("layer == 'fc1'")["misalignment"].isna().all()
    curves = read_table(results / "tiny" / "tables" / "finetune_curves.tsv")
    assert set(curves["variant"]) == {"scratch", "pretrained", "pretrained_norescale", "gaussian"}
    summary = read_table(results / "tiny" / "tables" / "transfer_summary.tsv")
    assert {"speedup", "steps_to_target", "auc_gap"} <= set(summary.columns)
    # The eigen-filter table's Σ(W − W₀): the pooled seeds' last weights minus those at epoch 0.
    change = []
    for seed in (0, 1):
        with h5py.File(results / "tiny" / "stats" / "random" / "scale0.5" / f"seed{seed}.h5") as f:
            weights = [f[epoch]["conv1"]["weights"][()] for epoch in ("epoch_0002", "epoch_0000")]
            change.append((weights[0] - weights[1]).reshape(len(weights[0]), -1))
    expected = np.sort(np.linalg.eigvalsh(np.cov(np.concatenate(change), rowvar=False)))[::-1]
    pooled = read_table(results / "tiny" / "tables" / "eigenfilters.tsv")
    _, _, eigval_change = eigenfilters.vectors(pooled, "eigvec_change")
    np.testing.assert_allclose(eigval_change, expected, rtol=1e-6)
    for figure in ("misalignment", "transfer_function", "eigenfilters", "learning_curves", "transfer_summary"):
        png = results / "tiny" / "figures" / f"{figure}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    logs = list((results / "logs" / "pretrain").rglob("*.log"))
    assert logs and all("epoch 2/2" in log.read_text() for log in logs)
    assert not list(results.rglob(".*.tmp-*")), "temporary files left behind"


@pytest.mark.slow
def test_training_jobs_left_live_files_and_the_run_a_summary(tiny_run):
    results = tiny_run / "results"
    live = results / "_live" / "tiny" / "pretrain" / "random" / "scale0.5" / "seed1.jsonl"
    rows = pd.read_json(live, lines=True)
    assert list(rows["epoch"]) == [0, 1, 2] and set(rows["seed"]) == {1} and set(rows["experiment"]) == {"tiny"}
    metrics = read_table(results / "tiny" / "pretrain" / "random" / "scale0.5" / "seed1" / "metrics.tsv")
    np.testing.assert_allclose(rows["loss"], metrics["loss"])
    finetune_live = list((results / "_live" / "tiny" / "finetune").rglob("*.jsonl"))
    assert len(finetune_live) == 4 * 2  # variants × seeds
    log = (results / "logs" / "pretrain" / "tiny" / "random" / "scale0.5" / "seed1.log").read_text()
    assert "experiment=tiny labels=random init_scale=0.5 seed=1  epoch 2/2  step " in log and " ETA " in log
    # tensorboard: true: event files per run and seed, for pre-training and fine-tuning
    for folder in (results / "_tensorboard" / "tiny" / "pretrain" / "random" / "scale0.5" / "seed1",
                   results / "_tensorboard" / "tiny" / "finetune" / "random10" / "gaussian" / "scale0.5" / "seed0"):
        assert list(folder.glob("events.out.tfevents.*")), folder
    # ... and switching it off reruns nothing: it changes no result.
    assert job_counts(snakemake(tiny_run, "-n", "--config", "set=tensorboard=false").stdout) == {}
    assert job_counts(snakemake(tiny_run, "-n", "--config", "tensorboard=false").stdout) == {}  # YAML's false

    summary = (results / "SUMMARY.md").read_text()
    misalignment = read_table(results / "tiny" / "tables" / "misalignment.tsv")
    last = misalignment.query("labels == 'random' and epoch == 2 and layer == 'conv1' and not diverged")
    data = last.query("basis == 'data'")["misalignment"].mean()
    rand = last.query("basis == 'random'")["misalignment"].mean()
    assert (f"- misalignment of conv1 at epoch 2, random labels, init scale 0.5: {data:.3g} against the data basis, "
            f"{rand:.3g} against a random basis (mean of 2 seeds") in summary
    assert "- speed-up over scratch to accuracy" in summary and "- dead ReLU units at epoch 2" in summary
    assert "Code, as the tables record it: randlabels " in summary


@pytest.mark.slow
def test_every_training_job_was_bound_to_a_gpu(tiny_run):
    logs = tiny_run / "results" / "logs"
    training = list(logs.glob("pretrain/**/*.log")) + list(logs.glob("finetune/**/*.log"))
    assert len(training) == 2 * 2 + 4 * 2  # pre-training runs + fine-tuning runs
    for log in training:
        text = log.read_text()
        assert "bound to GPU 0" in text or "bound to GPU 1" in text, log


@pytest.mark.slow
def test_after_a_full_run_nothing_is_scheduled(tiny_run):
    result = snakemake(tiny_run, "-n")
    assert job_counts(result.stdout) == {}
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_a_copied_project_keeps_its_cache(tiny_run, tmp_path):
    """Inputs are paths relative to the project: a finished project copied or renamed
    elsewhere has nothing to do (no "set of input files has changed")."""
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_run, copy, symlinks=True)
    result = snakemake(copy, "-n")
    assert job_counts(result.stdout) == {}, result.stdout[-3000:]


@pytest.mark.slow
def test_a_finetune_setting_reruns_only_finetuning(tiny_run):
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    config["experiments"]["tiny"]["finetune"]["lr"] = 0.02
    (tiny_run / "changed.yaml").write_text(yaml.safe_dump(config))
    counts = job_counts(snakemake(tiny_run, "-n", "--configfile", "changed.yaml").stdout)
    assert counts.get("finetune") == 4 * 2
    assert {"pretrain", "statistics", "make_split", "prepare_dataset", "gaussian_init"}.isdisjoint(counts)


@pytest.mark.slow
def test_a_new_target_accuracy_reruns_the_summary_not_the_training(tiny_run):
    changed = _changed_config(tiny_run, "finetune", "target_accuracy", {"from_chance": 0.1})
    counts = job_counts(snakemake(tiny_run, "-n", "--configfile", changed).stdout)
    assert counts.get("aggregate_finetuning") == 1, counts
    assert {"finetune", "pretrain", "statistics", "gaussian_init"}.isdisjoint(counts), counts


@pytest.mark.slow
def test_fewer_pretraining_label_kinds_rerun_no_pretraining(tiny_run):
    """The random-label runs do not depend on whether real labels are pre-trained too
    (nor would adding them rerun the random ones)."""
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    config["experiments"]["tiny"]["pretrain"]["labels"] = ["random"]
    (tiny_run / "changed.yaml").write_text(yaml.safe_dump(config))
    counts = job_counts(snakemake(tiny_run, "-n", "--configfile", "changed.yaml").stdout)
    assert {"pretrain", "statistics", "gaussian_init", "finetune"}.isdisjoint(counts), counts


@pytest.mark.slow
def test_a_new_variant_trains_only_its_own_runs(tiny_run):
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    config["experiments"]["tiny"]["finetune"]["variants"].append("first1")
    (tiny_run / "changed.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tiny_run, "-n", "--configfile", "changed.yaml")
    counts = job_counts(result.stdout)
    # first1's run of each seed; the four variants' eight runs are up to date.
    assert counts.get("finetune") == 2, counts
    assert {"pretrain", "statistics", "gaussian_init"}.isdisjoint(counts), counts
    assert counts.get("aggregate_finetuning") == 1, counts


@pytest.mark.slow
def test_resume_keys_rerun_nothing_and_the_job_saves_at_that_interval(tiny_run, tmp_path):
    """How often a job saves its state does not change what it computes: not a param."""
    project = tmp_path / "project"  # its own copy: a job is run again below
    shutil.copytree(tiny_run, project, symlinks=True)
    config = yaml.safe_load((project / "config.yaml").read_text())
    for stage in ("pretrain", "finetune"):
        config["experiments"]["tiny"][stage].update(resume_every=2, resume_min_seconds=0)
        settings = getattr(plan, f"{stage}_settings")(config, "tiny")
        assert {"resume_every", "resume_min_seconds"}.isdisjoint(settings), settings
    (project / "changed.yaml").write_text(yaml.safe_dump(config))
    assert job_counts(snakemake(project, "-n", "--configfile", "changed.yaml").stdout) == {}
    checkpoints = plan.path("checkpoints", exp="tiny", labels="random", scale="0.5", seed=0)
    snakemake(project, checkpoints, "--cores", "1", "--forcerun", "pretrain", "--configfile", "changed.yaml")
    log = (project / "results/logs/pretrain/tiny/random/scale0.5/seed0.log").read_text()
    assert ("its resumable state is saved every 2 epochs, at least 0 s apart (experiments.tiny.pretrain.resume_every, "
            "resume_min_seconds)") in log, log[-2000:]


def _changed_config(project, section, key, value) -> str:
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["experiments"]["tiny"].setdefault(section, {})[key] = value
    (project / "changed.yaml").write_text(yaml.safe_dump(config))
    return "changed.yaml"


@pytest.mark.slow
def test_a_sample_setting_reruns_the_gaussian_branch_only(tiny_run):
    changed = _changed_config(tiny_run, "sample", "zero_mean", True)
    counts = job_counts(snakemake(tiny_run, "-n", "--configfile", changed).stdout)
    assert counts["gaussian_init"] == 2 and counts["finetune"] == 2  # one Gaussian run per seed
    assert {"pretrain", "statistics", "make_split"}.isdisjoint(counts)


@pytest.mark.slow
def test_a_stats_setting_reruns_statistics_not_training(tiny_run):
    changed = _changed_config(tiny_run, "stats", "batch_size", 64)
    counts = job_counts(snakemake(tiny_run, "-n", "--configfile", changed).stdout)
    # misalignment, misalignment_change, transfer_function, eigenfilters
    assert counts["statistics"] == 4 and counts["plot"] == 4
    assert {"pretrain", "make_split"}.isdisjoint(counts)


@pytest.mark.slow
def test_forcerun_redoes_one_stage_and_what_follows(tiny_run):
    counts = job_counts(snakemake(tiny_run, "-n", "--forcerun", "statistics").stdout)
    readers = ("aggregate_statistics", "aggregate_eigenfilters")
    assert counts == {"statistics": 4, **dict.fromkeys(readers, 1), "plot": 4, "all": 1}  # the figures above


@pytest.mark.slow
def test_outputs_record_the_commit_and_settings_that_made_them(tiny_run, tmp_path):
    """A stats file, a checkpoint set and a table carry the package version, the git
    commit of the code that ran and a hash of their job's settings. The tiny run's
    project is a copy, no git checkout: "unknown"; a copy made one and rerun records
    its commit."""
    run = {"exp": "tiny", "labels": "random", "scale": "0.5", "seed": 1}
    files = {"statistics": plan.path("stats", **run), "pretrain": plan.path("checkpoints", **run),
             "aggregate_pretraining": plan.path("table", exp="tiny", table="pretrain_metrics")}
    for rule, name in files.items():
        stamp = provenance.read(tiny_run / name)
        assert stamp["rule"] == rule and re.fullmatch(r"[0-9a-f]{64}", stamp["settings_sha256"]), name
        assert stamp["randlabels_version"] == provenance.version()
        assert stamp["git_commit"] == stamp["git_dirty"] == "unknown", name
    other_seed = provenance.read(tiny_run / plan.path("stats", **{**run, "seed": 0}))
    assert other_seed["settings_sha256"] != provenance.read(tiny_run / files["statistics"])["settings_sha256"]

    # The lineage: a file's settings, its run, and the lineages of the files its job read
    # (code files add nothing), so a table tells apart what its own settings cannot.
    def lineage(path) -> str:
        return provenance.read(tiny_run / path)["lineage_sha256"]

    stats, table = provenance.read(tiny_run / files["statistics"]), provenance.read(tiny_run / plan.path(
        "table", exp="tiny", table="misalignment"))
    read_by_stats = [files["pretrain"], plan.path("dataset", dataset="digits"), plan.path("split", exp="tiny", seed=1)]
    assert stats["lineage_sha256"] == provenance.lineage_hash(
        stats["settings_sha256"], {key: str(value) for key, value in run.items()}, map(lineage, read_by_stats))
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    read_by_table = [*plan.stats_files(config, "tiny"), plan.path("table", exp="tiny", table="pretrain_metrics")]
    assert len(read_by_table) == 5  # 2 seeds × random and real labels, and the training metrics
    assert table["lineage_sha256"] == provenance.lineage_hash(table["settings_sha256"], {"exp": "tiny"},
                                                              map(lineage, read_by_table))
    # At the top, the prepared dataset: its settings and the checksum of its raw file.
    with h5py.File(tiny_run / plan.path("dataset", dataset="digits"), "r") as f:
        dataset, checksum = {key: str(f.attrs[key]) for key in provenance.KEYS}, str(f.attrs["checksum"])
    assert checksum.startswith("sha256:") and dataset["lineage_sha256"] == provenance.lineage_hash(
        dataset["settings_sha256"], {"dataset": "digits"}, [f"source {checksum}"])

    checkout = tmp_path / "checkout"
    shutil.copytree(tiny_run, checkout, symlinks=True)
    (checkout / ".gitignore").write_text("results/\n.snakemake/\n__pycache__/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the tiny project"]):
        subprocess.run(git + args, cwd=checkout, check=True, capture_output=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, check=True, capture_output=True,
                            text=True).stdout.strip()
    env = {"RANDLABELS_FAKE_GPUS": "0,1", "RANDLABELS_GPU_LOCK_DIR": str(tmp_path / "locks")}
    snakemake(checkout, "--cores", "2", "--resources", "gpu=2", "--force", *files.values(), env=env)
    for rule, name in files.items():
        stamp = provenance.read(checkout / name)
        assert (stamp["git_commit"], stamp["git_dirty"], stamp["rule"]) == (commit, "false", rule), name
        for key in ("settings_sha256", "lineage_sha256"):  # the same settings: the same hashes, in any process
            assert stamp[key] == provenance.read(tiny_run / name)[key], (name, key)


def test_until_stops_after_one_stage(tmp_path):
    project = copy_project(tmp_path / "project")
    (project / "config.yaml").write_text((CONFIG_DIR / "tiny.yaml").read_text())
    counts = job_counts(snakemake(project, "-n", "--until", "pretrain").stdout)
    assert counts == {"prepare_dataset": 1, "make_split": 2, "pretrain": 4}


def _edited(path):
    """Append a comment to ``path``; return a function that restores text and mtime."""
    original, stat = path.read_text(), path.stat()
    path.write_text(original + "\n# edited\n")

    def restore():
        path.write_text(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    return restore


@pytest.mark.slow
def test_a_code_edit_reruns_what_depends_on_it(tiny_run):
    restore = _edited(tiny_run / "src" / "randlabels" / "plots" / "misalignment.py")
    try:
        counts = job_counts(snakemake(tiny_run, "-n").stdout)
        assert counts == {"plot": 1, "all": 1}
    finally:
        restore()
    restore = _edited(tiny_run / "src" / "randlabels" / "training" / "engine.py")
    try:
        counts = job_counts(snakemake(tiny_run, "-n").stdout)
        assert counts["pretrain"] == 4 and counts["finetune"] == 8 and counts["statistics"] == 4
        assert "prepare_dataset" not in counts and "make_split" not in counts
    finally:
        restore()


STAGES = (
    "prepare_dataset", "make_split", "pretrain", "statistics", "gaussian_init", "finetune",
    "aggregate_pretraining", "aggregate_statistics", "aggregate_finetuning", "aggregate_eigenfilters", "plot",
)


def _modified_since(path: Path, moment: float) -> bool:
    """Whether ``path`` was written at or after ``moment``; False once it is gone
    (Snakemake deletes a job's log when it reruns the job, between listing and stat)."""
    try:
        return path.stat().st_mtime >= moment
    except FileNotFoundError:
        return False


def _kill_during(project: Path, stage: str, env: dict, rng: random.Random, force: bool = False) -> bool:
    """Start the workflow, ``kill -9`` all of it at a random moment while a job of
    ``stage`` runs; False if the run ended before such a job started."""
    started = time.time()
    command = [str(BIN / "snakemake"), "--cores", "2", "--resources", "gpu=2"]
    if force:  # the stage already ran (before the stage killed last): make it run again
        command += ["--forcerun", stage]
    run = subprocess.Popen(command, cwd=project,
                           env={**os.environ, **NO_CLUSTER, **killable_env(project), **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    logs = project / "results" / "logs" / stage
    while run.poll() is None:
        if logs.is_dir() and any(_modified_since(log, started) for log in logs.rglob("*.log")):
            time.sleep(rng.uniform(0.0, 0.8))  # somewhere inside the job
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
            snakemake(project, "--unlock")
            return True
        time.sleep(0.02)
    assert run.returncode == 0
    return False


def _tables(project: Path) -> dict[str, pd.DataFrame]:
    return {
        path.name: read_table(path).drop(columns="seconds", errors="ignore")
        for path in sorted((project / "results" / "tiny" / "tables").glob("*.tsv"))
    }


@pytest.mark.slow(minutes=2)  # the second-longest: its file starts right after the paper test's
def test_killed_in_every_stage_a_rerun_completes_with_the_same_tables(tiny_run, tmp_path):
    """kill -9 of the whole workflow inside a job of each stage in turn, then a plain rerun."""
    project = copy_project(tmp_path / "project")
    (project / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    env = {"RANDLABELS_FAKE_GPUS": "0,1", "RANDLABELS_GPU_LOCK_DIR": str(tmp_path / "locks")}
    rng = random.Random(20201123)
    for stage in STAGES:
        assert _kill_during(project, stage, env, rng) or _kill_during(project, stage, env, rng, force=True), stage
    # What each killed Snakemake left of its temporary folder is in the test's, not /tmp.
    assert len(list((project.parent / "tmp").glob("snakemake*"))) >= len(STAGES)
    snakemake(project, "--cores", "2", "--resources", "gpu=2", env=env)
    assert not list((project / "results").rglob(".*.tmp-*")), "temporary files left behind"
    got, want = _tables(project), _tables(tiny_run)
    assert got.keys() == want.keys()
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name], obj=name)
    assert job_counts(snakemake(project, "-n").stdout) == {}


@pytest.mark.slow
def test_report_is_written(tiny_run):
    snakemake(tiny_run, "--report", "report.html")
    html = (tiny_run / "report.html").read_text(errors="replace")
    assert len(html) > 50_000
    for name in ("misalignment.png", "learning_curves.png", "transfer_summary.tsv"):
        assert name in html, name
    # The front page: the description, then the summary of the run.
    assert "<h1>Summary</h1>" in html and "misalignment of conv1 at epoch 2, random labels" in html
