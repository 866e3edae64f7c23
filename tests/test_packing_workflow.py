"""Seed packing in the workflow: `pretrain.pack_seeds` groups the seeds of one
configuration into one pre-training job (rule pretrain_packed, then unpack_pretrain).

Packed and separate runs must write the same per-seed files: metrics and weights
equal up to floating-point reduction order (rtol 1e-4, atol 1e-6, as in
tests/test_packed.py); everything that is no rounding (epochs, steps, which
checkpoints, divergence flags, metadata) exactly.
"""

from __future__ import annotations

import copy
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from randlabels.errors import TrainingDiverged
from randlabels.io import read_table
from randlabels.models.networks import build_model, initialize
from randlabels.training.checkpoints import read_checkpoints
from randlabels.training.engine import DeviceData, TrainConfig
from randlabels.training.packed import PackedTrainer
from randlabels.training.packed_job import read_bundle_run, run_packed_training, save_bundle
from randlabels.workflow import plan
from randlabels.workflow.config import ConfigError, check_config
from workflow_helpers import ROOT, copy_project, job_counts, snakemake

RTOL, ATOL = 1e-4, 1e-6
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SEEDS = [0, 1, 2]


def tiny_config(pack_seeds: int | None) -> dict:
    """tests/configs/tiny.yaml with three seeds and (optionally) pack_seeds set."""
    config = yaml.safe_load(TINY.read_text())
    config["seeds"] = list(SEEDS)
    if pack_seeds is not None:
        config["experiments"]["tiny"]["pretrain"]["pack_seeds"] = pack_seeds
    return config


def project_with(path: Path, config: dict) -> Path:
    project = copy_project(path)
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    return project


def pretrain_targets(config: dict) -> list[str]:
    runs = plan.pretrain_runs(config, "tiny")
    return [plan.path(kind, **run) for run in runs for kind in ("checkpoints", "pretrain_metrics")]


# ---------------------------------------------------------------- planning


def test_seeds_are_cut_into_consecutive_groups():
    config = tiny_config(2)
    assert plan.pack_seeds(config, "tiny") == 2
    assert plan.seed_groups(config, "tiny") == [[0, 1], [2]]
    assert plan.group_seeds(config, "tiny", "2", "2") == [2]
    with pytest.raises(ValueError, match="no group of seeds 1-2"):
        plan.group_seeds(config, "tiny", 1, 2)
    assert plan.packed_path(config, "tiny", "random", "0.5", "1") == (
        "results/tiny/pretrain/random/scale0.5/packed/seeds0-1.pt"
    )
    config["seeds"] = [5, 3, 9, 1, 7]
    config["experiments"]["tiny"]["pretrain"]["pack_seeds"] = 3
    assert plan.seed_groups(config, "tiny") == [[5, 3, 9], [1, 7]]
    config["experiments"]["tiny"]["pretrain"]["pack_seeds"] = 10
    assert plan.seed_groups(config, "tiny") == [[5, 3, 9, 1, 7]]


def test_experiment_patterns_split_packed_from_unpacked():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert plan.packed_experiments(config) == []
    assert plan.experiments_pattern(config, packed=False) == "|".join(config["experiments"])
    assert plan.experiments_pattern(config, packed=True) == "(?!)"  # matches nothing
    config["experiments"]["digits_cnn"]["pretrain"]["pack_seeds"] = 3
    assert plan.experiments_pattern(config, packed=True) == "digits_cnn"
    assert plan.experiments_pattern(config, packed=False) == "gaussian_fc"


def test_pack_seeds_is_not_a_training_setting():
    """The plain pretrain rule's params are the same with pack_seeds absent or 1, so
    existing runs stay up to date."""
    absent, one, two = tiny_config(None), tiny_config(1), tiny_config(2)
    settings = plan.pretrain_settings(absent, "tiny")
    assert "pack_seeds" not in settings
    assert repr(plan.pretrain_settings(one, "tiny")) == repr(settings)
    assert repr(plan.pretrain_settings(two, "tiny")) == repr(settings)
    assert plan.pack_seeds(absent, "tiny") == 1


