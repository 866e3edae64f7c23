"""The paper's experiments as named targets: planning, config checks, dry runs of the
paper config and small runs of one target. Every target end to end: the shrunk paper
config of tests/test_paper_config.py."""

from __future__ import annotations

import copy
import time

import pytest
import yaml

from randlabels.workflow import plan, targets
from randlabels.workflow.config import check_config
from workflow_helpers import ROOT, SCHEMA, copy_project, job_counts, load_config, refused, snakemake

PAPER = ROOT / "configs" / "paper-cifar10.yaml"
TINY = ROOT / "tests" / "configs" / "targets.yaml"


load = load_config


# ----------------------------------------------------------------- planning


def test_tasks_are_real_and_one_random_task_per_class_count():
    config = load(TINY)
    assert plan.finetune_tasks(config, "tiny") == ["real", "random10"]
    assert plan.finetune_tasks(config, "tiny_map") == ["random2", "random10"]
    assert plan.task_classes("random2") == 2 and plan.task_classes("real") is None
    files = plan.finetune_files(config, "tiny_map")
    assert len(files) == 2 * 2 * 2 * 1  # tasks × variants × scales × the experiment's own seed
    assert "results/tiny_map/finetune/random2/pretrained/scale0.5/seed0.tsv" in files


def test_task_keys_are_not_training_settings():
    # Adding a class count adds runs; it must not change (and so rerun) the existing ones.
    config = load(TINY)
    before = plan.finetune_settings(config, "tiny_map")
    config["experiments"]["tiny_map"]["finetune"]["classes"] = [2, 5, 10]
    assert plan.finetune_settings(config, "tiny_map") == before
    assert "labels" not in before and "classes" not in before


def test_the_pretrained_label_kinds_are_not_training_settings():
    config = load(TINY)
    before = plan.pretrain_settings(config, "tiny_map")
    assert "labels" not in before and "pack_seeds" not in before
    config["experiments"]["tiny_map"]["pretrain"]["labels"] = ["random", "real"]
    assert plan.pretrain_settings(config, "tiny_map") == before


def test_variants_source_and_target_are_not_training_settings():
    """Adding a variant, choosing another pre-training to transfer from or another
    target accuracy changes no fine-tuning run's training settings: each has its own
    owner (the sources' paths carry from_labels; the summary reads the target)."""
    config = load(TINY)
    finetune = config["experiments"]["tiny_map"]["finetune"]
    before = plan.finetune_settings(config, "tiny_map")
    assert {"variants", "from_labels", "target_accuracy"}.isdisjoint(before)
    finetune.update(variants=[*finetune["variants"], "first1"], from_labels="real",
                    target_accuracy={"from_chance": 0.5})
    assert plan.finetune_settings(config, "tiny_map") == before
    assert plan.finetune_variants(config, "tiny_map")[-1] == "first1"
    assert plan.from_labels(config, "tiny_map") == "real"
    assert plan.target_accuracy(config, "tiny_map") == {"from_chance": 0.5}
    del finetune["from_labels"], finetune["target_accuracy"]
    assert (plan.from_labels(config, "tiny_map"), plan.target_accuracy(config, "tiny_map")) == ("random", 0.9)


def test_an_experiment_may_have_its_own_seeds():
    config = load(PAPER)
    assert plan.seeds(config, "eigenfilters_cifar10") == list(range(64))
    assert plan.seeds(config, "vgg16_transfer") == [0, 1, 2, 3, 4]
    assert len(plan.eigenfilter_sources(config, "eigenfilters_cifar10")) == 64
    assert len(plan.seed_groups(config, "eigenfilters_cifar10")) == 4  # packs of 16


def test_target_inputs_are_the_tables_of_its_experiments():
    config = load(TINY)
    inputs = targets.table_inputs(config, "fig_specialization")
    assert inputs["finetune_curves"] == ["results/tiny/tables/finetune_curves.tsv", "results/tiny_depth/tables/finetune_curves.tsv"]
    assert set(inputs) == {"finetune_curves", "transfer_summary", "activations"}
    assert targets.table_inputs(config, "fig_eigenfilters") == {
        "eigenfilters": [plan.path("table", exp=exp, table="eigenfilters") for exp in targets.experiments(config, "fig_eigenfilters")]}
    assert len(plan.eigenfilter_sources(config, "tiny")) == 2  # the seeds pooled into that table
    info = targets.experiment_info(config, "q_kernel_size")
    assert info["tiny_k5"]["kernel_size"] == 5 and info["tiny_aug"]["augment"] == "crop 1, flip True"


def test_an_unconfigured_target_says_how_to_configure_it():
    config = load(ROOT / "config.yaml")
    with pytest.raises(ValueError, match="targets.fig_layerwise.experiments"):
        targets.target_files(config, "fig_layerwise")


