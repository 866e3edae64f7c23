"""configs/paper-cifar10.yaml end to end on the CPU, shrunk: every experiment, every
named target (this is the end-to-end test of the targets), the same architectures (VGG16, VGG16 with batch norm, ResNet18, the
2-layer CNN, the fully connected nets), every kind of fine-tuning variant, seeds
packed into one job, and the variants of each fine-tuning packed into one.

Until a GPU run exists this is the evidence that the paper config works. The shrunk
config is derived from the file itself (:func:`shrink`), so a change there is tested
here: only sizes, epochs, seeds and grids shrink; CIFAR-10 (which cannot be downloaded
here) becomes CIFAR-shaped noise of the same shape and class count.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml

from randlabels.analysis.memorization import collapsed_keys
from randlabels.io import read_table
from randlabels.models.architectures import scale_invariance
from randlabels.models.networks import build_model, initialize
from randlabels.workflow import cost, plan, targets
from randlabels.workflow.config import check_config, config_warnings
from workflow_helpers import ROOT, SCHEMA, copy_project, job_counts, load_config, snakemake, target_outputs

PAPER = ROOT / "configs" / "paper-cifar10.yaml"
# Sizes of the shrunk splits: of images (VGG16 and ResNet18 jobs are most of this
# test's time), and of the Gaussian vectors, whose 30-dimensional Σx wants more.
SPLIT = {"upstream": 8, "downstream": 8, "test": 8}
GAUSSIAN_SPLIT = {"upstream": 64, "downstream": 64, "test": 32}
GAUSSIAN_SAMPLES = sum(GAUSSIAN_SPLIT.values())
BATCH, GAUSSIAN_BATCH = 4, 32  # two steps an epoch
EPOCHS = 2


def _first(values: list, count: int = 1) -> list:
    """The first value, or the first and last (a grid that still has two ends)."""
    return values[:1] if count == 1 or len(values) == 1 else [values[0], values[-1]]


def _depth_ends(variants: list[str]) -> list[str]:
    """The variants with, of each depth family (first4, layerwise2, ...), only its
    smallest and largest depth: the same code path at the ends of its range."""
    depths: dict[str, list[int]] = {}
    for variant in variants:
        family = variant.rstrip("0123456789")
        if family != variant:
            depths.setdefault(family, []).append(int(variant[len(family):]))
    ends = {f"{family}{k}" for family, ks in depths.items() for k in (min(ks), max(ks))}
    return [v for v in variants if v.rstrip("0123456789") == v or v in ends]


def shrink(config: dict, images_path: str) -> dict:
    """A copy of the paper config at the smallest sizes that still run each code path:
    one seed (two, packed into one job, where an experiment pools its own seeds; every
    other experiment trains its seed unpacked), 2 epochs up- and 1 downstream of two
    steps each, 8 images up- and downstream and 8 to test (Gaussian vectors: 64 and
    32), one init scale (two where the grid is the result), the first and last
    downstream class counts, and of each depth family of variants the smallest and
    largest depth; architectures, layers, labels and targets are kept. Each training
    job gets one CPU thread, so two share the two cores, and the variants of each
    fine-tuning share one job (pack_variants: a VGG16 job's start is a third of its
    time here)."""
    small = copy.deepcopy(config)
    small["device"] = "cpu"
    small["seeds"] = [0]
    small["resources"] = {kind: {**spec, "cpus_per_task": 1} for kind, spec in small.get("resources", {}).items()}
    small["datasets"]["cifar10"] = {"source": "arrays", "path": images_path, "num_classes": 10}
    for dataset in small["datasets"].values():
        if dataset["source"] == "gaussian":
            dataset["n_samples"] = GAUSSIAN_SAMPLES
    for name, exp in small["experiments"].items():
        grid = 2 if "finetune" in exp and len(exp["finetune"].get("classes", [])) > 1 else 1
        exp["init_scales"] = _first(exp["init_scales"], grid)
        pooled = "seeds" in exp and "pack_seeds" in exp["pretrain"]  # the eigen-filters
        if "seeds" in exp:
            exp["seeds"] = [0, 1] if pooled else [0]
        gaussian = small["datasets"][exp["dataset"]]["source"] == "gaussian"
        sizes, batch = (GAUSSIAN_SPLIT, GAUSSIAN_BATCH) if gaussian else (SPLIT, BATCH)
        for key, size in sizes.items():
            if exp["split"].get(key) != 0:  # 0: the experiment does not fine-tune
                exp["split"][key] = size
        pretrain = exp["pretrain"]
        pretrain.update(epochs=EPOCHS, checkpoints=list(range(EPOCHS + 1)), batch_size=batch)
        if "pack_seeds" in pretrain:  # packing runs where it packs two seeds
            pretrain["pack_seeds"] = 2 if pooled else 1
        if "construct" in exp:
            exp["construct"]["samples"] = SPLIT["upstream"]
        if "stats" in exp:
            exp["stats"]["batch_size"] = 2 * batch
        finetune = exp.get("finetune")
        if finetune:
            finetune.update(epochs=1, batch_size=batch, eval_every=1, variants=_depth_ends(finetune["variants"]),
                            pack_variants=True)
            if finetune.get("probe_samples"):
                finetune["probe_samples"] = batch
            if "classes" in finetune:
                finetune["classes"] = _first(finetune["classes"], 2)
    return small


def _noise_cifar(path) -> None:
    """CIFAR-10's shape: 32×32×3 uint8 images, 10 classes, an official test part."""
    rng = np.random.default_rng(0)
    n, n_test = 200, 64
    np.savez(path, images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, n), is_test=np.arange(n) >= n - n_test)


