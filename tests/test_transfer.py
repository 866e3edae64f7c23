"""Tests of randlabels.inits.pretrained: rescaled pre-trained states, head reset, checkpoint files."""

from __future__ import annotations

import copy

import pytest
import torch

from randlabels.inits.pretrained import clone_state, fresh_model, layer_groups, load_into, partial_state, transferred_state
from randlabels.inits.variants import transferred_layers
from randlabels.models.architectures import ARCHITECTURES
from randlabels.models.networks import build_model, head_prefix, initialize, weight_layers
from randlabels.training.checkpoints import read_checkpoints, read_init, save_checkpoints, save_init

SPEC = {"arch": "cnn2", "filters": 4, "kernel_size": 3, "hidden": 5}
SHAPE = (2, 4, 4)


def _trained_like(init: dict, seed: int) -> dict:
    """A 'trained' state: init plus a seeded perturbation, biases made non-zero."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.7 * torch.randn(v.shape, generator=gen) * (v.std() if v.dim() > 1 else 1.0)
            for k, v in init.items()}


@pytest.fixture
def states():
    init = clone_state(fresh_model(SPEC, SHAPE, 3, 1.0, seed=0))
    trained = _trained_like(init, 1)
    fresh = clone_state(fresh_model(SPEC, SHAPE, 3, 1.0, seed=2))
    return init, trained, fresh


def test_rescale_restores_init_norm_and_keeps_direction(states):
    init, trained, fresh = states
    out = transferred_state(init, trained, fresh, head="classifier", rescale=True, reset_head=False)
    assert out.keys() == trained.keys()
    for key in ("conv1.weight", "fc1.weight", "classifier.weight"):
        assert trained[key].norm() != pytest.approx(init[key].norm().item(), rel=1e-3)  # non-trivial
        assert out[key].dtype == trained[key].dtype and out[key].shape == trained[key].shape
        # the norm is the initial one, to float32 rounding
        assert out[key].double().norm().item() == pytest.approx(init[key].double().norm().item(), rel=1e-6)
        # same direction: cosine 1, and a positive multiple of the trained tensor
        cosine = torch.nn.functional.cosine_similarity(out[key].double().flatten(), trained[key].double().flatten(), dim=0)
        assert cosine.item() == pytest.approx(1.0, abs=1e-9)
        ratio = init[key].double().norm() / trained[key].double().norm()
        torch.testing.assert_close(out[key].double(), trained[key].double() * ratio, rtol=1e-6, atol=1e-7)
    for key in ("conv1.bias", "fc1.bias", "classifier.bias"):
        assert torch.equal(out[key], trained[key])  # biases kept as trained (init was 0)


def test_head_reset_to_fresh(states):
    init, trained, fresh = states
    out = transferred_state(init, trained, fresh, head="classifier", rescale=True)
    assert torch.equal(out["classifier.weight"], fresh["classifier.weight"])
    assert torch.equal(out["classifier.bias"], fresh["classifier.bias"])
    # the fresh state's tensors are copied, not shared
    out["classifier.weight"].add_(1.0)
    assert not torch.equal(out["classifier.weight"], fresh["classifier.weight"])
    # body not reset
    assert not torch.equal(out["conv1.weight"], fresh["conv1.weight"])


def test_head_reset_allows_different_class_count(states):
    init, trained, _ = states
    fresh5 = clone_state(fresh_model(SPEC, SHAPE, 5, 1.0, seed=2))
    out = transferred_state(init, trained, fresh5, head="classifier", rescale=True)
    model = build_model(SPEC, SHAPE, 5)
    load_into(model, out, "test")
    assert model.classifier.out_features == 5


def test_no_rescale_keeps_trained_values(states):
    init, trained, fresh = states
    out = transferred_state(init, trained, fresh, head="classifier", rescale=False, reset_head=False)
    for key in trained:
        assert torch.equal(out[key], trained[key]), key
        assert out[key] is not trained[key]
    out2 = transferred_state(init, trained, fresh, head="classifier", rescale=False)
    assert torch.equal(out2["fc1.weight"], trained["fc1.weight"])
    assert torch.equal(out2["classifier.weight"], fresh["classifier.weight"])


def test_head_prefix_does_not_catch_similar_names():
    # fc head named "fc" must not reset "fc1"
    model = build_model({"arch": "resnet18"}, (1, 32, 32), 3)
    state = clone_state(model)
    trained = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    fresh = {k: v * 0 for k, v in state.items()}
    out = transferred_state(state, trained, fresh, head="fc", rescale=False)
    assert torch.equal(out["fc.weight"], fresh["fc.weight"])
    assert torch.equal(out["layer1.0.conv1.weight"], trained["layer1.0.conv1.weight"])
    # batch-norm running statistics and counters are kept (1-D or integer tensors)
    assert torch.equal(out["bn1.running_var"], trained["bn1.running_var"])
    assert out["bn1.num_batches_tracked"].dtype == torch.int64


def test_rescale_keeps_batchnorm_vectors_and_zero_norm_rejected():
    model = build_model({"arch": "resnet18"}, (1, 32, 32), 3)
    init = clone_state(model)
    trained = {k: (v * 3 + 0.5 if v.is_floating_point() else v + 7) for k, v in init.items()}
    out = transferred_state(init, trained, init, head="fc", rescale=True)
    assert torch.equal(out["bn1.weight"], trained["bn1.weight"])  # 1-D: kept
    assert torch.equal(out["bn1.num_batches_tracked"], trained["bn1.num_batches_tracked"])
    zeroed = dict(trained, **{"conv1.weight": torch.zeros_like(trained["conv1.weight"])})
    with pytest.raises(ValueError, match="conv1.weight"):
        transferred_state(init, zeroed, init, head="fc", rescale=True)


# --------------------------------------------------------------------------- files


def test_checkpoints_roundtrip(tmp_path, states):
    init, trained, _ = states
    path = tmp_path / "ckpt.pt"
    save_checkpoints(path, spec=SPEC, input_shape=SHAPE, num_classes=3, init_scale=0.5, seed=9,
                     labels="random", states={0: init, 5: trained}, diverged=False)
    data = read_checkpoints(path)
    assert data["spec"] == SPEC and data["input_shape"] == list(SHAPE)
    assert (data["num_classes"], data["init_scale"], data["seed"], data["labels"], data["diverged"]) == (
        3, 0.5, 9, "random", False)
    assert sorted(data["states"]) == [0, 5]
    for key in init:
        assert torch.equal(data["states"][0][key], init[key])
        assert torch.equal(data["states"][5][key], trained[key])
    # the spec alone rebuilds a model that takes the state
    model = build_model(data["spec"], data["input_shape"], data["num_classes"])
    load_into(model, data["states"][5], path)
    assert torch.equal(model.fc1.weight.detach(), trained["fc1.weight"])


def test_init_roundtrip(tmp_path, states):
    _, trained, _ = states
    path = tmp_path / "init.pt"
    save_init(path, spec=SPEC, input_shape=SHAPE, num_classes=3, state=trained, description="pretrained")
    data = read_init(path)
    assert data["description"] == "pretrained" and data["spec"] == SPEC and data["num_classes"] == 3
    for key in trained:
        assert torch.equal(data["state"][key], trained[key])
    # an init file is not a checkpoint set, and vice versa
    with pytest.raises(ValueError, match="init.pt"):
        read_checkpoints(path)


def test_reading_non_checkpoint_names_file(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a torch file")
    with pytest.raises(ValueError, match="garbage.pt"):
        read_checkpoints(garbage)
    with pytest.raises(ValueError, match="garbage.pt"):
        read_init(garbage)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(ValueError, match="other.pt"):
        read_checkpoints(other)
    with pytest.raises(ValueError, match="other.pt"):
        read_init(other)


def test_load_into_wrong_shape_names_source(states):
    init, _, _ = states
    model = build_model({**SPEC, "filters": 6}, SHAPE, 3)
    with pytest.raises(ValueError, match="source-file.pt"):
        load_into(model, init, "source-file.pt")
    missing = {k: v for k, v in init.items() if k != "fc1.bias"}
    with pytest.raises(ValueError, match="source-file.pt"):
        load_into(build_model(SPEC, SHAPE, 3), missing, "source-file.pt")


def test_fresh_model_is_initialize_of_build():
    a = clone_state(fresh_model(SPEC, SHAPE, 3, 2.0, seed=4))
    b = clone_state(fresh_model(SPEC, SHAPE, 3, 1.0, seed=4))
    assert torch.equal(a["conv1.weight"], 2 * b["conv1.weight"])
    assert torch.all(a["fc1.bias"] == 0)


# --------------------------------------------------------------------------- partial transfer

ARCH_SHAPES = {"cnn2": (1, 8, 8), "fc": (30,), "vgg16": (3, 32, 32), "vgg16_bn": (3, 32, 32), "resnet18": (3, 32, 32)}
SMALL = {"cnn2": {"filters": 4, "hidden": 6}, "fc": {"widths": [8, 7, 6]}}


@pytest.fixture(scope="module")
def arch_states():
    """Per arch: the model and its init / 'trained' / fresh states (VGG builds are slow)."""
    out = {}
    for arch in ARCHITECTURES:
        spec = {"arch": arch, **SMALL.get(arch, {})}
        model = fresh_model(spec, ARCH_SHAPES[arch], 3, 1.0, seed=0)
        init = clone_state(model)
        gen = torch.Generator().manual_seed(1)
        trained = {k: (v * 1.5 + 0.1 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v + 3)
                   for k, v in init.items()}
        fresh = clone_state(initialize(copy.deepcopy(model), 1.0, seed=2))
        out[arch] = (model, init, trained, fresh)
    return out


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_layer_groups_cover_every_non_head_key_once(arch, arch_states):
    model = arch_states[arch][0]
    groups = layer_groups(model)
    keys = list(model.state_dict())
    head = head_prefix(model)
    head_keys = [k for k in keys if k == head or k.startswith(head + ".")]
    flat = [k for g in groups for k in g]
    assert len(flat) == len(set(flat))  # no key in two groups
    assert not set(flat) & set(head_keys)
    assert sorted(flat + head_keys) == sorted(keys)
    # one group per non-head weight layer, in weight_layers order, led by its weight
    layers = weight_layers(model)[:-1]
    assert [g[0] for g in groups] == [f"{name}.weight" for name in layers]


def test_layer_groups_choices():
    cnn = build_model(SPEC, SHAPE, 3)
    assert layer_groups(cnn) == [["conv1.weight", "conv1.bias"], ["fc1.weight", "fc1.bias"]]
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    resnet = build_model({"arch": "resnet18"}, (3, 32, 32), 3)
    groups = layer_groups(resnet)
    assert len(groups) == 1 + 8 * 2 + 3  # stem, two convs per block, three projection shortcuts
    assert groups[0] == ["conv1.weight"] + [f"bn1.{b}" for b in bn]
    assert groups[1] == ["layer1.0.conv1.weight"] + [f"layer1.0.bn1.{b}" for b in bn]
    assert groups[2] == ["layer1.0.conv2.weight"] + [f"layer1.0.bn2.{b}" for b in bn]
    # layer2.0: conv1, conv2, then its shortcut conv with its batch norm as a layer of its own
    assert groups[5][0] == "layer2.0.conv1.weight" and groups[6][0] == "layer2.0.conv2.weight"
    assert groups[7] == ["layer2.0.downsample.0.weight"] + [f"layer2.0.downsample.1.{b}" for b in bn]
    assert groups[-1][0] == "layer4.1.conv2.weight"


def test_layer_groups_vgg16_bn_pairs_each_conv_with_its_batchnorm(arch_states):
    groups = layer_groups(arch_states["vgg16_bn"][0])
    assert len(groups) == 13
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert groups[0] == ["features.0.weight", "features.0.bias"] + [f"features.1.{b}" for b in bn]
    assert groups[-1] == ["features.40.weight", "features.40.bias"] + [f"features.41.{b}" for b in bn]
    assert all(len(g) == 7 for g in groups)
    assert all(len(g) == 2 for g in layer_groups(arch_states["vgg16"][0]))


def test_layer_groups_reports_keys_of_no_layer():
    from collections import OrderedDict

    model = torch.nn.Sequential(OrderedDict(
        norm=torch.nn.BatchNorm1d(4), fc=torch.nn.Linear(4, 5), head=torch.nn.Linear(5, 2),
    ))
    with pytest.raises(ValueError, match="norm.running_mean"):
        layer_groups(model)


def _is_rescaled(out, init, trained, key):
    if trained[key].is_floating_point() and trained[key].dim() > 1:
        ratio = init[key].double().norm() / trained[key].double().norm()
        expected = (trained[key].double() * ratio).to(trained[key].dtype)
        return torch.equal(out[key], expected)
    return torch.equal(out[key], trained[key])


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("end", ["first", "last"])
def test_partial_state_takes_exactly_the_chosen_layers(arch, end, arch_states):
    model, init, trained, fresh = arch_states[arch]
    k = 2
    groups = transferred_layers(f"{end}{k}", model)
    all_groups = layer_groups(model)
    assert groups == (all_groups[:k] if end == "first" else all_groups[-k:])
    out = partial_state(init, trained, fresh, groups)
    assert list(out) == list(fresh)
    taken = {key for g in groups for key in g}
    assert any(trained[key].dim() > 1 for key in taken)  # a weight is among them
    for key in out:
        if key in taken:
            assert _is_rescaled(out, init, trained, key), key
            if trained[key].dim() > 1:
                assert out[key].double().norm().item() == pytest.approx(init[key].double().norm().item(), rel=1e-6)
        else:
            assert torch.equal(out[key], fresh[key]), key
            assert out[key] is not fresh[key]
    # the head is always fresh
    head = head_prefix(model)
    assert torch.equal(out[f"{head}.weight"], fresh[f"{head}.weight"])
    # without rescaling, the trained tensors themselves
    plain = partial_state(init, trained, fresh, groups, rescale=False)
    for key in taken:
        assert torch.equal(plain[key], trained[key]), key
    load_into(copy.deepcopy(model), out, "test")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_first_all_layers_is_pretrained(arch, arch_states):
    model, init, trained, fresh = arch_states[arch]
    n = len(layer_groups(model))
    head = head_prefix(model)
    out = partial_state(init, trained, fresh, transferred_layers(f"first{n}", model))
    ref = transferred_state(init, trained, fresh, head=head, rescale=True)
    assert list(out) == list(ref)
    for key in out:
        assert torch.equal(out[key], ref[key]), key
    last = partial_state(init, trained, fresh, transferred_layers(f"last{n}", model))
    for key in out:
        assert torch.equal(last[key], ref[key]), key


def test_partial_state_checks_groups(states):
    init, trained, fresh = states
    with pytest.raises(ValueError, match="classifier.weight"):
        partial_state(init, trained, fresh, [["classifier.weight"]], head="classifier")
    with pytest.raises(ValueError, match="nope"):
        partial_state(init, trained, fresh, [["nope"]])
    with pytest.raises(ValueError, match="twice"):
        partial_state(init, trained, fresh, [["conv1.weight"], ["conv1.weight"]])
    assert partial_state(init, trained, fresh, []).keys() == fresh.keys()
