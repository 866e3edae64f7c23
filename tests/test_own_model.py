"""Your own model (``model: {arch: "package.module:function", ...}``): the factory, its
initialization, statistics, Gaussian approximation, partial transfer and layer-wise
construction at library level, the config check, the rule scripts, and every way a
model can be refused (README, "Your own model"). Factories: examples/tiny_convnet.py
(the README's example) and tests/own_models.py (one small case each)."""

from __future__ import annotations

import logging
import math
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from randlabels.analysis.measure import measure_checkpoints
from randlabels.errors import InputFileError, ModelError
from randlabels.inits.construct import construct_layers, constructible_layers
from randlabels.io import read_table
from randlabels.training.engine import DeviceData, TrainConfig, Trainer
from randlabels.workflow import plan
from randlabels.workflow.config import ConfigError, check_config
from randlabels.models.networks import (
    build_model,
    check_model,
    head_prefix,
    initialize,
    is_factory,
    load_factory,
    model_options,
    resolve_layer,
    uncovered_parameters,
    weight_layers,
)
from randlabels.analysis.probes import _layer_samples
from randlabels.analysis.stats import weight_vectors
from randlabels.inits.pretrained import clone_state, fresh_model, layer_groups, load_into, partial_state
from randlabels.inits.sampling import fit_gaussian, sample_gaussian
from randlabels.inits.variants import transferred_layers
from randlabels.training.checkpoints import buildable_spec, read_checkpoints, save_checkpoints
from workflow_helpers import ROOT, copy_project, snakemake

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SCRIPTS = ROOT / "workflow" / "scripts"
EXAMPLE = "examples.tiny_convnet:build"
SPEC = {"arch": EXAMPLE, "filters": 12, "hidden": 16}
SHAPE = (1, 8, 8)
LAYERS = ["features.conv1", "features.conv2", "head.fc", "head.classifier"]


@pytest.fixture(autouse=True)
def importable(monkeypatch):
    """examples/ importable from the project root (tests/ is on sys.path already); sys.path
    is restored after each test, whatever a test appends to it."""
    monkeypatch.syspath_prepend(str(ROOT))


def own(name: str, **options) -> dict:
    return {"arch": f"own_models:{name}", **options}


# --------------------------------------------------------------------------- the factory


def test_factory_path_pattern():
    for good in (EXAMPLE, "a:b", "pkg.sub.mod:Factory_1"):
        assert is_factory(good)
    for bad in ("cnn2", "a:b\n", "a..b:c", "a:", ":b", "a:b.c", "1a:b", " a:b", "a:b:c", None, 3):
        assert not is_factory(bad), bad


def test_example_builds_with_its_layers_by_module_path():
    model = build_model(SPEC, SHAPE, 10)
    assert weight_layers(model) == LAYERS
    assert head_prefix(model) == "head.classifier"
    assert resolve_layer(model, "first") == "features.conv1"
    assert resolve_layer(model, "head.fc") == "head.fc"
    assert model.features.conv1.out_channels == 12 and model.head.fc.out_features == 16
    assert model(torch.zeros(3, *SHAPE)).shape == (3, 10)
    assert model_options(SPEC) == SPEC
    assert uncovered_parameters(model) == []


def test_he_times_init_scale_for_an_own_model():
    wide = {"arch": EXAMPLE, "filters": 32, "hidden": 64}
    one = clone_state(fresh_model(wide, SHAPE, 10, 1.0, seed=3))
    half = clone_state(fresh_model(wide, SHAPE, 10, 0.5, seed=3))
    other = clone_state(fresh_model(wide, SHAPE, 10, 1.0, seed=4))
    for layer in LAYERS:
        w = one[f"{layer}.weight"]
        assert torch.equal(half[f"{layer}.weight"], 0.5 * w), layer  # same directions, scaled
        assert not torch.equal(other[f"{layer}.weight"], w), layer
        assert torch.all(one[f"{layer}.bias"] == 0), layer
    # head.fc: fan_in = 64·4·4 = 1024, 65 536 weights (relative SE of the std ≈ 0.3 %)
    fc = one["head.fc.weight"].double()
    assert fc.std().item() == pytest.approx(math.sqrt(2.0 / 1024), rel=0.02)
    conv = one["features.conv2.weight"].double()  # fan_in = 32·3·3 = 288, 18 432 weights
    assert conv.std().item() == pytest.approx(math.sqrt(2.0 / 288), rel=0.03)