def test_the_shrunk_config_keeps_every_experiment_target_and_architecture():
    paper = load_config(PAPER)
    small = shrink(paper, "cifar.npz")
    check_config(copy.deepcopy(small), SCHEMA)
    assert list(small["experiments"]) == list(paper["experiments"])
    assert small["targets"] == paper["targets"]
    for name, exp in paper["experiments"].items():
        mini = small["experiments"][name]
        assert mini["model"] == exp["model"], name
        assert mini["pretrain"]["labels"] == exp["pretrain"]["labels"], name
        if "finetune" in exp:
            families = {v.rstrip("0123456789") for v in exp["finetune"]["variants"]}
            assert {v.rstrip("0123456789") for v in mini["finetune"]["variants"]} == families, name
            assert mini["finetune"]["labels"] == exp["finetune"]["labels"], name
    archs = {exp["model"]["arch"] for exp in small["experiments"].values()}
    assert {"vgg16", "resnet18", "cnn2", "fc"} <= archs
    assert len(small["experiments"]["vgg16_map"]["init_scales"]) == 2
    assert small["experiments"]["vgg16_map"]["finetune"]["classes"] == [2, 100]
    eigen = small["experiments"]["eigenfilters_cifar10"]
    assert eigen["seeds"] == [0, 1] and eigen["pretrain"]["pack_seeds"] == 2
    assert _depth_ends(["scratch", "first1", "first4", "first8", "layerwise1", "layerwise2"]) == [
        "scratch", "first1", "first8", "layerwise1", "layerwise2"]


@pytest.mark.parametrize("name, ablations", [
    ("paper-cifar10.yaml", {"vgg16_bn_transfer", "resnet18_transfer"}),
    ("paper-cifar10-1gpu.yaml", set()),
])
def test_init_scale_experiments_are_plain_vgg16_and_batch_norm_is_a_named_ablation(name, ablations):
    """Where init scale is the variable, the network must not divide it out; the
    batch-norm experiments the config check warns about are exactly the ablations."""
    config = load_config(ROOT / "configs" / name)
    warned = {line.split(":")[0].removeprefix("experiments.") for line in config_warnings(config)}
    assert warned == ablations
    for target in ("fig_gaussian_init", "fig_layerwise", "fig_specialization", "fig_transfer_map", "q_last_layers"):
        for exp in config["targets"][target]["experiments"]:
            spec = config["experiments"][exp]["model"]
            assert spec["arch"] == "vgg16" and scale_invariance(spec) is None, (target, exp)
    for exp in config["targets"]["fig_transfer"]["experiments"]:
        assert exp in ablations or config["experiments"][exp]["model"]["arch"] == "vgg16", exp
    # Every other init-scale experiment's network computes another function at each
    # scale: its output at initialization changes (plain VGG16: by (s'/s)^16).
    for exp, entry in config["experiments"].items():
        scales = entry["init_scales"]
        if len(scales) < 2 or exp in ablations:
            continue
        dataset = config["datasets"][entry["dataset"]]
        shape = (dataset["dim"],) if dataset["source"] == "gaussian" else (3, 32, 32)  # CIFAR-10's images
        inputs = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            outputs = [initialize(build_model(entry["model"], shape, 10), s, seed=0)(inputs) for s in scales]
        norms = [float(out.norm()) for out in outputs]
        for smaller, larger in zip(norms, norms[1:]):
            assert larger > 2 * smaller, (exp, scales, norms)


