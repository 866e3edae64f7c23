"""Tests of randlabels.models.networks: architectures, option checking, He × init_scale initialization."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from randlabels.models.architectures import ARCHITECTURES, model_options
from randlabels.models.networks import build_model, head_prefix, initialize, resolve_layer, weight_layers


def _forward(model: nn.Module, shape, batch: int = 2) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0)))


# --------------------------------------------------------------------------- building


def test_cnn2_layers_and_output_shape():
    spec = {"arch": "cnn2", "filters": 5, "kernel_size": 3, "hidden": 7}
    model = build_model(spec, (3, 6, 6), 4)
    assert weight_layers(model) == ["conv1", "fc1", "classifier"]
    conv = model.conv1
    assert isinstance(conv, nn.Conv2d)
    assert conv.in_channels == 3 and conv.out_channels == 5
    assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1)
    # 'same' padding, no pool: the hidden layer sees all 5 * 6 * 6 conv outputs.
    assert model.fc1.in_features == 5 * 6 * 6 and model.fc1.out_features == 7
    assert model.classifier.in_features == 7 and model.classifier.out_features == 4
    assert _forward(model, (3, 6, 6)).shape == (2, 4)


def test_cnn2_pool_and_kernel_5():
    model = build_model({"arch": "cnn2", "filters": 3, "kernel_size": 5, "hidden": 2, "pool": 2}, (1, 8, 8), 3)
    assert model.conv1.padding == (2, 2)
    assert isinstance(model.pool1, nn.MaxPool2d)
    assert model.fc1.in_features == 3 * 4 * 4
    assert _forward(model, (1, 8, 8)).shape == (2, 3)


def test_cnn2_defaults_are_the_papers_network():
    assert model_options({"arch": "cnn2"}) == {
        "arch": "cnn2", "filters": 256, "kernel_size": 3, "hidden": 64, "pool": 1, "upper_width": 1.0,
        "init": "he",
    }


def test_cnn2_even_kernel_rejected():
    with pytest.raises(ValueError, match="odd"):
        build_model({"arch": "cnn2", "kernel_size": 4}, (1, 8, 8), 2)


def test_fc_on_vectors_and_images():
    model = build_model({"arch": "fc", "widths": [6, 5]}, (4,), 3)
    assert weight_layers(model) == ["fc1", "fc2", "classifier"]
    assert [model.fc1.in_features, model.fc1.out_features] == [4, 6]
    assert [model.fc2.in_features, model.fc2.out_features] == [6, 5]
    assert [model.classifier.in_features, model.classifier.out_features] == [5, 3]
    assert _forward(model, (4,)).shape == (2, 3)
    # On images it flattens (C, H, W).
    image_model = build_model({"arch": "fc", "widths": [6]}, (2, 3, 3), 5)
    assert image_model.fc1.in_features == 18
    assert _forward(image_model, (2, 3, 3)).shape == (2, 5)


def test_fc_without_hidden_layers_is_a_linear_classifier():
    model = build_model({"arch": "fc", "widths": []}, (4,), 3)
    assert weight_layers(model) == ["classifier"]
    assert model.classifier.in_features == 4


@pytest.mark.parametrize("arch", ["cnn2", "vgg16", "vgg16_bn", "resnet18"])
def test_image_architectures_refuse_vector_inputs(arch):
    with pytest.raises(ValueError, match="fc"):
        build_model({"arch": arch}, (10,), 2)


# torchvision builds VGG16 with its 25088×4096 classifier before it is replaced, which
# takes about a second: build each variant once per module.
@pytest.fixture(scope="module")
def vgg16():
    return build_model({"arch": "vgg16"}, (3, 32, 32), 10)


@pytest.fixture(scope="module")
def vgg16_bn_gray():
    return build_model({"arch": "vgg16_bn"}, (1, 64, 32), 3)


def test_vgg16_cifar_variant(vgg16):
    model = vgg16
    assert isinstance(model.avgpool, nn.Identity)
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == 512 and model.classifier.out_features == 10
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13  # VGG16 = 13 conv + (here) 1 linear
    assert len(weight_layers(model)) == 14
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert _forward(model, (3, 32, 32)).shape == (2, 10)


def test_vgg16_bn_one_channel_and_non_square_image(vgg16_bn_gray):
    model = vgg16_bn_gray
    assert isinstance(model.avgpool, nn.Identity)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert model.features[0].in_channels == 1
    # 64×32 halved five times is 2×1: 512·2 features reach the single classifier layer.
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == 1024 and model.classifier.out_features == 3
    assert _forward(model, (1, 64, 32)).shape == (2, 3)


def _torchvision_vgg16_with_cifar_head(batch_norm: bool, channels: int, num_classes: int) -> nn.Module:
    """The CIFAR variant made the plain way: torchvision's whole VGG16, ImageNet
    classifier included, then the head and pool replaced."""
    from torchvision.models import vgg16, vgg16_bn

    model = (vgg16_bn if batch_norm else vgg16)(weights=None, num_classes=num_classes)
    if channels != 3:
        model.features[0] = nn.Conv2d(channels, 64, kernel_size=3, padding=1)
    model.avgpool = nn.Identity()
    model.classifier = nn.Linear(512, num_classes)
    return model


@pytest.mark.parametrize("arch, channels", [("vgg16", 3), ("vgg16_bn", 1)])
def test_vgg16_is_torchvisions_vgg16_with_its_head_replaced(arch, channels):
    """Built without torchvision's ImageNet classifier, the network is the same: the
    same class, module tree and state (after the seeded initialization), the same
    outputs, and nothing left on the meta device."""
    ours = initialize(build_model({"arch": arch}, (channels, 32, 32), 10), 1.0, seed=3)
    plain = initialize(_torchvision_vgg16_with_cifar_head(arch == "vgg16_bn", channels, 10), 1.0, seed=3)
    assert type(ours) is type(plain)
    assert str(ours) == str(plain)
    assert not any(t.is_meta for t in [*ours.parameters(), *ours.buffers()])
    mine, theirs = ours.state_dict(), plain.state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=0, msg=key)
    x = torch.randn(2, channels, 32, 32, generator=torch.Generator().manual_seed(0))
    ours.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=0)


def test_vgg16_rejects_8x8():
    with pytest.raises(ValueError, match="32"):
        build_model({"arch": "vgg16"}, (1, 8, 8), 10)


def test_resnet18_cifar_stem():
    model = build_model({"arch": "resnet18"}, (1, 32, 32), 7)
    stem = model.conv1
    assert stem.in_channels == 1 and stem.out_channels == 64
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1) and stem.padding == (1, 1)
    assert stem.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    assert weight_layers(model)[0] == "conv1"
    assert head_prefix(model) == "fc"
    assert model.fc.out_features == 7
    assert _forward(model, (1, 32, 32)).shape == (2, 7)


# --------------------------------------------------------------------------- option checks


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_model({"arch": "alexnet"}, (3, 32, 32), 10)
    message = str(err.value)
    assert "alexnet" in message
    for name in ARCHITECTURES:
        assert name in message


def test_missing_architecture_refused():
    with pytest.raises(ValueError, match="unknown architecture"):
        model_options({"filters": 3})


@pytest.mark.parametrize(
    "spec", [{"arch": "vgg16", "filters": 3}, {"arch": "fc", "hidden": 3}, {"arch": "cnn2", "widths": [3]}]
)
def test_option_not_for_arch_refused(spec):
    with pytest.raises(ValueError) as err:
        build_model(spec, (3, 32, 32), 10)
    assert "do not apply" in str(err.value)
    assert spec["arch"] in str(err.value)


# --------------------------------------------------------------------------- layers


def test_weight_layers_resolve_and_head():
    model = build_model({"arch": "cnn2", "filters": 2, "hidden": 3}, (1, 4, 4), 2)
    assert resolve_layer(model, "first") == "conv1"
    assert resolve_layer(model, "last") == "classifier"
    assert resolve_layer(model, "fc1") == "fc1"
    assert head_prefix(model) == "classifier"
    with pytest.raises(ValueError) as err:
        resolve_layer(model, "relu1")  # a module, but not a conv/linear layer
    assert "relu1" in str(err.value) and "conv1" in str(err.value)
    with pytest.raises(ValueError, match="nope"):
        resolve_layer(model, "nope")


def test_vgg_head_prefix(vgg16):
    model = vgg16
    assert head_prefix(model) == "classifier"
    assert resolve_layer(model, "first") == "features.0"


# --------------------------------------------------------------------------- initialization


def test_he_normal_std_times_scale():
    # fan_in = 1000; 1000 × 1000 = 1e6 weights. The sample std of N i.i.d. normals has
    # relative standard error 1/sqrt(2N) ≈ 7e-4, so 1 % is a > 10-sigma tolerance.
    fan_in = 1000
    for scale in (1.0, 0.5):
        model = initialize(build_model({"arch": "fc", "widths": [1000]}, (fan_in,), 2), scale, seed=3)
        w = model.fc1.weight.detach().double()
        expected = scale * math.sqrt(2.0 / fan_in)
        assert w.std().item() == pytest.approx(expected, rel=0.01)
        # mean 0: its standard error is expected/sqrt(N) = expected·1e-3
        assert abs(w.mean().item()) < 5e-3 * expected
        assert torch.all(model.fc1.bias == 0)
        assert torch.all(model.classifier.bias == 0)


def test_he_normal_conv_uses_fan_in():
    # conv fan_in = C_in·k·k = 16·3·3 = 144; 512 filters × 144 = 73 728 weights,
    # relative SE of the std ≈ 1/sqrt(2·73728) ≈ 2.6e-3: 2 % is > 7 sigma.
    model = initialize(build_model({"arch": "cnn2", "filters": 512, "hidden": 2}, (16, 1, 1), 2), 1.0, seed=0)
    w = model.conv1.weight.detach().double()
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / 144), rel=0.02)


# Closed form of the two conventions (issue 13): std = gain/√fan_in × init_scale, gain √2
# (He, ReLU) or 1 (LeCun). Tolerances as above: > 7 sigma of the sample std's error.
_GAIN = {"he": math.sqrt(2.0), "lecun": 1.0}


@pytest.mark.parametrize("init", ["he", "lecun"])
@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_linear_weight_std_under_each_convention(init, scale):
    fan_in = 1000  # 1000 × 1000 weights: relative SE of the std ≈ 7e-4
    model = initialize(build_model({"arch": "fc", "widths": [1000], "init": init}, (fan_in,), 2), scale, seed=5)
    w = model.fc1.weight.detach().double()
    assert w.std().item() == pytest.approx(scale * _GAIN[init] / math.sqrt(fan_in), rel=0.01)
    assert abs(w.mean().item()) < 5e-3 * scale / math.sqrt(fan_in)
    assert torch.all(model.fc1.bias == 0)


@pytest.mark.parametrize("init", ["he", "lecun"])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_conv_weight_std_under_each_convention(init, scale):
    # fan_in = C_in·k·k = 16·5·5 = 400; 512 filters × 400 = 204 800 weights: SE ≈ 1.6e-3.
    spec = {"arch": "cnn2", "filters": 512, "kernel_size": 5, "hidden": 2, "init": init}
    model = initialize(build_model(spec, (16, 1, 1), 2), scale, seed=1)
    w = model.conv1.weight.detach().double()
    assert w.std().item() == pytest.approx(scale * _GAIN[init] / math.sqrt(400), rel=0.012)
    assert torch.all(model.conv1.bias == 0)


def test_lecun_is_he_divided_by_sqrt_two_and_he_is_the_default():
    shape, spec = (3, 8, 8), {"arch": "cnn2", "filters": 8, "hidden": 4}
    default = initialize(build_model(spec, shape, 3), 1.5, seed=4).state_dict()
    he = initialize(build_model({**spec, "init": "he"}, shape, 3), 1.5, seed=4).state_dict()
    lecun = initialize(build_model({**spec, "init": "lecun"}, shape, 3), 1.5, seed=4).state_dict()
    for key in default:
        assert torch.equal(default[key], he[key]), key  # the default: exactly the He model
        if key.endswith("weight"):
            assert torch.allclose(lecun[key] * math.sqrt(2.0), he[key], rtol=1e-6, atol=0), key
    # An explicit convention wins over the one the spec named.
    explicit = initialize(build_model({**spec, "init": "lecun"}, shape, 3), 1.5, seed=4, init="he")
    assert torch.equal(explicit.state_dict()["conv1.weight"], he["conv1.weight"])


def test_init_option_is_checked():
    assert model_options({"arch": "vgg16", "init": "lecun"})["init"] == "lecun"
    assert model_options({"arch": "resnet18"})["init"] == "he"
    with pytest.raises(ValueError, match="he, lecun"):
        model_options({"arch": "fc", "init": "xavier"})
    with pytest.raises(ValueError, match="he, lecun"):
        build_model({"arch": "fc", "widths": [3], "init": "orthogonal"}, (4,), 2)
    with pytest.raises(ValueError, match="he, lecun"):
        initialize(build_model({"arch": "fc", "widths": [3]}, (4,), 2), 1.0, seed=0, init="glorot")


def test_initialize_zeroes_biases_and_resets_batchnorm():
    model = build_model({"arch": "resnet18"}, (3, 32, 32), 10)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.3)
    initialize(model, 1.0, seed=0)
    checked_bn = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert module.bias is None or torch.all(module.bias == 0)
            assert not torch.all(module.weight == 0.3)
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
            checked_bn += 1
    assert checked_bn > 0
    assert torch.all(model.fc.bias == 0)


def _init_state(seed, scale=1.0):
    model = build_model({"arch": "cnn2", "filters": 4, "hidden": 5}, (2, 4, 4), 3)
    return {k: v.clone() for k, v in initialize(model, scale, seed).state_dict().items()}


def test_initialize_is_deterministic_per_seed():
    a, b, c = _init_state(1), _init_state(1), _init_state(2)
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for key in ("conv1.weight", "fc1.weight", "classifier.weight"):
        assert not torch.equal(a[key], c[key]), key


def test_initialize_does_not_depend_on_global_rng():
    torch.manual_seed(0)
    a = _init_state(5)
    torch.manual_seed(123)
    torch.randn(10)
    b = _init_state(5)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_init_scale_is_an_exact_multiple():
    one, two, tiny = _init_state(7, 1.0), _init_state(7, 2.0), _init_state(7, 0.25)
    for key in one:
        if key.endswith("weight"):
            # multiplying by a power of two is exact in floating point
            assert torch.equal(two[key], 2.0 * one[key]), key
            assert torch.equal(tiny[key], 0.25 * one[key]), key
        else:
            assert torch.all(two[key] == 0), key


# --------------------------------------------------------------------------- upper_width

_SHAPES = {"cnn2": (1, 8, 8), "fc": (30,), "vgg16": (3, 32, 32), "vgg16_bn": (3, 32, 32), "resnet18": (3, 32, 32)}
_SMALL = {"cnn2": {"filters": 4, "hidden": 32}, "fc": {"widths": [16, 32, 8]}}


def _init_state_of(spec, seed=3):
    model = initialize(build_model(spec, _SHAPES[spec["arch"]], 5), 1.0, seed)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_upper_width_is_a_default_option_of_every_arch(arch):
    assert model_options({"arch": arch})["upper_width"] == 1.0
    assert model_options({"arch": arch, "upper_width": 2})["upper_width"] == 2
    with pytest.raises(ValueError, match="do not apply"):
        model_options({"arch": arch, "upper_widht": 2.0})  # unknown options still refused


@pytest.mark.parametrize("bad", [0, -1.0, 0.0, float("nan"), float("inf"), "2", True, None])
def test_upper_width_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="upper_width"):
        model_options({"arch": "cnn2", "upper_width": bad})


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_upper_width_one_is_exactly_todays_model(arch):
    base = {"arch": arch, **_SMALL.get(arch, {})}
    with_default, a = _init_state_of(base)
    with_option, b = _init_state_of({**base, "upper_width": 1.0})
    assert [n for n, _ in with_default.named_modules()] == [n for n, _ in with_option.named_modules()]
    assert list(a) == list(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key
    x = torch.randn(2, *_SHAPES[arch], generator=torch.Generator().manual_seed(0))
    with_default.eval(), with_option.eval()
    with torch.no_grad():
        assert torch.equal(with_default(x), with_option(x))


def test_upper_width_cnn2_multiplies_hidden():
    model = build_model({"arch": "cnn2", "filters": 4, "hidden": 32, "upper_width": 2.0}, (1, 8, 8), 3)
    assert model.conv1.out_channels == 4  # the first layer is not widened
    assert model.fc1.out_features == 64 and model.classifier.in_features == 64
    assert build_model({"arch": "cnn2", "hidden": 3, "upper_width": 1.5}, (1, 8, 8), 3).fc1.out_features == 5  # 4.5 → 5
    assert build_model({"arch": "cnn2", "hidden": 3, "upper_width": 0.01}, (1, 8, 8), 3).fc1.out_features == 1
    assert _forward(model, (1, 8, 8)).shape == (2, 3)


def test_upper_width_fc_multiplies_widths_after_the_first():
    model = build_model({"arch": "fc", "widths": [16, 32, 8], "upper_width": 1.5}, (30,), 3)
    assert [model.fc1.out_features, model.fc2.out_features, model.fc3.out_features] == [16, 48, 12]
    assert model.fc2.in_features == 16 and model.classifier.in_features == 12
    assert _forward(model, (30,)).shape == (2, 3)


@pytest.mark.parametrize("arch", ["vgg16", "vgg16_bn"])
def test_upper_width_vgg_widens_the_last_two_blocks(arch):
    base = build_model({"arch": arch}, (3, 32, 32), 4)
    model = build_model({"arch": arch, "upper_width": 2.0}, (3, 32, 32), 4)
    assert weight_layers(model) == weight_layers(base)  # same layers, same names
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    base_convs = [m for m in base.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256] + [1024] * 6
    assert [c.out_channels for c in base_convs] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    assert convs[7].in_channels == 256 and convs[8].in_channels == 1024
    if arch == "vgg16_bn":
        bns = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
        assert [b.num_features for b in bns] == [c.out_channels for c in convs]
    assert model.classifier.in_features == 1024
    assert _forward(model, (3, 32, 32)).shape == (2, 4)


def test_upper_width_vgg_gray_input_and_wide_image():
    model = build_model({"arch": "vgg16", "upper_width": 1.5}, (1, 64, 32), 3)
    assert model.features[0].in_channels == 1
    assert model.classifier.in_features == 768 * 2
    assert _forward(model, (1, 64, 32)).shape == (2, 3)


def test_upper_width_resnet_widens_layer3_and_layer4():
    base = build_model({"arch": "resnet18"}, (3, 32, 32), 4)
    model = build_model({"arch": "resnet18", "upper_width": 2.0}, (3, 32, 32), 4)
    assert list(model.state_dict()) == list(base.state_dict())  # same names, same order
    assert model.layer1[0].conv1.out_channels == 64 and model.layer2[1].conv2.out_channels == 128
    assert model.layer3[0].conv1.in_channels == 128
    assert model.layer3[0].conv1.out_channels == 512 and model.layer3[0].downsample[0].out_channels == 512
    assert model.layer3[1].bn2.num_features == 512
    assert model.layer4[0].conv1.in_channels == 512 and model.layer4[0].downsample[0].in_channels == 512
    assert model.layer4[1].conv2.out_channels == 1024 and model.fc.in_features == 1024
    assert type(model.layer4[1]) is type(base.layer4[1])
    assert _forward(model, (3, 32, 32)).shape == (2, 4)
    initialize(model, 1.0, seed=0)  # every module of the widened layers is initialized
    assert torch.all(model.layer4[1].bn2.weight == 1)


# --------------------------------------------------------------------------- resnet blocks


def test_resnet18_is_torchvisions_resnet18_with_one_relu_per_activation():
    from torchvision.models import resnet18

    torch.manual_seed(11)
    ours = build_model({"arch": "resnet18"}, (3, 32, 32), 7)
    torch.manual_seed(11)
    ref = resnet18(weights=None, num_classes=7)
    ref.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    ref.maxpool = nn.Identity()
    # same state (keys, order, shapes) and, built from the same global RNG state, values
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the same initialization for a seed, and the same function, in eval and train mode
    initialize(ours, 1.0, seed=2)
    initialize(ref, 1.0, seed=2)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for train in (False, True):
        ours.train(train), ref.train(train)
        with torch.no_grad():
            assert torch.equal(ours(x), ref(x))
    # the only module difference: each block's second ReLU is a module of its own
    extra = {n for n, _ in ours.named_modules()} - {n for n, _ in ref.named_modules()}
    assert extra == {f"layer{i}.{j}.relu2" for i in range(1, 5) for j in range(2)}
    assert all(ours.get_submodule(n) is not ours.get_submodule(n[:-1]) for n in extra)


def test_an_own_models_init_is_the_workflows_not_the_factorys():
    # examples.tiny_convnet:build takes no `init` keyword: it must not be passed on.
    spec = {"arch": "examples.tiny_convnet:build", "filters": 64, "init": "lecun"}
    lecun = initialize(build_model(spec, (16, 6, 6), 3), 1.0, seed=2)
    he = initialize(build_model({**spec, "init": "he"}, (16, 6, 6), 3), 1.0, seed=2)
    first = [name for name, m in lecun.named_modules() if isinstance(m, nn.Conv2d)][0]
    w_lecun = lecun.get_submodule(first).weight.detach()
    assert torch.allclose(w_lecun * math.sqrt(2.0), he.get_submodule(first).weight.detach(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("arch", ["cnn2", "fc", "vgg16", "vgg16_bn", "resnet18"])
def test_init_scale_changes_the_hidden_features_unless_batch_norm_divides_it_out(arch):
    """What an init-scale experiment varies: the features below the classifier at
    initialization, in training mode (batch statistics). They scale with init_scale in
    a plain network and do not under batch norm; architectures.SCALE_INVARIANT lists
    exactly the networks measured invariant here."""
    from randlabels.models.architectures import SCALE_INVARIANT

    shape = (3, 32, 32)
    model = build_model({"arch": arch}, shape, 10)
    path = head_prefix(model).split(".")
    parent = model
    for part in path[:-1]:
        parent = getattr(parent, part)
    setattr(parent, path[-1], nn.Identity())  # the classifier's input
    model.train()
    inputs = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    features = {}
    for scale in (1.0, 2.0):
        with torch.no_grad():
            features[scale] = initialize(model, scale, seed=3)(inputs)
    change = ((features[2.0] - features[1.0]).norm() / features[1.0].norm()).item()
    if arch in SCALE_INVARIANT:
        assert change < 1e-3, change
    else:
        assert change > 0.5, change  # ReLU layers without batch norm: at least ×2