# ----------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["targets"]["fig_layerwise"].update(experiments=["nope"]), "targets.fig_layerwise.experiments: 'nope' is not an experiment"),
        (lambda c: c["targets"].update(fig_layerwise={"experiments": ["tiny"]}), "'tiny' needs a finetune variant layerwiseK"),
        (lambda c: c["targets"].update(fig_transfer_map={"experiments": ["tiny_k5"]}), "'tiny_k5' needs a finetune section"),
        (lambda c: c["targets"].update(q_kernel_size={"experiments": ["tiny_k5", "gauss"]}), "needs arch cnn2"),
        (lambda c: c["targets"].update(fig_gaussian_init={"experiments": ["tiny_map"]}), "needs finetune variant 'gaussian'"),
        (lambda c: c["targets"].update(fig_specialization={"experiments": ["tiny_map"]}), "probe_samples"),
        (lambda c: c["targets"].update(fig_figure={"experiments": ["tiny"]}), "targets"),
        (lambda c: c["experiments"]["tiny"]["finetune"].update(variants=["scratch", "deep2"]), "variants"),
        (lambda c: c["experiments"]["tiny"]["finetune"].update(labels="real", classes=[2]), "finetune.classes: only random downstream labels"),
        (lambda c: c["experiments"]["tiny"]["finetune"].update(classes=[1]), "classes"),
        (lambda c: c["experiments"]["tiny"]["pretrain"].update(augment={"crop": -1}), "augment"),
        (lambda c: c["experiments"]["tiny"]["model"].update(upper_width=0.5), "upper_width"),
    ],
)
def test_targets_and_new_settings_are_checked_before_any_job(change, message):
    config = load(TINY)
    config["datasets"]["gauss"] = {"source": "gaussian", "dim": 5, "n_samples": 300, "spectrum": {"kind": "linear", "low": 0.1, "high": 1.0}}
    config["experiments"]["gauss"] = {
        "dataset": "gauss", "model": {"arch": "fc", "widths": [8]}, "init_scales": [1.0],
        "split": {"upstream": 100, "downstream": 100}, "pretrain": {"labels": ["random"], "epochs": 1},
    }
    check_config(copy.deepcopy(config), SCHEMA)  # the unchanged config is valid
    change(config)
    assert message in refused(config)


def test_reset_head_false_needs_every_task_to_keep_the_class_count():
    config = load(TINY)
    config["experiments"]["tiny_map"]["finetune"]["reset_head"] = False
    assert "finetune.reset_head" in refused(config)


# ----------------------------------------------------------------- dry runs


def test_every_target_dry_runs_on_the_paper_config(tmp_path):
    project = copy_project(tmp_path / "project")
    start = time.perf_counter()
    output = snakemake(project, *targets.TARGETS, "-n", "--configfile", "configs/paper-cifar10.yaml").stdout
    seconds = time.perf_counter() - start
    counts = job_counts(output)
    assert counts["paper_target"] == len(targets.TARGETS)
    for name in targets.TARGETS:
        assert counts[name] == 1, name
        assert f"results/paper/{name}.png" in output
    # The depth variants and the transfer map's tasks are all planned.
    assert "results/vgg16_transfer/finetune/real/layerwise4/scale2/seed4.tsv" in output
    assert "results/vgg16_map/finetune/random100/pretrained/scale4/seed2.tsv" in output
    assert "results/vgg16_transfer/init/covariance2/scale0.8/seed0.pt" in output
    assert counts["pretrain_packed"] >= 4  # the eigen-filter seeds in packs of 16
    print(f"DAG of {sum(counts.values())} jobs in {seconds:.1f} s (including start-up)")


def test_the_paper_config_runs_on_resnet18_and_cifar100(tmp_path):
    project = copy_project(tmp_path / "project")
    config = load(PAPER)
    config["datasets"]["cifar100"] = {"source": "torchvision", "name": "CIFAR100", "root": "data/cifar100"}
    for entry in config["experiments"].values():
        if entry["dataset"] == "cifar10":
            entry["dataset"] = "cifar100"
        if entry["model"]["arch"] == "vgg16_bn":
            entry["model"]["arch"] = "resnet18"
    (project / "configs" / "resnet-cifar100.yaml").write_text(yaml.safe_dump(config))
    output = snakemake(project, *targets.TARGETS, "-n", "--configfile", "configs/resnet-cifar100.yaml").stdout
    assert "results/data/cifar100.h5" in output and "results/data/cifar10.h5" not in output
    assert job_counts(output)["paper_target"] == len(targets.TARGETS)


def test_a_named_target_runs_only_what_it_needs(tmp_path):
    project = tiny_project(tmp_path)
    counts = job_counts(snakemake(project, "q_kernel_size", "-n", "--configfile", "configs/targets-tiny.yaml").stdout)
    assert counts["paper_target"] == 1 and "finetune" not in counts and "construct_init" not in counts
    assert counts["pretrain"] == 4  # tiny_aug and tiny_k5, 2 seeds, random labels


# ----------------------------------------------------------------- end to end


