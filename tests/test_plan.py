"""What the workflow plans for a config: targets, sources and canonical settings."""

from __future__ import annotations

import yaml

from randlabels.plots import FIGURES
from randlabels.workflow import plan
from workflow_helpers import ROOT


def load():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_gaussian_init_uses_one_seed_or_all_pooled():
    config = load()
    single = plan.sample_sources(config, "digits_cnn", "0.5", 1)
    assert single == ["results/digits_cnn/pretrain/random/scale0.5/seed1/checkpoints.pt"]
    config["experiments"]["digits_cnn"]["sample"]["pool_seeds"] = True
    pooled = plan.sample_sources(config, "digits_cnn", "0.5", 1)
    assert pooled == [f"results/digits_cnn/pretrain/random/scale0.5/seed{s}/checkpoints.pt" for s in config["seeds"]]


def test_settings_do_not_depend_on_key_order():
    config = load()
    reordered = yaml.safe_load(yaml.safe_dump(config, sort_keys=True))
    for getter in (plan.pretrain_settings, plan.finetune_settings, plan.split_settings, plan.model_settings):
        assert repr(getter(config, "digits_cnn")) == repr(getter(reordered, "digits_cnn"))


def test_targets_follow_the_experiment_kind():
    config = load()
    # A conv net with fine-tuning gets every figure; Gaussian data on an MLP without
    # fine-tuning neither the eigen-filters nor the downstream figures.
    assert plan.figures(config, "digits_cnn") == list(FIGURES)
    assert plan.figures(config, "gaussian_fc") == ["misalignment", "misalignment_change", "transfer_function"]
    assert "eigenfilters" in plan.tables(config, "digits_cnn") and "eigenfilters" not in plan.tables(config, "gaussian_fc")
    wanted = {plan.path("figure", exp=exp, figure=name)
              for exp in ("digits_cnn", "gaussian_fc") for name in plan.figures(config, exp)}
    assert wanted <= set(plan.all_targets(config))


def test_resources_merge_config_over_defaults():
    config = load()
    config["resources"] = {"training": {"gpu": 1, "mem_mb": 9000}}
    training = plan.resources(config, "training")
    assert training["gpu"] == 1 and training["mem_mb"] == 9000
    assert training["runtime"] == plan.RESOURCE_DEFAULTS["training"]["runtime"]
