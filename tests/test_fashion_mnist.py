"""configs/fashion-mnist.yaml end to end on real images, shrunk to test size.

The real files are Debian's dataset-fashion-mnist (`make test` installs it when
missing); they go through the real code path (torchvision source, no network), and
every stage, table, figure and paper target of the config is produced and opened.
Only sizes shrink: the experiments, variants, tasks and targets are the config's own;
the variants of each fine-tuning share one job (pack_variants), which saves process
starts, not arithmetic.
"""

from __future__ import annotations

import h5py
import pytest
import yaml
from PIL import Image

from randlabels.io import read_table
from workflow_helpers import ROOT, copy_project, job_counts, snakemake

CONFIG = ROOT / "configs" / "fashion-mnist.yaml"
EIGENFILTERS = ROOT / "configs" / "fashion-mnist-eigenfilters.yaml"
KERNEL_SIZE = ROOT / "configs" / "fashion-mnist-kernel-size.yaml"
AUGMENTATION = ROOT / "configs" / "fashion-mnist-augmentation.yaml"
TRANSFER_MAP = ROOT / "configs" / "fashion-mnist-transfer-map.yaml"
DEPTH = ROOT / "configs" / "fashion-mnist-depth.yaml"
REAL_LABELS = ROOT / "configs" / "fashion-mnist-real-labels.yaml"


def shrunk(config: dict) -> dict:
    """The config at test size: fewer images, epochs, filters, and the variants of each
    fine-tuning in one job; everything else kept."""
    config["device"] = "cpu"
    config["seeds"] = [0, 1]
    for entry in config["experiments"].values():
        entry["model"]["filters"] = 16  # 2 seeds × 16 filters > 25 dimensions: pooled Σw invertible
        entry["split"].update(upstream=300, downstream=200, test=200)
        entry["pretrain"].update(epochs=3, checkpoints=[0, 1, 3])
        entry["finetune"].update(epochs=2, eval_every=5, pack_variants=True)
    return config


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("fashion") / "project")
    config = shrunk(yaml.safe_load(CONFIG.read_text()))
    (project / "configs" / "fashion-small.yaml").write_text(yaml.safe_dump(config))
    snakemake(project, "--cores", "2", "--configfile", "configs/fashion-small.yaml")
    return project