def test_schema_documents_pack_seeds_and_refuses_zero():
    pretrain = yaml.safe_load(SCHEMA.read_text())["$defs"]["experiment"]["properties"]["pretrain"]["properties"]
    for key, value in plan.PRETRAIN_DEFAULTS.items():
        assert pretrain[key]["default"] == value, key
        assert pretrain[key]["description"], key
    check_config(tiny_config(2), SCHEMA)
    with pytest.raises(ConfigError, match="experiments.tiny.pretrain.pack_seeds"):
        check_config(tiny_config(0), SCHEMA)


# ---------------------------------------------------------------- the packed job

FC = {"arch": "fc", "widths": [8]}
CONFIG = TrainConfig(epochs=3, batch_size=16, lr=0.05, momentum=0.9)


def _trainer(scales=(1.0, 1.0, 1.0), seeds=(1, 2, 3)) -> PackedTrainer:
    rng = np.random.default_rng(0)
    datas = [DeviceData(rng.standard_normal((40, 5)).astype(np.float32), rng.integers(0, 4, 40),
                        np.zeros(5), np.ones(5)) for _ in scales]
    models = [initialize(build_model(FC, (5,), 4), scale, 10 + r) for r, scale in enumerate(scales)]
    return PackedTrainer(models, datas, CONFIG, list(seeds))


def _run(trainer, tmp_path, seeds=(7, 8, 9), **options):
    import logging

    return run_packed_training(
        trainer, seeds=list(seeds), resume_path=tmp_path / "resume.pt", run_settings={"x": 1}, inputs=[],
        where="experiments.toy.pretrain", log=logging.getLogger("test"), checkpoint_epochs=[0, 3], **options,
    )


def test_a_diverged_seed_is_flagged_or_stops_the_job(tmp_path):
    scales = (1.0, 1e30, 1.0)  # the middle replica's logits overflow at once
    results, store = _run(_trainer(scales), tmp_path, on_divergence="continue")
    assert [r.diverged for r in results] == [False, True, False]
    assert sorted(results[0].checkpoints) == [0, 3]
    store.clear()
    with pytest.raises(TrainingDiverged, match="run of seed 8 diverged at epoch"):
        _run(_trainer(scales), tmp_path, on_divergence="stop")
    assert not (tmp_path / "resume.pt").exists()


def test_a_signal_saves_the_group_and_a_rerun_resumes_it(tmp_path):
    uninterrupted, finished = _run(_trainer(), tmp_path / "a")
    finished.clear()  # gives back the run's lock (its open file) as a job does

    def signal_after_epoch_1(epoch):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGUSR1)

    with pytest.raises(SystemExit) as info:
        _run(_trainer(), tmp_path / "b", on_epoch_end=signal_after_epoch_1)
    assert info.value.code == 75 and (tmp_path / "b" / "resume.pt").exists()
    resumed, store = _run(_trainer(), tmp_path / "b")
    for a, b in zip(uninterrupted, resumed):  # on the CPU, bit for bit
        pd.testing.assert_frame_equal(a.metrics.drop(columns="seconds"), b.metrics.drop(columns="seconds"))
        for epoch in a.checkpoints:
            for key in a.checkpoints[epoch]:
                assert torch.equal(a.checkpoints[epoch][key], b.checkpoints[epoch][key])
    store.clear()
    assert not (tmp_path / "b" / "resume.pt").exists()


def test_bundle_round_trip(tmp_path):
    metrics = pd.DataFrame({"epoch": [0, 1], "loss": [2.3, float("nan")], "test_acc": [np.nan, np.nan],
                            "diverged": [False, True], "seed": [4, 4]})
    checkpoints = dict(spec=FC, input_shape=(5,), num_classes=4, init_scale=1.0, seed=4, labels="random",
                       states={0: {"w": torch.ones(2)}}, diverged=True)
    save_bundle(tmp_path / "b.pt", {4: {"checkpoints": checkpoints, "metrics": metrics}})
    got_checkpoints, got_metrics = read_bundle_run(tmp_path / "b.pt", 4)
    pd.testing.assert_frame_equal(got_metrics, metrics)
    assert got_checkpoints["diverged"] is True and torch.equal(got_checkpoints["states"][0]["w"], torch.ones(2))
    with pytest.raises(ValueError, match="not seed 5"):
        read_bundle_run(tmp_path / "b.pt", 5)


# ---------------------------------------------------------------- the workflow