@pytest.mark.slow(minutes=9)  # the longest test: tests/conftest.py starts its file first
def test_the_paper_config_runs_end_to_end_shrunk(tmp_path):
    project = copy_project(tmp_path / "project")
    _noise_cifar(project / "cifar.npz")
    small = shrink(load_config(PAPER), "cifar.npz")
    (project / "configs" / "paper-shrunk.yaml").write_text(yaml.safe_dump(small, sort_keys=False))
    # A guard against a hang, not a speed claim: 3-5 minutes alone on 2 idle cores,
    # about 7 beside the other worker of `make test`, more when anything else runs too.
    snakemake(project, *targets.TARGETS, "--cores", "2", "--configfile", "configs/paper-shrunk.yaml", timeout=2700)
    summary = (project / "results" / "SUMMARY.md").read_text()
    assert all(f"## {name}" in summary for name in small["experiments"]), summary[:2000]
    tables = target_outputs(project, targets.TARGETS)

    transfer = tables["fig_transfer"]
    assert set(transfer["experiment"].astype(str)) == set(small["targets"]["fig_transfer"]["experiments"])
    assert set(transfer["task"]) == {"real", "random10"}
    assert set(transfer["variant"]) == {"scratch", "pretrained", "pretrained_norescale"}
    assert {"scratch", "gaussian"} <= set(tables["fig_gaussian_init"]["variant"])

    layerwise = tables["fig_layerwise"]
    assert {"layerwise", "covariance", "scratch"} <= set(layerwise["family"])
    depths = {float(v[len("layerwise"):]) for v in small["experiments"]["vgg16_transfer"]["finetune"]["variants"]
              if v.startswith("layerwise")}
    assert set(layerwise.loc[layerwise["family"] == "layerwise", "depth"]) == depths and len(depths) == 2
    last = tables["q_last_layers"]
    assert {"first", "last"} <= set(last["family"]) and "layerwise" not in set(last["family"])
    assert {"covariance", "scratch"} <= set(tables["q_covariance_init"]["family"])

    transfer_map = tables["fig_transfer_map"]
    assert set(transfer_map["classes"]) == {2, 100} and len(set(transfer_map["init_scale"])) == 2
    # Scratch against itself: a speed-up of 1 wherever it reaches the target after step
    # 0; at step 0 it is 0/0, undefined.
    scratch = transfer_map[transfer_map["variant"] == "scratch"]
    later = scratch["steps_to_target"] > 0
    assert np.allclose(scratch.loc[later, "speedup"], 1.0)
    assert scratch.loc[scratch["steps_to_target"] == 0, "speedup"].isna().all()

    special = tables["fig_specialization"]
    assert set(special["experiment"]) == {"vgg16_transfer", "vgg16_wide"}
    assert set(special["phase"]) == {"upstream", "downstream"}
    assert set(special["statistic"]) == {"frac_active", "frac_dead", "mean_activation"}
    assert np.isfinite(special["value"]).all()
    assert special.loc[special["statistic"] != "mean_activation", "value"].between(0, 1).all()

    assert dict(tables["q_kernel_size"].groupby("kernel_size")["dim"].first()) == {3: 27, 5: 75, 7: 147}
    assert set(tables["q_augmentation"]["augment"]) == {"none", "crop 4, flip True"}
    misalignment = tables["fig_misalignment"]
    assert set(misalignment["labels"]) == {"random", "real"} and set(misalignment["basis"]) == {"data", "random"}
    tf = tables["fig_transfer_function"]
    assert {"gaussian_fc", "cnn2_cifar10", "e1_d10_w2048", "e1_d30_w2048", "e1_d30_w256_n2000"} <= set(
        tf["experiment"].astype(str))
    assert (tf["f"] >= 0).all() and set(tf["epoch"]) == set(range(EPOCHS + 1))

    eigen = tables["fig_eigenfilters"]
    assert list(eigen["rank"]) == list(range(1, 17))  # 2 seeds × 256 filters in 75 dimensions: the top 16 kept
    assert eigen["cos_best_match"].between(0, 1 + 1e-9).all()
    assert (eigen["cos_best_match"] >= eigen["cos_same_rank"] - 1e-12).all()
    assert eigen["cos_best_match_change"].between(0, 1 + 1e-9).all() and (eigen["eigval_change"] > 0).all()
    assert eigen["cos_best_match_chance"].between(0, 1).all()
    # The pooled table names exactly the seeds its pre-training metrics flag collapsed
    # (in this run none: an empty cell), and pools every seed.
    tables_of = lambda name: read_table(project / plan.path("table", exp="eigenfilters_cifar10", table=name))  # noqa: E731
    flagged = sorted(seed for _, labels, _, seed in collapsed_keys(tables_of("pretrain_metrics")) if labels == "random")
    pooled = tables_of("eigenfilters")
    named = pooled["collapsed"].iloc[0]
    assert (named if isinstance(named, str) else "") == "; ".join(f"seed {seed}" for seed in flagged)
    assert pooled["left_out"].isna().all() and pooled["reason"].isna().all() and (pooled["seeds"] == 2).all()

    # The cost tool's disk estimate is what the run keeps, to 1 % (a file's own fields:
    # kilobytes), and the packed seeds' bundle is gone once they are unpacked.
    for exp in small["experiments"]:
        results = project / "results" / exp
        weights = [*results.glob("pretrain/*/*/*/checkpoints.pt"), *results.glob("init/*/*/*.pt")]
        estimate = cost.experiment_disk(small, exp, shape=plan.input_shape(small, exp) or (3, 32, 32))  # CIFAR's
        assert sum(p.stat().st_size for p in weights) == pytest.approx(estimate, rel=0.01), exp
    assert not list((project / "results").rglob("packed/seeds*.pt"))

    rerun = snakemake(project, *targets.TARGETS, "-n", "--configfile", "configs/paper-shrunk.yaml").stdout
    assert job_counts(rerun) == {}