def tiny_project(tmp_path):
    """A project copy with the tiny targets config at configs/targets-tiny.yaml."""
    project = copy_project(tmp_path / "project")
    (project / "configs" / "targets-tiny.yaml").write_text(TINY.read_text())
    return project


def test_a_misspelled_target_gets_the_nearest_names(tmp_path):
    """`snakemake fig_missalignment`: the nearest target and the list, before any job
    (Snakemake alone says only "No rule to produce fig_missalignment")."""
    from workflow_helpers import copy_project, snakemake

    project = copy_project(tmp_path / "project")
    result = snakemake(project, "-n", "fig_missalignment", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "'fig_missalignment' is no target of this workflow: did you mean fig_misalignment?" in output
    assert "The named targets are all, fig_eigenfilters," in output
    result = snakemake(project, "-n", "xyzzy", check=False)
    assert result.returncode != 0 and "'xyzzy' is no target of this workflow: The named targets are all" in result.stdout + result.stderr
    # An existing top-level file (one the rule's pattern matches) is no target to refuse.
    assert "Nothing to be done" in snakemake(project, "-n", "Snakefile").stdout


def test_refuse_unknown_target_leaves_existing_files_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").write_text("")
    assert targets.refuse_unknown_target("notes", ["all"]) == []
    with pytest.raises(ValueError, match=r"did you mean fig_transfer or fig_transfer_map\?"):
        targets.refuse_unknown_target("fig_transfr", ["all", "fig_transfer", "fig_transfer_map"])


# ----------------------------------------------------------------- issue 13: targets relative to chance


def test_the_paper_maps_targets_are_relative_to_chance():
    for path, fraction in ((PAPER, 0.2), (ROOT / "configs" / "paper-cifar10-1gpu.yaml", 0.1)):
        config = load(path)
        assert plan.target_accuracy(config, "vgg16_map") == {"from_chance": fraction}


def test_a_batch_norm_init_scale_experiment_is_named_as_such_in_figures():
    """The figure says that init_scale acts only through the head of a batch-norm
    network; the tidy table keeps the experiment's own name."""
    config = load(PAPER)
    info = targets.experiment_info(config, "fig_transfer")
    assert info["vgg16_bn_transfer"]["scale_invariant"] and info["resnet18_transfer"]["scale_invariant"]
    assert not info["vgg16_transfer"]["scale_invariant"]  # plain VGG16
    import pandas as pd

    summary = pd.DataFrame({"experiment": ["vgg16_bn_transfer", "vgg16_transfer"], "variant": ["pretrained"] * 2,
                            "task": ["real"] * 2})
    table, figure_table = targets.combine("fig_transfer", {"transfer_summary": summary, "finetune_curves": summary}, info)
    assert list(table["experiment"]) == ["vgg16_bn_transfer", "vgg16_transfer"]
    assert list(figure_table["experiment"]) == [
        "vgg16_bn_transfer (batch norm: init scale acts through the head only)", "vgg16_transfer"]


def test_the_kernel_size_table_has_the_pooled_rows_with_their_kernel_and_dimension():
    """q_kernel_size reads the pooled misalignment too: per-seed rows (``pooled`` false,
    of the weights) and pooled rows (of the weights and of their change), each with its
    experiment's kernel size and the layer's input dimension."""
    import pandas as pd

    info = targets.experiment_info(load_config(TINY), "q_kernel_size")
    run = {"labels": "random", "init_scale": 1.0, "layer": "conv1", "basis": "data"}
    per_seed = pd.DataFrame([{**run, "experiment": exp, "seed": seed, "epoch": 2, "misalignment": 1.0}
                             for exp in ("tiny_k5", "tiny_aug") for seed in (0, 1)])
    pooled = pd.DataFrame([{**run, "experiment": exp, "epoch": 2, "of": of, "misalignment": 2.0, "seeds": 2,
                            "filters": 16} for exp in ("tiny_k5", "tiny_aug") for of in ("weights", "change")])
    dims = {"tiny_k5": 25, "tiny_aug": 9}  # f(σ) has one row per input dimension
    transfer_function = pd.DataFrame([{"experiment": exp, "layer": "conv1", "index": i}
                                      for exp, d in dims.items() for i in range(d)])
    table, figure_table = targets.combine(
        "q_kernel_size", {"misalignment": per_seed, "misalignment_pooled": pooled,
                          "transfer_function": transfer_function}, info)
    assert targets.TARGETS["q_kernel_size"].tables == ("misalignment", "transfer_function", "misalignment_pooled")
    assert len(table) == 8 and table["pooled"].sum() == 4
    assert set(table.loc[~table["pooled"], "of"]) == {"weights"}
    assert sorted(table.loc[table["pooled"], "of"]) == ["change", "change", "weights", "weights"]
    assert dict(zip(table["experiment"], table["kernel_size"])) == {"tiny_k5": 5, "tiny_aug": 3}
    assert dict(zip(table["experiment"], table["dim"])) == dims
    assert list(table.loc[table["pooled"], "seed"].isna()) == [True] * 4