def _png(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


@pytest.mark.slow
def test_the_config_reads_debians_files_with_no_download():
    config = yaml.safe_load(CONFIG.read_text())
    entry = config["datasets"]["fmnist"]
    assert entry == {
        "source": "torchvision",
        "name": "FashionMNIST",
        "root": "/usr/share/datasets/fashion-mnist",
        "download": False,
    }


def _varied_alone(path, vary, split: dict | None = None, pretrain: dict | None = None) -> tuple[dict, dict]:
    """(the config at ``path``, {experiment: the value ``vary`` pops from it}); with that
    setting popped, each experiment must be fashion-mnist.yaml's fmnist_cnn pre-trained
    on random labels (no fine-tuning), with the same datasets and seeds, and with the
    ``split`` and ``pretrain`` settings given (those all its experiments share) changed."""
    main = yaml.safe_load(CONFIG.read_text())
    config = yaml.safe_load(path.read_text())
    assert config["datasets"] == main["datasets"] and config["seeds"] == main["seeds"]
    base = main["experiments"]["fmnist_cnn"]
    expected = {key: base[key] for key in ("dataset", "model", "init_scales", "stats")}
    expected["split"] = {**base["split"], **(split or {})}
    expected["pretrain"] = {**base["pretrain"], "labels": ["random"], **(pretrain or {})}
    vary(expected)
    values = {}
    for name, entry in config["experiments"].items():
        values[name] = vary(entry)
        assert entry == expected, name
    return config, values


def test_the_eigenfilter_config_varies_the_init_scale_alone(tmp_path):
    """configs/fashion-mnist-eigenfilters.yaml: one experiment per init scale, and its
    target plans exactly their pre-training and statistics."""
    _, scales = _varied_alone(EIGENFILTERS, lambda entry: entry.pop("init_scales"))
    assert scales == {"fmnist_scale1": [1.0], "fmnist_scale0p3": [0.3], "fmnist_scale0p1": [0.1]}
    dry = snakemake(copy_project(tmp_path / "project"), "-n", "fig_eigenfilters", "--configfile", str(EIGENFILTERS))
    counts = job_counts(dry.stdout)
    assert (counts["pretrain"], counts["statistics"], counts["aggregate_eigenfilters"]) == (9, 9, 3)
    assert "finetune" not in counts


def test_the_kernel_size_config_varies_the_kernel_size_alone(tmp_path):
    """configs/fashion-mnist-kernel-size.yaml: one experiment per first-layer kernel
    size, and its target plans exactly their pre-training and statistics."""
    config, kernels = _varied_alone(KERNEL_SIZE, lambda entry: entry["model"].pop("kernel_size"))
    assert kernels == {"fmnist_k3": 3, "fmnist_k5": 5, "fmnist_k7": 7}
    assert config["targets"] == {"q_kernel_size": {"experiments": list(kernels)}}
    dry = snakemake(copy_project(tmp_path / "project"), "-n", "q_kernel_size", "--configfile", str(KERNEL_SIZE))
    counts = job_counts(dry.stdout)
    assert (counts["pretrain"], counts["statistics"], counts["q_kernel_size"]) == (9, 9, 1)
    assert "finetune" not in counts


def test_the_augmentation_config_varies_the_augmentation_alone(tmp_path):
    """configs/fashion-mnist-augmentation.yaml: the same experiment with and without
    crops and flips, on fewer images for longer (so that the augmented runs memorize
    their random labels), and its target plans exactly their pre-training and statistics."""
    config, augment = _varied_alone(
        AUGMENTATION, lambda entry: entry["pretrain"].pop("augment", None), split={"upstream": 500},
        pretrain={"epochs": 600, "checkpoints": [0, 50, 100, 200, 400, 600]})
    assert augment == {"fmnist_small": None, "fmnist_small_augment": {"crop": 3, "flip": True}}
    assert config["targets"] == {"q_augmentation": {"experiments": list(augment)}}
    dry = snakemake(copy_project(tmp_path / "project"), "-n", "q_augmentation", "--configfile", str(AUGMENTATION))
    counts = job_counts(dry.stdout)
    assert (counts["pretrain"], counts["statistics"], counts["q_augmentation"]) == (6, 6, 1)
    assert "finetune" not in counts


def test_the_transfer_map_config_is_fmnist_cnn_over_init_scales_and_classes(tmp_path):
    """configs/fashion-mnist-transfer-map.yaml: fmnist_cnn's network, data, split and
    training settings, pre-trained on random labels at three init scales and fine-tuned
    on fresh random labels of 2 and 10 classes to a target relative to chance; its
    target plans the pre-training and the packed fine-tuning of every scale and seed."""
    main = yaml.safe_load(CONFIG.read_text())
    config = yaml.safe_load(TRANSFER_MAP.read_text())
    assert config["datasets"] == main["datasets"] and config["seeds"] == [0, 1]
    base, entry = main["experiments"]["fmnist_cnn"], config["experiments"]["fmnist_map"]
    assert list(config["experiments"]) == ["fmnist_map"]
    assert {key: entry[key] for key in ("dataset", "model", "split")} == {key: base[key] for key in ("dataset", "model", "split")}
    assert entry["init_scales"] == [0.5, 1.0, 2.0]
    assert entry["pretrain"] == {**base["pretrain"], "labels": ["random"], "checkpoints": [0, 80]}
    kept = {key: base["finetune"][key] for key in ("epochs", "batch_size", "lr", "momentum", "eval_every")}
    assert entry["finetune"] == {**kept, "labels": "random", "classes": [2, 10], "variants": ["scratch", "pretrained"],
                                 "pack_variants": True, "target_accuracy": {"from_chance": 0.2}, "probe_samples": 0}
    assert config["targets"] == {"fig_transfer_map": {"experiments": ["fmnist_map"]}}
    dry = snakemake(copy_project(tmp_path / "project"), "-n", "fig_transfer_map", "--configfile", str(TRANSFER_MAP))
    counts = job_counts(dry.stdout)
    assert (counts["pretrain"], counts["finetune_packed"], counts["unpack_finetune"], counts["fig_transfer_map"]) == (
        3 * 2, 2 * 3 * 2, 2 * 3 * 2 * 2, 1)


def test_the_depth_config_is_fmnist_cnn_with_every_depth_family(tmp_path):
    """configs/fashion-mnist-depth.yaml: fmnist_cnn's network, data, split and training
    settings, pre-trained on random labels and fine-tuned on fresh random labels from
    the variants of the three depth targets, all packed in one job per seed."""
    main = yaml.safe_load(CONFIG.read_text())
    config = yaml.safe_load(DEPTH.read_text())
    assert config["datasets"] == main["datasets"] and config["seeds"] == [0, 1]
    base, entry = main["experiments"]["fmnist_cnn"], config["experiments"]["fmnist_depth"]
    assert list(config["experiments"]) == ["fmnist_depth"]
    assert {key: entry[key] for key in ("dataset", "model", "split", "init_scales")} == {
        key: base[key] for key in ("dataset", "model", "split", "init_scales")}
    assert entry["pretrain"] == {**base["pretrain"], "labels": ["random"], "checkpoints": [0, 80]}
    kept = {key: base["finetune"][key] for key in ("epochs", "batch_size", "lr", "momentum", "eval_every", "target_accuracy")}
    variants = ["scratch", "pretrained", "first1", "last1", "layerwise1", "layerwise2", "covariance1", "covariance2"]
    assert entry["finetune"] == {**kept, "labels": "random", "variants": variants, "pack_variants": True, "probe_samples": 0}
    names = ["fig_layerwise", "q_last_layers", "q_covariance_init"]
    assert config["targets"] == {name: {"experiments": ["fmnist_depth"]} for name in names}
    dry = snakemake(copy_project(tmp_path / "project"), "-n", *names, "--configfile", str(DEPTH))
    counts = job_counts(dry.stdout)
    assert (counts["pretrain"], counts["construct_init"], counts["finetune_packed"], counts["unpack_finetune"]) == (
        2, 4 * 2, 2, 8 * 2)
    assert all(counts[name] == 1 for name in names)


def test_the_real_labels_config_is_fmnist_cnn_evaluated_every_five_steps(tmp_path):
    """configs/fashion-mnist-real-labels.yaml: fmnist_cnn's network, data, split and
    training settings, pre-trained on random labels and fine-tuned on the real labels
    from fmnist_cnn's variants (packed), evaluated every 5 steps over 5 epochs to a
    target relative to chance."""
    main = yaml.safe_load(CONFIG.read_text())
    config = yaml.safe_load(REAL_LABELS.read_text())
    assert config["datasets"] == main["datasets"] and config["seeds"] == main["seeds"]
    base, entry = main["experiments"]["fmnist_cnn"], config["experiments"]["fmnist_real"]
    assert list(config["experiments"]) == ["fmnist_real"]
    assert {key: entry[key] for key in ("dataset", "model", "split", "init_scales", "sample")} == {
        key: base[key] for key in ("dataset", "model", "split", "init_scales", "sample")}
    assert entry["pretrain"] == {**base["pretrain"], "labels": ["random"], "checkpoints": [0, 80]}
    kept = {key: base["finetune"][key] for key in ("batch_size", "lr", "momentum", "variants")}
    assert entry["finetune"] == {**kept, "labels": "real", "pack_variants": True, "epochs": 5, "eval_every": 5,
                                 "target_accuracy": {"from_chance": 0.7}, "probe_samples": 0}
    names = ["fig_transfer", "fig_gaussian_init"]
    assert config["targets"] == {name: {"experiments": ["fmnist_real"]} for name in names}
    dry = snakemake(copy_project(tmp_path / "project"), "-n", *names, "--configfile", str(REAL_LABELS))
    counts = job_counts(dry.stdout)
    assert (counts["pretrain"], counts["gaussian_init"], counts["finetune_packed"], counts["unpack_finetune"]) == (
        3, 3, 3, 4 * 3)
    assert all(counts[name] == 1 for name in names)


@pytest.mark.slow
def test_every_stage_on_real_images(fashion_run):
    results = fashion_run / "results"
    with h5py.File(results / "data" / "fmnist.h5") as f:
        assert f["images"].shape == (70000, 28, 28, 1)
        assert "/usr/share/datasets/fashion-mnist" in f.attrs["source"]
        assert int(f["is_test"][()].sum()) == 10000
    with h5py.File(results / "fmnist_cnn" / "splits" / "seed0.h5") as f:
        test = f["test"][()]
    assert (test >= 60000).all()  # the test set comes from the official test images

    metrics = read_table(results / "fmnist_cnn" / "tables" / "pretrain_metrics.tsv")
    assert set(metrics["labels"]) == {"random", "real"} and set(metrics["epoch"]) == {0, 1, 2, 3}
    assert metrics["collapsed"].dtype == bool  # every run judged: memorized, or at chance
    real = metrics.query("labels == 'real' and epoch == 3")["test_acc"]
    assert (real > 0.3).all(), real  # three short epochs of real labels already beat chance (0.1)

    misalignment = read_table(results / "fmnist_cnn" / "tables" / "misalignment.tsv")
    conv = misalignment.query("layer == 'conv1'")
    assert set(conv["basis"]) == {"data", "random"} and set(conv["epoch"]) == {0, 1, 3}
    flags = metrics.drop_duplicates(["labels", "seed"]).set_index(["labels", "seed"])["collapsed"]
    for run in conv.itertuples():  # the statistics tables carry each run's flag
        assert run.collapsed == flags[(run.labels, run.seed)]
    with h5py.File(results / "fmnist_cnn" / "stats" / "random" / "scale1" / "seed1.h5") as f:
        assert f["epoch_0003"]["conv1"]["cov_x"].shape == (25, 25)  # 5×5 patches of one channel

    summary = read_table(results / "fmnist_cnn" / "tables" / "transfer_summary.tsv")
    assert {"scratch", "pretrained", "pretrained_norescale", "gaussian"} <= set(summary["variant"])
    curves = read_table(results / "fmnist_cnn" / "tables" / "finetune_curves.tsv")
    assert set(curves["task"]) == {"real", "random10"}  # real labels, fresh random labels over 10 classes

    for figure in ("misalignment", "transfer_function", "eigenfilters", "learning_curves", "transfer_summary"):
        width, height = _png(results / "fmnist_cnn" / "figures" / f"{figure}.png")
        assert width > 200 and height > 100, figure
    for target in ("fig_transfer", "fig_misalignment", "fig_eigenfilters", "fig_transfer_function",
                   "fig_gaussian_init", "fig_specialization"):
        assert _png(results / "paper" / f"{target}.png")[0] > 200, target
        assert len(read_table(results / "paper" / f"{target}.tsv")) > 0, target


@pytest.mark.slow
def test_eigenfilters_are_pooled_over_seeds(fashion_run):
    """Two seeds × 16 filters: the pooled Σw has full rank in 25 dimensions, where one
    seed's 16 (centred) filters give rank 15 at most, so its 16th eigenvalue would be 0.
    The table keeps the top 16 eigen-directions."""
    table = read_table(fashion_run / "results" / "paper" / "fig_eigenfilters.tsv")
    assert sorted(table["rank"]) == list(range(1, 17))
    assert (table["eigval_w"] > 1e-6).all() and table["cos_best_match"].between(0, 1).all()