def test_parameters_outside_the_he_rule_are_seeded_per_run():
    spec = own("layernorm_net")
    model = build_model(spec, SHAPE, 10)
    assert uncovered_parameters(model) == ["scale"]
    torch.manual_seed(0)
    expected_next = torch.rand(3)
    torch.manual_seed(0)
    a = clone_state(fresh_model(spec, SHAPE, 10, 1.0, seed=5))
    assert torch.equal(torch.rand(3), expected_next)  # the global generator is left alone
    b = clone_state(fresh_model(spec, SHAPE, 10, 1.0, seed=5))
    c = clone_state(fresh_model(spec, SHAPE, 10, 1.0, seed=6))
    assert torch.equal(a["scale"], b["scale"]) and not torch.equal(a["scale"], c["scale"])
    # the LayerNorm is reset like a batch norm
    assert torch.all(a["norm.weight"] == 1) and torch.all(a["norm.bias"] == 0)


# --------------------------------------------------------------------------- through the library


@pytest.fixture(scope="module")
def pretrained():
    """The example pre-trained for two epochs on random labels of random 8×8 images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(96, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=96)
    data = DeviceData(images, labels, [0.5], [0.25], "cpu")
    model = fresh_model(SPEC, data.input_shape, 10, 0.5, seed=1)
    init = clone_state(model)
    result = Trainer(model, data, TrainConfig(epochs=2, batch_size=32, lr=0.05), seed=2).fit(checkpoint_epochs=[0, 2])
    assert not result.diverged and len(result.metrics) == 3
    return data, result.checkpoints, init


def _batches(data):
    return lambda: (inputs for inputs, _ in data.batches(48))


def test_statistics_of_the_first_layer_and_a_layer_by_module_path(pretrained):
    data, states, init = pretrained
    assert torch.equal(states[0]["features.conv1.weight"], init["features.conv1.weight"])
    assert not torch.equal(states[2]["head.fc.weight"], init["head.fc.weight"])
    model = build_model(SPEC, SHAPE, 10)
    records = measure_checkpoints(
        model, states, ["first", "features.conv2"], _batches(data), seed=0, load=lambda m, s: load_into(m, s, "test")
    )
    assert [r.epoch for r in records] == [0, 2]
    for record in records:
        first, conv2 = record.layers
        assert (first.layer, conv2.layer) == ("features.conv1", "features.conv2")
        assert first.cov_x.shape == (9, 9) and first.weights.shape == (12, 9)
        assert math.isfinite(first.misalignment_data) and first.misalignment_data >= 0
        assert conv2.cov_x.shape == (108, 108) and conv2.weights.shape == (24, 108)
        # 24 filters < d = 108: Σw is singular, and the misalignment undefined, not faked
        assert math.isnan(conv2.misalignment_data) and "singular" in conv2.undefined_reason
        assert np.isfinite(conv2.f).all() and np.isfinite(first.f).all()
        assert set(record.activations["module"]) >= {"features.relu1", "features.relu2", "head.relu"}
    # the first layer's inputs do not depend on the weights: the same Σx at both epochs
    np.testing.assert_array_equal(records[0].layers[0].cov_x, records[1].layers[0].cov_x)
    assert not np.allclose(records[0].layers[1].cov_x, records[1].layers[1].cov_x)


def test_gaussian_approximation_of_an_own_models_layer(pretrained):
    _, states, _ = pretrained
    fresh = fresh_model(SPEC, SHAPE, 10, 0.5, seed=7)
    key = resolve_layer(fresh, "first") + ".weight"
    mean, cov = fit_gaussian(weight_vectors(states[2][key]))
    shape = fresh.state_dict()[key].shape
    samples = sample_gaussian(mean, cov, shape[0], np.random.default_rng(0))
    state = clone_state(fresh)
    state[key] = torch.as_tensor(samples, dtype=state[key].dtype).reshape(shape)
    model = load_into(build_model(SPEC, SHAPE, 10), state, "test")
    assert torch.equal(model.features.conv1.weight, state[key])
    assert torch.equal(model.head.fc.weight, fresh.head.fc.weight)  # every other layer fresh
    assert torch.isfinite(model(torch.zeros(2, *SHAPE))).all()


def test_first_and_last_k_of_an_own_model(pretrained):
    _, states, init = pretrained
    model = fresh_model(SPEC, SHAPE, 10, 0.5, seed=7)
    fresh = clone_state(model)
    groups = layer_groups(model)
    assert groups == [
        ["features.conv1.weight", "features.conv1.bias"],
        ["features.conv2.weight", "features.conv2.bias"],
        ["head.fc.weight", "head.fc.bias"],
    ]
    assert transferred_layers("first1", model) == groups[:1] and transferred_layers("last2", model) == groups[1:]
    state = partial_state(init, states[2], fresh, transferred_layers("last1", model), head=head_prefix(model))
    trained, initial = states[2]["head.fc.weight"], init["head.fc.weight"]
    assert torch.allclose(state["head.fc.weight"], trained * (initial.norm() / trained.norm()))
    assert torch.equal(state["features.conv1.weight"], fresh["features.conv1.weight"])
    assert torch.equal(state["head.classifier.weight"], fresh["head.classifier.weight"])
    load_into(model, state, "test")
    with pytest.raises(ValueError, match="only 3 non-head layers"):
        transferred_layers("first4", model)


def test_layerwise_construction_of_an_own_model(pretrained):
    data, _, _ = pretrained
    model = fresh_model(SPEC, SHAPE, 10, 0.5, seed=7)
    fresh = clone_state(model)
    assert constructible_layers(model) == LAYERS[:3]
    info = construct_layers(model, 2, "covariance", _batches(data), seed=0)
    assert list(info) == ["features.conv1", "features.conv2"]
    assert info["features.conv1"]["dim"] == 9 and info["features.conv2"]["dim"] == 12 * 9
    state = clone_state(model)
    for key in ("features.conv1.weight", "features.conv2.weight"):
        assert not torch.equal(state[key], fresh[key])
        assert state[key].norm().item() == pytest.approx(fresh[key].norm().item(), rel=1e-5)
    assert torch.equal(state["head.fc.weight"], fresh["head.fc.weight"])


def test_checkpoint_of_an_own_model_rebuilds_only_for_the_configured_spec(tmp_path, pretrained):
    _, states, _ = pretrained
    path = tmp_path / "checkpoints.pt"
    save_checkpoints(path, spec=SPEC, input_shape=SHAPE, num_classes=10, init_scale=0.5, seed=1,
                     labels="random", states=states, diverged=False)
    data = read_checkpoints(path)
    spec = buildable_spec(data, path, configured=dict(SPEC))
    model = load_into(build_model(spec, data["input_shape"], data["num_classes"]), data["states"][2], path)
    assert torch.equal(model.head.fc.weight, states[2]["head.fc.weight"])
    # a file naming a factory the config does not: refused before anything is imported
    for configured in (None, {"arch": "cnn2"}, {**SPEC, "hidden": 17}):
        with pytest.raises(InputFileError, match="files run no code"):
            buildable_spec(data, path, configured)
    builtin = {"spec": {"arch": "cnn2"}}
    assert buildable_spec(builtin, path, None) == {"arch": "cnn2"}


def test_first_layer_statistics_are_remeasured_when_parameters_precede_it():
    """A learned input scale before fc1: Σx of fc1 depends on the checkpoint."""
    spec = own("layernorm_net")
    model = fresh_model(spec, SHAPE, 10, 1.0, seed=0)
    a = clone_state(model)
    b = {**a, "scale": 2 * a["scale"]}
    inputs = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(0))
    records = measure_checkpoints(model, {0: a, 1: b}, ["first"], lambda: [inputs], seed=0,
                                  load=lambda m, s: load_into(m, s, "test"))
    np.testing.assert_allclose(records[1].layers[0].cov_x, 4 * records[0].layers[0].cov_x, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_batch_norm_and_padding_modes_of_an_own_model():
    model = initialize(build_model(own("bn_net"), SHAPE, 10), 1.0, seed=0)
    assert layer_groups(model) == [
        ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"],
        ["conv2.weight", "conv2.bias"],
    ]
    # Σx samples are exactly what each conv multiplies: reflect, "same" (odd extra at
    # the end for an even kernel) and "valid" padding as the layer pads
    x = torch.randn(2, 3, 7, 6, generator=torch.Generator().manual_seed(1))
    for conv in (
        nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(3, 5, 3, padding=2, padding_mode="circular"),
        nn.Conv2d(3, 5, (4, 2), padding="same", dilation=(1, 2)),
        nn.Conv2d(3, 5, 3, padding="valid", stride=2),
        nn.Conv2d(3, 5, 3, padding=(1, 2), stride=(2, 1)),
    ):
        out = conv(x).detach()
        samples = _layer_samples(conv, x)
        expected = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]) - conv.bias.detach()
        torch.testing.assert_close(samples @ conv.weight.detach().reshape(5, -1).T, expected, rtol=1e-5, atol=1e-5)


def test_partial_transfer_refuses_a_model_whose_state_has_no_layer_group():
    model = build_model(own("layernorm_net"), SHAPE, 10)
    with pytest.raises(ValueError) as err:
        transferred_layers("first1", model)
    assert "scale" in str(err.value) and "firstK/lastK" in str(err.value)


# --------------------------------------------------------------------------- refused models


@pytest.mark.parametrize(
    "spec, message",
    [
        (own("raises"), "the factory raised an error: own_models:raises((1, 8, 8), 10): RuntimeError: no model"),
        (own("bn_net", widht=3), "unexpected keyword argument 'widht'"),
        (own("returns_dict"), "returned an object of type 'dict', not a torch.nn.Module"),
        (own("no_weight_layers"), "has no Conv2d or Linear layer"),
        (own("backwards"), "registered: classifier, fc1; called: fc1, classifier"),
        (own("shared"), "called more than once per forward: fc1 (2×)"),
        (own("unused"), "never called by forward: spare"),
        (own("lazy"), "lazy (uninitialized) parameters"),
        (own("too_many_outputs"), "to (2, 11); expected logits of shape (2, 10)"),
        (own("NOT_CALLABLE"), "not a callable"),
        (own("buidl"), "has no 'buidl'"),
        ({"arch": "examples.tiny_convnet:buidl"}, "(did you mean 'build'?)"),
        ({"arch": "examples.no_such_module:build"}, "No module named 'examples.no_such_module'"),
        ({"arch": EXAMPLE, "num_classes": 3}, "factory's arguments, set by the workflow"),
        ({"arch": EXAMPLE}, None),  # vector inputs: the example's own ValueError
    ],
)
def test_a_model_that_cannot_be_used_is_refused_naming_the_key(spec, message):
    shape = (30,) if message is None else SHAPE
    with pytest.raises(ModelError) as err:
        fresh_model(spec, shape, 10, 1.0, seed=0, where="experiments.mine.model")
    text = str(err.value)
    assert text.startswith("experiments.mine.model")
    assert (message or "tiny_convnet needs image inputs (C, H, W)") in text
    if message is None:
        assert "examples/tiny_convnet.py:" in text  # where the factory raised


def test_a_factory_that_needs_real_values_is_checked_on_the_cpu():
    model = check_model(own("needs_values"), SHAPE, 10)  # fails on the meta device, not here
    assert weight_layers(model) == ["1", "3"]
    assert check_model(SPEC, SHAPE, 10).head.fc.weight.is_meta  # the usual case: no memory


@pytest.mark.parametrize(
    "source, message",
    [
        ("def build(:\n", "SyntaxError"),
        ("import no_such_dependency_xyz\n", "No module named 'no_such_dependency_xyz'"),
        ("raise RuntimeError('broken at import')\n", "RuntimeError: broken at import"),
    ],
)
def test_a_module_that_does_not_import_names_the_key_and_the_error(tmp_path, monkeypatch, source, message):
    (tmp_path / "broken_models.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError) as err:
        load_factory("broken_models:build", "experiments.mine.model")
    text = str(err.value)
    assert text.startswith("experiments.mine.model.arch: cannot import 'broken_models'")
    assert message in text and "broken_models.py" in text


def test_a_module_is_found_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd_models_abc.py").write_text(
        "from torch import nn\ndef build(shape, classes):\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, classes))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert weight_layers(build_model({"arch": "cwd_models_abc:build"}, SHAPE, 4)) == ["1"]
    with pytest.raises(ModelError, match="found from the working directory") as err:
        load_factory("cwd_models_missing:build")
    assert str(tmp_path) in str(err.value)


# --------------------------------------------------------------------------- the config check


def _config(**model):
    config = yaml.safe_load((ROOT / "examples" / "tiny_convnet.yaml").read_text())
    if model:
        config["experiments"]["digits_tiny"]["model"] = model
    return config


def _problems(config) -> str:
    try:
        check_config(config, SCHEMA)
    except ConfigError as err:
        return str(err)
    return ""


def test_an_init_scale_experiment_is_warned_of_parameters_the_scale_does_not_reach():
    from randlabels.workflow.config import config_warnings

    config = _config(**own("layernorm_net"))  # a learned input scale outside the He rule
    entry = config["experiments"]["digits_tiny"]
    entry["stats"]["layers"] = ["first", "last"]
    entry["finetune"]["variants"] = ["scratch", "pretrained", "gaussian"]
    entry["init_scales"] = [0.5, 2.0]
    assert _problems(config) == ""
    assert config_warnings(config) == [
        "experiments.digits_tiny: init_scales [0.5, 2.0] scale the conv and linear weights only; the own "
        "model's other parameters (scale) keep the factory's initialization at every scale (README, Your own model)"]
    entry["init_scales"] = [1.0]  # one scale: nothing is compared across scales
    assert config_warnings(config) == []
    covered = _config()  # tiny_convnet: every parameter is a conv's or a linear layer's
    covered["experiments"]["digits_tiny"]["init_scales"] = [0.5, 2.0]
    assert config_warnings(covered) == []


def test_the_example_config_is_valid_and_plans_eigenfilters():
    config = _config()
    assert _problems(config) == ""
    assert plan.is_conv(config, "digits_tiny") and plan.input_shape(config, "digits_tiny") == SHAPE
    (code,) = plan.model_code(config, "digits_tiny")
    assert Path(code).resolve() == ROOT / "examples" / "tiny_convnet.py"
    # a first layer that is not a conv: no eigen-filter figure
    linear_first = _config(**own("layernorm_net"))
    linear_first["experiments"]["digits_tiny"]["stats"]["layers"] = ["first", "last"]
    linear_first["experiments"]["digits_tiny"]["finetune"]["variants"] = ["scratch", "pretrained", "gaussian"]
    assert _problems(linear_first) == ""
    assert not plan.is_conv(linear_first, "digits_tiny")
    assert not any("eigenfilters" in target for target in plan.all_targets(linear_first))


@pytest.mark.parametrize(
    "change, key, message",
    [
        (lambda c, m: m.update(arch="nowhere_xyz.models:build"), "model.arch", "No module named 'nowhere_xyz'"),
        (lambda c, m: m.update(arch="examples.tiny_convnet:biuld"), "model.arch", "did you mean 'build'"),
        (lambda c, m: c.update(model=own("raises")), "model", "RuntimeError: no model for (1, 8, 8) today"),
        (lambda c, m: c.update(model=own("no_weight_layers")), "model", "has no Conv2d or Linear layer"),
        (lambda c, m: m.update(input_shape=[1, 8, 8]), "model", "factory's arguments"),
        (lambda c, m: m.update(hidden="many"), "model", "ValueError: invalid literal for int()"),
        (lambda c, m: c["stats"].update(layers=["first", "head.fc2"]), "stats.layers",
         "(did you mean 'head.fc'?); the model's layers (module paths, in order; or 'first' / 'last'): "
         "features.conv1, features.conv2, head.fc, head.classifier"),
        (lambda c, m: c.update(sample={"layer": "features.relu1"}), "sample.layer", "no conv/linear layer 'features.relu1'"),
        (lambda c, m: c["finetune"].update(variants=["scratch", "first4"]), "finetune.variants",
         "first4: variant 'first4' transfers 4 layers, but the model has only 3"),
        (lambda c, m: c["finetune"].update(variants=["covariance4"]), "finetune.variants", "covariance4: constructs 4 layer(s)"),
        (lambda c, m: c.update(model=own("layernorm_net")) or c["stats"].update(layers=["first"]),
         "finetune.variants", "first1: state keys belong to no layer group"),
        (lambda c, m: c.update(model=own("grouped")) or c["stats"].update(layers=["conv2"])
         or c["finetune"].update(variants=["scratch"]), "stats.layers", "grouped convolution"),
    ],
)
def test_config_check_names_the_key_before_any_job(change, key, message):
    config = _config()
    entry = config["experiments"]["digits_tiny"]
    change(entry, entry["model"])
    problems = _problems(config)
    assert f"experiments.digits_tiny.{key}:" in problems, problems
    assert message in problems, problems


def test_schema_takes_a_factory_path_and_nothing_like_it():
    # the schema lets any option through; the factory judges it
    problems = _problems(_config(arch="examples.tiny_convnet:build", anything={"goes": [1, 2]}))
    assert "unknown key" not in problems and "unexpected keyword argument 'anything'" in problems
    for bad in ("examples.tiny_convnet:build\n", "examples/tiny_convnet.py:build", "Cnn2", "tiny_convnet"):
        problems = _problems(_config(arch=bad))
        assert f"experiments.digits_tiny.model.arch: {bad!r} is not valid; valid names: cnn2, fc, vgg16, vgg16_bn, " \
               "resnet18, or your own model's factory as 'package.module:function'" in problems, problems


def test_an_input_shape_unknown_before_the_data_defers_the_build_to_the_job():
    config = _config(arch="own_models:raises")
    config["datasets"]["digits"] = {"source": "arrays", "path": "data/mine.npz"}
    assert plan.input_shape(config, "digits_tiny") is None
    problems = _problems(config)
    assert "raises" not in problems  # the import is checked, the build waits for the data
    config["experiments"]["digits_tiny"]["model"]["arch"] = "own_models:nothing_here"
    assert "experiments.digits_tiny.model.arch: module 'own_models'" in _problems(config)


# --------------------------------------------------------------------------- in the rule scripts


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    from randlabels.data.digits import prepare_digits
    from randlabels.data.h5file import read_dataset
    from randlabels.data.splits import make_split, write_split

    tmp = tmp_path_factory.mktemp("own_model_job")
    prepare_digits(tmp / "digits.h5")
    split = make_split(read_dataset(tmp / "digits.h5").is_test, upstream=100, downstream=100, test=50,
                       upstream_classes=10, downstream_classes=10, seed=0)
    write_split(split, tmp / "split.h5")
    return tmp


def _run(script, monkeypatch, fake):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # runlog.start replaces it
    root = logging.getLogger()
    saved = root.handlers[:]
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(SCRIPTS / script), init_globals={"snakemake": fake}, run_name="__main__")
    finally:
        torch.set_num_threads(threads)
        for handler in root.handlers:
            if handler not in saved:
                handler.close()
        root.handlers[:] = saved
        logging.captureWarnings(False)


def test_a_factory_that_fails_in_the_job_names_the_key_and_writes_nothing(tmp_path, monkeypatch, job_inputs):
    out = tmp_path / "out"
    fake = SimpleNamespace(
        input=SimpleNamespace(dataset=str(job_inputs / "digits.h5"), split=str(job_inputs / "split.h5")),
        output=SimpleNamespace(checkpoints=str(out / "checkpoints.pt"), metrics=str(out / "metrics.tsv")),
        log=[str(tmp_path / "pretrain.log")],
        wildcards=SimpleNamespace(exp="mine", labels="random"),
        threads=1,
        resources=SimpleNamespace(gpu=0),
        params=SimpleNamespace(
            model=own("raises"), training={"epochs": 1, "batch_size": 32, "checkpoints": [0, 1]},
            init_scale=1.0, seed=0, device="cpu", jobs_per_gpu=1, on_divergence="continue",
            resume=str(tmp_path / "_resume" / "run.pt"),
        ),
    )
    with pytest.raises(ModelError, match=r"^experiments\.mine\.model: the factory raised an error"):
        _run("pretrain.py", monkeypatch, fake)
    assert not out.exists() and not list((tmp_path / "_resume").rglob("*.pt"))  # no output, no resume state


def test_statistics_refuse_a_checkpoint_whose_factory_the_config_does_not_name(tmp_path, monkeypatch, job_inputs):
    checkpoints = tmp_path / "checkpoints.pt"
    state = clone_state(fresh_model(SPEC, SHAPE, 10, 1.0, seed=0))
    save_checkpoints(checkpoints, spec=own("raises"), input_shape=SHAPE, num_classes=10, init_scale=1.0, seed=0,
                     labels="random", experiment="mine", states={0: state}, diverged=False)
    out = tmp_path / "stats.h5"
    fake = SimpleNamespace(
        input=SimpleNamespace(checkpoints=str(checkpoints), dataset=str(job_inputs / "digits.h5"),
                              split=str(job_inputs / "split.h5")),
        output=[str(out)],
        log=[str(tmp_path / "statistics.log")],
        wildcards=SimpleNamespace(exp="mine"),
        config={"experiments": {"mine": {"model": SPEC}}},
        threads=1,
        params=SimpleNamespace(stats={"layers": ["first"], "batch_size": 64}, experiment="mine", seed=0, device="cpu"),
    )
    with pytest.raises(InputFileError, match="own_models:raises.*files run no code"):
        _run("statistics.py", monkeypatch, fake)
    assert not out.exists()


# --------------------------------------------------------------------------- the workflow


@pytest.mark.slow
def test_workflow_with_an_own_model(tmp_path):
    """Digits, 1 seed, 1 scale, 2 epochs: the example through every stage it needs."""
    import shutil

    project = copy_project(tmp_path / "project")
    shutil.copytree(ROOT / "examples", project / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((ROOT / "examples" / "tiny_convnet.yaml").read_text())
    config.update(device="cpu", seeds=[0])
    entry = config["experiments"]["digits_tiny"]
    entry["split"] = {"upstream": 200, "downstream": 200, "test": 100}
    entry["pretrain"] = {"labels": ["random"], "epochs": 2, "checkpoints": [0, 2], "batch_size": 64}
    entry["finetune"] = {"labels": "random", "variants": ["scratch", "gaussian", "first1", "last1", "covariance2"],
                         "epochs": 1, "batch_size": 64, "eval_every": 2, "target_accuracy": 0.2, "probe_samples": 64}
    (project / "own.yaml").write_text(yaml.safe_dump(config))
    targets = ["results/digits_tiny/tables/transfer_summary.tsv", "results/digits_tiny/tables/misalignment.tsv",
               "results/digits_tiny/figures/eigenfilters.png"]
    snakemake(project, *targets, "--cores", "2", "--configfile", "own.yaml")
    misalignment = read_table(project / targets[1])
    assert set(misalignment["layer"]) == {"features.conv1", "head.fc"}
    summary = read_table(project / targets[0])
    assert set(summary["variant"]) >= {"gaussian", "first1", "last1", "covariance2"}
    assert (project / targets[2]).stat().st_size > 0
