"""Config validation: the schema, the cross-key rules, and the defaults."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import yaml

from randlabels.training.engine import TrainConfig
from randlabels.training.job import RESUME_EVERY, RESUME_MIN_SECONDS
from randlabels.workflow import plan
from randlabels.workflow.config import ConfigError, check_config, schema_errors, semantic_errors
from workflow_helpers import ROOT

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
CONFIGS = [ROOT / "config.yaml", *sorted((ROOT / "configs").glob("*.yaml")), *sorted((ROOT / "tests" / "configs").glob("*.yaml"))]


def load(path=ROOT / "config.yaml"):
    return yaml.safe_load(path.read_text())


def problems(config):
    try:
        check_config(config, SCHEMA)
    except ConfigError as err:
        return str(err)
    return ""


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    assert problems(load(path)) == ""


def mutate(change):
    config = load()
    change(config)
    return problems(config)


def test_unknown_key_is_named_with_a_suggestion():
    message = mutate(lambda c: c["experiments"]["digits_cnn"]["finetune"].update(learning_rate=0.1))
    assert "experiments.digits_cnn.finetune.learning_rate" in message
    assert "lr" in message


def test_unknown_top_level_key():
    message = mutate(lambda c: c.update(seed=3))
    assert "seed" in message and "did you mean 'seeds'" in message


def test_wrong_type_names_the_key():
    message = mutate(lambda c: c["experiments"]["digits_cnn"]["pretrain"].update(epochs="many"))
    assert "experiments.digits_cnn.pretrain.epochs" in message and "integer" in message


@pytest.mark.parametrize(
    "path, value",
    [
        (("experiments", "digits_cnn", "pretrain", "lr"), 0),
        (("experiments", "digits_cnn", "pretrain", "momentum"), 1.5),
        (("experiments", "digits_cnn", "finetune", "target_accuracy"), 1.2),
        (("experiments", "digits_cnn", "split", "upstream"), 0),
        (("datasets", "gaussian", "dim"), 0),
    ],
)
def test_out_of_range_values_are_refused(path, value):
    def change(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    message = mutate(change)
    assert ".".join(path) in message


def test_unknown_dataset_source_lists_valid_names():
    message = mutate(lambda c: c["datasets"]["digits"].update(source="mnist"))
    assert "datasets.digits.source" in message
    assert "digits, gaussian, torchvision, folder, arrays" in message


def test_unknown_architecture_lists_valid_names():
    message = mutate(lambda c: c["experiments"]["digits_cnn"]["model"].update(arch="vgg19"))
    assert "cnn2, fc, vgg16, vgg16_bn, resnet18" in message


def test_empty_and_duplicate_grids_are_refused():
    assert "seeds" in mutate(lambda c: c.update(seeds=[]))
    assert "seeds" in mutate(lambda c: c.update(seeds=[1, 1]))
    assert "init_scales" in mutate(lambda c: c["experiments"]["digits_cnn"].update(init_scales=[]))


def test_undefined_dataset_reference_lists_defined_ones():
    message = mutate(lambda c: c["experiments"]["digits_cnn"].update(dataset="cifar10"))
    assert "experiments.digits_cnn.dataset" in message and "digits, gaussian" in message


def test_split_larger_than_the_dataset():
    message = mutate(lambda c: c["experiments"]["digits_cnn"]["split"].update(upstream=1500))
    assert "experiments.digits_cnn.split" in message and "1797" in message


def test_transfer_source_must_be_pretrained():
    message = mutate(lambda c: c["experiments"]["digits_cnn"]["finetune"].update(from_labels="real") or c["experiments"]["digits_cnn"]["pretrain"].update(labels=["random"]))
    assert "experiments.digits_cnn.finetune.from_labels" in message


def test_checkpoints_after_the_last_epoch():
    message = mutate(lambda c: c["experiments"]["digits_cnn"]["pretrain"].update(checkpoints=[0, 500]))
    assert "experiments.digits_cnn.pretrain.checkpoints" in message


def test_image_model_on_vector_data():
    message = mutate(lambda c: c["experiments"]["gaussian_fc"].update(model={"arch": "cnn2"}))
    assert "experiments.gaussian_fc.model.arch" in message


def test_gaussian_needs_exactly_one_spectrum_description():
    message = mutate(lambda c: c["datasets"]["gaussian"].pop("spectrum"))
    assert "datasets.gaussian" in message and "variances" in message


def _schema_default(*path):
    node = yaml.safe_load(SCHEMA.read_text())["$defs"]
    for key in path:
        node = node[key]
    return node["default"]


def test_schema_documents_the_defaults_the_code_uses():
    for key, value in {**plan.TRAINING_DEFAULTS, **plan.TRAINING_OPTIONAL}.items():
        assert _schema_default("training", "properties", key) == value, key
    assert _schema_default("training", "properties", "resume_every") == RESUME_EVERY  # job settings
    assert _schema_default("training", "properties", "resume_min_seconds") == RESUME_MIN_SECONDS
    for key, value in plan.TRAINING_OPTIONAL.items():  # what a run without the key trains with
        assert getattr(TrainConfig(epochs=1), key) == value, key
    finetune = yaml.safe_load(SCHEMA.read_text())["$defs"]["experiment"]["properties"]["finetune"]["properties"]
    for key, value in plan.FINETUNE_DEFAULTS.items():
        assert finetune[key]["default"] == value, key
    experiment = yaml.safe_load(SCHEMA.read_text())["$defs"]["experiment"]["properties"]
    for key, value in plan.SPLIT_DEFAULTS.items():
        assert experiment["split"]["properties"][key]["default"] == value, key
    for key, value in plan.STATS_DEFAULTS.items():
        assert experiment["stats"]["properties"][key]["default"] == value, key
    for key, value in plan.SAMPLE_DEFAULTS.items():
        assert experiment["sample"]["properties"][key]["default"] == value, key
    for key, value in plan.CONSTRUCT_DEFAULTS.items():
        assert experiment["construct"]["properties"][key]["default"] == value, key


def test_settings_fill_defaults_and_always_keep_first_and_last_checkpoint():
    config = load()
    config["experiments"]["digits_cnn"]["pretrain"]["checkpoints"] = [10]
    settings = plan.pretrain_settings(config, "digits_cnn")
    assert settings["checkpoints"] == [0, 10, config["experiments"]["digits_cnn"]["pretrain"]["epochs"]]
    assert settings["weight_decay"] == 0.0 and settings["schedule"] == "constant"
    # Keys added later stay out unless given: results made before them are not rerun.
    assert not set(plan.TRAINING_OPTIONAL) & set(settings)
    config["experiments"]["digits_cnn"]["pretrain"]["clip_grad_norm"] = 1.0
    assert plan.pretrain_settings(config, "digits_cnn")["clip_grad_norm"] == 1.0


def test_scale_labels_round_trip():
    config = load()
    for scale in config["experiments"]["digits_cnn"]["init_scales"]:
        assert plan.scale_value(config, "digits_cnn", plan.scale_label(scale)) == scale
    with pytest.raises(ValueError, match="no init scale"):
        plan.scale_value(config, "digits_cnn", "7")


def test_semantic_rules_are_skipped_only_when_the_schema_fails():
    config = load()
    assert semantic_errors(copy.deepcopy(config)) == []
    assert schema_errors(config, SCHEMA) == []


@pytest.mark.parametrize(
    "spec, shape",
    [
        ({"arch": "cnn2", "filters": 4, "hidden": 8, "pool": 2}, (1, 8, 8)),
        ({"arch": "fc", "widths": [3, 4, 5], "upper_width": 2.0}, (30,)),
        ({"arch": "fc"}, (30,)),
        ({"arch": "vgg16"}, (3, 32, 32)),
        ({"arch": "vgg16_bn", "upper_width": 1.5}, (1, 32, 32)),
        ({"arch": "resnet18"}, (3, 32, 32)),
        ({"arch": "resnet18", "upper_width": 0.5}, (1, 64, 64)),
    ],
    ids=lambda v: "-".join(map(str, v.values() if isinstance(v, dict) else v)),
)
def test_builtin_layer_names_are_those_of_the_built_model(spec, shape):
    from randlabels.models.architectures import builtin_layers
    from randlabels.models.networks import check_model, weight_layers

    assert builtin_layers(spec) == weight_layers(check_model(spec, shape, 10))


def test_the_config_check_of_built_in_models_does_not_import_torch():
    """It runs at every Snakemake start; importing torch there costs about 2 s."""
    code = (
        "import sys, yaml\n"
        "from randlabels.workflow.config import check_config\n"
        "for name in ('config.yaml', 'configs/paper-cifar10.yaml'):\n"
        "    check_config(yaml.safe_load(open(name)), 'workflow/schemas/config.schema.yaml')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_builtin_layer_names_are_checked_without_building_the_model(monkeypatch):
    import randlabels.workflow.config
    import randlabels.models.networks

    def refuse(*args, **kwargs):
        raise AssertionError("the config check built a model")

    monkeypatch.setattr(randlabels.models.networks, "build_model", refuse)
    monkeypatch.setattr(randlabels.models.networks, "check_model", refuse)
    config = load()
    config.pop("targets")
    config["datasets"]["c10"] = {"source": "torchvision", "name": "CIFAR10", "root": "data"}
    entry = config["experiments"]["digits_cnn"]
    entry.update(dataset="c10", model={"arch": "vgg16_bn"}, stats={"layers": ["first", "features.3", "classifier"]})
    entry["finetune"]["variants"] = ["scratch", "first13", "last13", "layerwise13"]
    assert problems(config) == ""
    entry["stats"]["layers"] = ["features.1"]  # a BatchNorm, not a weight layer
    entry["finetune"]["variants"] = ["last14", "covariance14"]
    message = problems(config)
    assert "experiments.digits_cnn.stats.layers: no conv/linear layer 'features.1'" in message
    assert "features.0, features.3, features.7" in message and "features.40, classifier" in message
    assert "variants: last14: variant 'last14' transfers 14 layers, but the model has only 13 non-head layers" in message
    assert "variants: covariance14: constructs 14 layer(s), but the model has 13 below the classifier" in message


def _patterns(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern":
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _patterns(value)


def test_every_schema_pattern_is_anchored_at_the_true_end_of_the_string():
    # jsonschema matches patterns with re.search, where "$" matches before a final
    # newline: "tiny\n" would pass as a name and become a folder.
    found = list(_patterns(yaml.safe_load(SCHEMA.read_text())))
    assert len(found) >= 3
    for pattern in found:
        assert pattern.startswith("^") and pattern.endswith(r"(?![\s\S])") and "$" not in pattern, pattern


def test_integers_are_ints_and_finite_numbers_pass():
    config = load()
    config["experiments"]["digits_cnn"]["pretrain"]["lr"] = 1  # an int is a number
    config["experiments"]["digits_cnn"]["init_scales"] = [1, 0.5]
    assert problems(config) == ""
    config["experiments"]["digits_cnn"]["pretrain"]["epochs"] = True  # a bool is no integer
    assert "experiments.digits_cnn.pretrain.epochs: True is not of type 'integer'" in problems(config)


# ----------------------------------------------------------------- the command line


def test_command_line_values_change_the_default_config_when_no_file_is_given():
    from randlabels.workflow.config import command_line_config

    default = load()
    # Snakemake's config after the profile's replace-workflow-config: --config alone.
    got = command_line_config({"device": "cpu"}, {"device": "cpu"}, default=default)
    assert got == {**default, "device": "cpu"}
    # With --configfile files, Snakemake's config (files and values merged) is kept.
    assert command_line_config({"seeds": [0], "device": "cpu"}, {"device": "cpu"}) == {"seeds": [0], "device": "cpu"}


def test_command_line_values_are_read_as_yaml():
    """Snakemake passes ``false`` and ``[0, 1]`` on as strings; they mean what they
    would mean in a config file. A string stays a string."""
    from randlabels.workflow.config import command_line_config

    overrides = {"tensorboard": "false", "seeds": ["0", "1"], "device": "cuda:0", "x": "[unclosed"}
    for config, default in (({}, load()), ({**load(), **overrides}, None)):
        got = command_line_config(config, overrides, default=default)
        assert got["tensorboard"] is False and got["seeds"] == [0, 1]
        assert got["device"] == "cuda:0" and got["x"] == "[unclosed"
    check_config({**load(), "tensorboard": False, "seeds": [0, 1]}, SCHEMA)


def test_set_changes_nested_values_read_as_yaml():
    from randlabels.workflow.config import command_line_config

    default = load()
    got = command_line_config(
        {}, {"set": "experiments.digits_cnn.pretrain.epochs=3; experiments.digits_cnn.pretrain.checkpoints=[1, 2]; seeds=[0]; experiments.digits_cnn.construct.samples=64"},
        default=default,
    )
    assert got["experiments"]["digits_cnn"]["pretrain"]["epochs"] == 3 and got["seeds"] == [0]
    assert got["experiments"]["digits_cnn"]["construct"] == {"samples": 64}  # a section created
    assert got["experiments"]["digits_cnn"]["pretrain"]["lr"] == default["experiments"]["digits_cnn"]["pretrain"]["lr"]
    assert "set" not in got
    check_config(got, SCHEMA)
    # A list of assignments (a --configfile may hold one too).
    assert command_line_config({"seeds": [1], "set": ["seeds=[4, 5]"]}, {})["seeds"] == [4, 5]


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("seeds.first=3", "seeds is [0, 1, 2], not a section with keys"),
        ("epochs", "expected PATH=VALUE"),
        ("=3", "expected PATH=VALUE"),
        ("seeds=[0", "not valid YAML"),
    ],
)
def test_a_bad_set_names_itself(assignment, message):
    from randlabels.workflow.config import command_line_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        command_line_config({}, {"set": assignment}, default=load())


# ----------------------------------------------------------------- issue 13: target, init


def _finetune(config):
    return config["experiments"]["digits_cnn"]["finetune"]


@pytest.mark.parametrize("target", [0.9, 1, {"from_chance": 0.5}, {"from_chance": 1}])
def test_target_accuracy_absolute_or_from_chance_is_accepted(target):
    assert mutate(lambda c: _finetune(c).update(target_accuracy=target)) == ""


@pytest.mark.parametrize("target", [
    {"from_chance": 0.5, "accuracy": 0.9},  # both forms at once
    {"from_chance": 0},
    {"from_chance": 1.2},
    {"relative_to_chance": 0.5},  # a misspelled key
    {},
    "half",
    0,
])
def test_a_malformed_target_names_both_forms(target):
    message = mutate(lambda c: _finetune(c).update(target_accuracy=target))
    assert "experiments.digits_cnn.finetune.target_accuracy" in message
    assert "from_chance" in message and "accuracy in (0, 1]" in message


def test_the_relative_target_is_no_default_and_keeps_absolute_params():
    # The default (and every absolute config) gives the finetune rule the same settings as before.
    config = load()
    assert plan.target_accuracy(config, "digits_cnn") == _finetune(config).get("target_accuracy", 0.9)
    assert plan.FINETUNE_DEFAULTS["target_accuracy"] == 0.9


@pytest.mark.parametrize("init", ["he", "lecun"])
def test_init_he_and_lecun_are_accepted(init):
    assert mutate(lambda c: c["experiments"]["digits_cnn"]["model"].update(init=init)) == ""
    assert mutate(lambda c: c["experiments"]["gaussian_fc"]["model"].update(init=init)) == ""


@pytest.mark.parametrize("init", ["xavier", "He", "", 1])
def test_other_inits_are_refused_with_the_valid_names(init):
    message = mutate(lambda c: c["experiments"]["digits_cnn"]["model"].update(init=init))
    assert "experiments.digits_cnn.model.init" in message and "he, lecun" in message


def test_an_own_models_init_is_checked_too():
    def own(init):
        def change(config):
            config["experiments"]["digits_cnn"]["model"] = {"arch": "examples.tiny_convnet:build", "init": init}
        return change

    message = mutate(own("glorot"))
    assert "experiments.digits_cnn.model" in message and "he, lecun" in message
    assert "init" not in mutate(own("lecun"))


def test_an_init_scale_experiment_on_batch_norm_is_warned_about():
    from randlabels.workflow.config import config_warnings

    config = load(ROOT / "configs" / "paper-cifar10.yaml")
    warned = config_warnings(config)
    assert any(w.startswith("experiments.vgg16_bn_transfer: init_scales [0.5, 1.0, 2.0] on vgg16_bn has batch norm")
               and "use arch vgg16" in w for w in warned)
    assert any(w.startswith("experiments.resnet18_transfer:") and "a network without batch norm" in w for w in warned)
    assert not any(w.startswith("experiments.vgg16_transfer:") for w in warned)  # plain vgg16: the scale acts
    config["experiments"]["vgg16_transfer"]["model"]["arch"] = "vgg16_bn"
    assert any(w.startswith("experiments.vgg16_transfer: init_scales [0.8, 1.0, 2.0] on vgg16_bn") for w in config_warnings(config))
    config["experiments"]["vgg16_bn_transfer"]["model"]["arch"] = "vgg16"
    config["experiments"]["resnet18_transfer"]["init_scales"] = [1.0]  # one scale: nothing varies
    warned = config_warnings(config)
    assert not any(w.startswith(("experiments.vgg16_bn_transfer:", "experiments.resnet18_transfer:")) for w in warned)
    assert config_warnings(load()) == []  # the default config: cnn2 and fc


def test_the_config_command_prints_warnings_and_still_validates(capsys):
    from randlabels.workflow.config import main

    assert main([str(ROOT / "configs" / "paper-cifar10.yaml")]) == 0
    out = capsys.readouterr()
    assert "warning: experiments.vgg16_bn_transfer: init_scales" in out.err
    assert out.out.rstrip().endswith("paper-cifar10.yaml: valid")