def test_dry_run_packs_groups_of_seeds(tmp_path):
    project = project_with(tmp_path / "project", tiny_config(2))
    counts = job_counts(snakemake(project, "-n").stdout)
    assert "pretrain" not in counts
    assert counts["pretrain_packed"] == 2 * 2  # label kinds × groups {0, 1}, {2}
    assert counts["unpack_pretrain"] == 2 * 3  # label kinds × seeds
    assert counts["statistics"] == 2 * 3
    output = snakemake(project, "-n", "-p", *pretrain_targets(tiny_config(2))).stdout
    for group in ("seeds0-1.pt", "seeds2-2.pt"):
        assert f"results/tiny/pretrain/random/scale0.5/packed/{group}" in output


def test_dry_run_with_pack_seeds_1_is_unchanged(tmp_path):
    project = project_with(tmp_path / "project", tiny_config(1))
    counts = job_counts(snakemake(project, "-n").stdout)
    assert counts["pretrain"] == 2 * 3
    assert "pretrain_packed" not in counts and "unpack_pretrain" not in counts


def test_only_the_packed_experiment_is_packed(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["experiments"]["digits_cnn"]["pretrain"]["pack_seeds"] = 2
    project = project_with(tmp_path / "project", config)
    counts = job_counts(snakemake(project, "-n").stdout)
    seeds, digits, gaussian = len(config["seeds"]), config["experiments"]["digits_cnn"], config["experiments"]["gaussian_fc"]
    runs = len(digits["pretrain"]["labels"]) * len(digits["init_scales"])
    assert counts["pretrain_packed"] == runs * len(plan.seed_groups(config, "digits_cnn"))
    assert counts["unpack_pretrain"] == runs * seeds
    assert counts["pretrain"] == len(gaussian["pretrain"]["labels"]) * len(gaussian["init_scales"]) * seeds


def _same_metrics(a: Path, b: Path):
    want = read_table(a).drop(columns="seconds")
    got = read_table(b).drop(columns="seconds")
    assert list(got.columns) == list(want.columns)
    for column in want.columns:
        if column in ("loss", "train_acc", "test_acc"):
            np.testing.assert_allclose(got[column].to_numpy(float), want[column].to_numpy(float),
                                       rtol=RTOL, atol=ATOL, err_msg=f"{b}: {column}")
        else:
            assert got[column].tolist() == want[column].tolist(), f"{b}: {column}"


def _same_checkpoints(a: Path, b: Path):
    want, got = read_checkpoints(a), read_checkpoints(b)
    same = lambda data: {k: v for k, v in data.items() if k not in ("states", "provenance")}  # noqa: E731
    assert same(got) == same(want)
    # Each file names the job that wrote it: the pretrain job, or the unpack job.
    assert (want["provenance"]["rule"], got["provenance"]["rule"]) == ("pretrain", "unpack_pretrain")
    assert want["provenance"]["git_commit"] == got["provenance"]["git_commit"]
    assert sorted(got["states"]) == sorted(want["states"])
    for epoch, state in want["states"].items():
        assert list(got["states"][epoch]) == list(state)
        for key, value in state.items():
            np.testing.assert_allclose(got["states"][epoch][key].numpy(), value.numpy(), rtol=RTOL, atol=ATOL,
                                       err_msg=f"{b}: epoch {epoch} {key}")


def _run_counts(project: Path, *args: str) -> dict[str, int]:
    result = snakemake(project, *args)
    return job_counts(result.stdout + result.stderr)


@pytest.mark.slow
def test_packed_pretraining_equals_separate_runs(tmp_path):
    separate = project_with(tmp_path / "separate", tiny_config(None))
    packed = project_with(tmp_path / "packed", tiny_config(2))
    targets = pretrain_targets(tiny_config(None))
    assert targets == pretrain_targets(tiny_config(2))
    counts = _run_counts(separate, *targets, "--cores", "2")
    assert counts["pretrain"] == 2 * 3 and "pretrain_packed" not in counts
    counts = _run_counts(packed, *targets, "--cores", "2")
    assert counts["pretrain_packed"] == 2 * 2 and counts["unpack_pretrain"] == 2 * 3 and "pretrain" not in counts

    for target in targets:
        if target.endswith(".tsv"):
            _same_metrics(separate / target, packed / target)
        else:
            _same_checkpoints(separate / target, packed / target)
    # the seeds really differ (own split, labels, init and order)
    a, b = (read_checkpoints(packed / plan.path("checkpoints", exp="tiny", labels="random", scale="0.5", seed=s))
            for s in (0, 1))
    assert not torch.equal(a["states"][2]["conv1.weight"], b["states"][2]["conv1.weight"])
    logs = list((packed / "results" / "logs" / "pretrain_packed").rglob("*.log"))
    assert len(logs) == 4 and all("epoch 2/2" in log.read_text() for log in logs)
    assert not list((packed / "results" / "_resume").rglob("*.pt")), "resume state left behind"
    # The bundles held every snapshot a second time: gone once their seeds are unpacked.
    assert not list((packed / "results").rglob("packed/seeds*.pt")), "a bundle left behind"

    # Both are up to date; setting pack_seeds: 1 explicitly invalidates nothing.
    assert job_counts(snakemake(packed, "-n", *targets).stdout) == {}
    (separate / "one.yaml").write_text(yaml.safe_dump(tiny_config(1)))
    assert job_counts(snakemake(separate, "-n", *targets, "--configfile", "one.yaml").stdout) == {}
    # A lost seed's file is made again by its group's training alone (seeds 2-2 of random labels).
    (packed / plan.path("checkpoints", exp="tiny", labels="random", scale="0.5", seed=2)).unlink()
    output = snakemake(packed, "-n", *targets).stdout
    assert job_counts(output) == {"pretrain_packed": 1, "unpack_pretrain": 1}, output[-2000:]
    assert "results/tiny/pretrain/random/scale0.5/packed/seeds2-2.pt" in output


@pytest.mark.slow
def test_divergence_in_a_packed_group_stops_or_is_flagged_per_seed(tmp_path):
    """on_divergence: stop fails the group's job naming the seed; continue flags each
    seed's own checkpoint set and metrics, as a separate run does."""
    config = tiny_config(2)
    config["seeds"] = [0, 1]
    config["experiments"]["tiny"]["pretrain"].update(labels=["random"], lr=1e4)
    targets = pretrain_targets(config)
    project = project_with(tmp_path / "project", {**config, "on_divergence": "stop"})
    result = snakemake(project, *targets, "--cores", "1", check=False)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "experiments.tiny.pretrain: run of seed 0 diverged at epoch" in text and "on_divergence: continue" in text
    assert not (project / plan.path("pretrain_packed", exp="tiny", labels="random", scale="0.5", first=0, last=1)).exists()
    assert not any((project / target).exists() for target in targets)

    (project / "continue.yaml").write_text(yaml.safe_dump({**config, "on_divergence": "continue"}))
    snakemake(project, *targets, "--cores", "1", "--configfile", "continue.yaml")
    for seed in config["seeds"]:
        run = {"exp": "tiny", "labels": "random", "scale": "0.5", "seed": seed}
        checkpoints = read_checkpoints(project / plan.path("checkpoints", **run))
        assert checkpoints["diverged"] is True and checkpoints["seed"] == seed
        assert sorted(checkpoints["states"]) == [0]  # the only finite checkpoint
        metrics = read_table(project / plan.path("pretrain_metrics", **run))
        assert metrics["diverged"].iloc[-1] and not np.isfinite(metrics["loss"].iloc[-1])
        assert (metrics["seed"] == seed).all()
    log = (project / "results/logs/pretrain_packed/tiny/random/scale0.5/seeds0-1.log").read_text()
    assert "run of seed 1 diverged" in log and "recorded as diverged" in log


# ---------------------------------------------------------------- variant packing (finetune.pack_variants)

VARIANTS = ["scratch", "pretrained", "pretrained_norescale", "gaussian"]


def test_pack_variants_is_not_a_training_setting_and_splits_the_rules():
    """The plain finetune rule's params are the same with pack_variants absent or false
    (existing runs stay up to date); the packed experiments are the other rule's."""
    absent = tiny_config(None)
    off, on = copy.deepcopy(absent), copy.deepcopy(absent)
    off["experiments"]["tiny"]["finetune"]["pack_variants"] = False
    on["experiments"]["tiny"]["finetune"]["pack_variants"] = True
    settings = plan.finetune_settings(absent, "tiny")
    assert "pack_variants" not in settings
    assert repr(plan.finetune_settings(off, "tiny")) == repr(settings) == repr(plan.finetune_settings(on, "tiny"))
    assert (plan.pack_variants(absent, "tiny"), plan.pack_variants(on, "tiny")) == (False, True)
    assert (plan.finetune_pattern(absent, packed=False), plan.finetune_pattern(absent, packed=True)) == ("tiny", "(?!)")
    assert (plan.finetune_pattern(on, packed=False), plan.finetune_pattern(on, packed=True)) == ("(?!)", "tiny")
    check_config(on, SCHEMA)
    on["experiments"]["tiny"]["finetune"]["pack_variants"] = 2
    with pytest.raises(ConfigError, match="experiments.tiny.finetune.pack_variants"):
        check_config(on, SCHEMA)


def test_dry_run_packs_the_variants_of_each_task_scale_and_seed(tmp_path):
    config = tiny_config(None)
    config["experiments"]["tiny"]["finetune"]["pack_variants"] = True
    project = project_with(tmp_path / "project", config)
    counts = job_counts(snakemake(project, "-n").stdout)
    assert "finetune" not in counts
    assert counts["finetune_packed"] == len(SEEDS)  # one task, one scale
    assert counts["unpack_finetune"] == len(SEEDS) * len(VARIANTS)
    output = snakemake(project, "-n", "-p", plan.path("finetune", exp="tiny", task="random10", variant="gaussian",
                                                       scale="0.5", seed=1)).stdout
    assert "results/tiny/finetune/random10/packed/scale0.5/seed1.tsv" in output


def _curve(variant: str, *, diverged: bool = False, **identity) -> pd.DataFrame:
    row = {"experiment": "tiny", "task": "random10", "variant": variant, "init_scale": 0.5, "seed": 1, **identity}
    return pd.DataFrame([{"step": step, "loss": np.nan if diverged and step else 1.0 / (step + 1),
                          "diverged": diverged and step > 0, **row} for step in (0, 3)])


def test_a_packed_table_is_unpacked_per_variant_and_one_of_another_run_refused(tmp_path):
    from randlabels.errors import InputFileError
    from randlabels.io import write_table
    from randlabels.training.unpack import variant_curve

    path = tmp_path / "packed.tsv"
    write_table(pd.concat([_curve("scratch"), _curve("gaussian", diverged=True)], ignore_index=True), path)
    run = {"experiment": "tiny", "task": "random10", "scale": "0.5", "seed": 1}
    gaussian = variant_curve(path, "gaussian", **run)
    assert list(gaussian["variant"]) == ["gaussian"] * 2 and list(gaussian["diverged"]) == [False, True]
    pd.testing.assert_frame_equal(variant_curve(path, "scratch", **run), _curve("scratch"), check_like=True)
    with pytest.raises(InputFileError, match="holds variants gaussian, scratch, not pretrained"):
        variant_curve(path, "pretrained", **run)
    for changed, message in [({"seed": 2}, "seed 1, not 2"), ({"scale": "1"}, "init scale 0.5, not 1"),
                             ({"task": "real"}, "task random10, not real"), ({"experiment": "x"}, "experiment tiny, not x")]:
        with pytest.raises(InputFileError, match=message):
            variant_curve(path, "scratch", **{**run, **changed})
    write_table(pd.DataFrame({"epoch": [0], "loss": [1.0]}), path)
    with pytest.raises(InputFileError, match="not a fine-tuning table: no column"):
        variant_curve(path, "scratch", **run)


def test_a_diverged_variant_is_flagged_or_stops_the_job_naming_it(tmp_path):
    import logging

    from randlabels.training.job import run_training

    def trainer():
        return _trainer(scales=(1.0, 1e30, 1.0), seeds=(5, 5, 5))  # the middle replica overflows at once

    options = dict(resume_path=tmp_path / "resume.pt", run_settings={"x": 1}, inputs=[],
                   where="experiments.toy.finetune", log=logging.getLogger("test"),
                   replicas=[f"variant {v}" for v in ("scratch", "gaussian", "first2")], pack_setting="pack_variants")
    results, store = run_training(trainer(), on_divergence="continue", **options)
    assert [r.diverged for r in results] == [False, True, False]
    store.clear()
    with pytest.raises(TrainingDiverged, match=r"finetune: run of variant gaussian diverged at epoch 1 \(loss nan\)"):
        run_training(trainer(), on_divergence="stop", **options)
