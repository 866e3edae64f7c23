"""Cost of the named targets: images trained on, and hours at a benchmarked rate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from randlabels.workflow import cost
from workflow_helpers import ROOT

TINY = ROOT / "tests" / "configs" / "targets.yaml"


def test_images_count_every_run_of_an_experiment():
    config = yaml.safe_load(TINY.read_text())
    # tiny: 2 label kinds × 1 scale × 2 seeds × 2 epochs × 200 upstream images;
    # fine-tuning: 2 tasks × 4 variants × 1 scale × 2 seeds × 2 epochs × 200 images.
    assert cost.experiment_images(config, "tiny") == {"pretrain": 1600, "finetune": 6400}
    # tiny_k5 has no fine-tuning.
    assert cost.experiment_images(config, "tiny_k5") == {"pretrain": 2 * 2 * 200, "finetune": 0}


def test_hours_follow_the_benchmarked_rate_and_the_total_counts_experiments_once(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    bench = tmp_path / "cuda.json"
    bench.write_text(json.dumps({
        "machine": {"device": "cuda"},
        "benchmarks": {"engine": [{"model": "cnn2", "engine_images_per_s": 1.0, "best_engine_images_per_s": 2.0}]},
    }))
    rates, device = cost.rates(bench)
    assert rates == {"cnn2": 2.0} and device == "cuda"
    table = cost.cost_table(config, rates).set_index("target")
    assert table.loc["fig_transfer", "images"] == 8000
    assert table.loc["fig_transfer", "hours"] == pytest.approx(8000 / 2.0 / 3600)
    every = {exp: sum(cost.experiment_images(config, exp).values()) for exp in config["experiments"]}
    assert table.loc["all targets", "images"] == sum(every.values())
    assert table.loc["all targets", "images_cnn2"] == sum(every.values())


def test_disk_counts_a_snapshot_per_checkpoint_of_every_run_and_each_built_initialization():
    config = yaml.safe_load(TINY.read_text())
    # cnn2 on 8×8 digits, 16 filters 3×3 ('same' padding, no pool), hidden 32, 10 classes:
    # conv1 16·9 + 16, fc1 (16·8·8)·32 + 32, classifier 32·10 + 10 float32 values.
    snapshot = 4 * (16 * 9 + 16 + 16 * 8 * 8 * 32 + 32 + 32 * 10 + 10)
    assert cost.snapshot_bytes(config, "tiny") == snapshot
    # 2 label kinds × 1 scale × 2 seeds, 3 checkpoints each; the gaussian variant's
    # initialization for 1 scale × 2 seeds (scratch and the pretrained ones read the
    # checkpoint set; the two fine-tuning tasks share the initialization).
    assert cost.init_files(config, "tiny") == 2
    assert cost.experiment_disk(config, "tiny") == snapshot * (4 * 3 + 2)
    # tiny_map: 2 scales × 1 seed, checkpoints 0 and the last, no built variant.
    assert cost.experiment_disk(config, "tiny_map") == snapshot * 2 * 2
    table = cost.cost_table(config).set_index("target")
    every = sum(cost.experiment_disk(config, exp) for exp in config["experiments"])
    assert table.loc["all targets", "disk_gb"] == pytest.approx(every / 1e9)


def test_disk_is_unknown_where_only_the_prepared_data_tell_the_input_shape():
    config = yaml.safe_load(TINY.read_text())
    config["datasets"]["digits"] = {"source": "arrays", "path": "images.npz", "num_classes": 10}
    assert cost.snapshot_bytes(config, "tiny") is None
    assert np.isnan(cost.experiment_disk(config, "tiny"))
    assert np.isnan(cost.cost_table(config).set_index("target").loc["all targets", "disk_gb"])
    assert cost.experiment_disk(config, "tiny", shape=(1, 8, 8)) > 0  # told the shape


def test_the_command_prints_a_row_per_target(capsys):
    assert cost.main([str(ROOT / "configs" / "paper-cifar10.yaml")]) == 0
    out = capsys.readouterr().out
    for name in ("fig_transfer", "q_kernel_size", "all targets", "disk_gb"):
        assert name in out
    with pytest.raises(SystemExit):
        cost.main([str(ROOT / "tests" / "configs" / "tiny.yaml")])  # no targets section
