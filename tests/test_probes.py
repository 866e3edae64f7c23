"""Tests of randlabels.analysis.probes: layer-input covariance and ReLU activity on known models."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from randlabels.models.networks import build_model, initialize
from randlabels.analysis.probes import (
    activation_probe,
    activation_statistics,
    layer_input_covariance,
)
from randlabels.analysis.covariance import patch_covariance


def _batches(n_batches=3, shape=(2, 5, 5), batch=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *shape, generator=gen) for _ in range(n_batches)]


def _np_cov(samples: np.ndarray) -> np.ndarray:
    return np.cov(samples, rowvar=False)


# --------------------------------------------------------------------------- Σx


def test_first_conv_layer_equals_patch_covariance():
    model = initialize(build_model({"arch": "cnn2", "filters": 3, "kernel_size": 3, "hidden": 4}, (2, 5, 5), 2), 1.0, 0)
    batches = _batches()
    acc = layer_input_covariance(model, "conv1", batches)
    ref = patch_covariance(batches, kernel_size=3, padding=1)
    assert acc.count == ref.count == 3 * 4 * 25
    np.testing.assert_allclose(acc.covariance(), ref.covariance(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(acc.mean, ref.mean, rtol=1e-10, atol=1e-12)


def test_strided_conv_equals_patch_covariance_with_same_geometry():
    model = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(2, 4, kernel_size=(3, 2), stride=2, padding=(0, 1)), relu=nn.ReLU(), flat=nn.Flatten(),
    ))
    batches = _batches(shape=(2, 7, 6))
    acc = layer_input_covariance(model, "conv", batches)
    ref = patch_covariance(batches, kernel_size=(3, 2), stride=2, padding=(0, 1))
    assert acc.dim == 2 * 3 * 2
    assert acc.count == ref.count
    np.testing.assert_allclose(acc.covariance(), ref.covariance(), rtol=1e-10, atol=1e-12)
    # and differs from the unpadded, unstrided geometry (the layer's own settings matter)
    wrong = patch_covariance(batches, kernel_size=(3, 2))
    assert wrong.count != acc.count


def test_first_linear_layer_equals_covariance_of_flattened_inputs():
    model = initialize(build_model({"arch": "fc", "widths": [3]}, (2, 3, 3), 2), 1.0, 0)
    batches = _batches(shape=(2, 3, 3))
    acc = layer_input_covariance(model, "fc1", batches)
    flat = torch.cat(batches).reshape(12, -1).double().numpy()
    np.testing.assert_allclose(acc.covariance(), _np_cov(flat), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(acc.mean, flat.mean(axis=0), rtol=1e-10, atol=1e-12)


def test_deeper_layer_sees_the_activations_below():
    model = initialize(build_model({"arch": "cnn2", "filters": 2, "kernel_size": 3, "hidden": 3}, (1, 3, 3), 2), 1.0, 0)
    with torch.no_grad():  # make some ReLU units inactive so the ReLU matters
        model.conv1.bias.copy_(torch.tensor([0.5, -0.5]))
    batches = _batches(shape=(1, 3, 3), n_batches=2, batch=8)
    acc = layer_input_covariance(model, "fc1", batches)
    # by hand: conv (padding 1) → ReLU → flatten, in float64
    w = model.conv1.weight.detach().double()
    b = model.conv1.bias.detach().double()
    x = torch.cat(batches).double()
    hidden = torch.relu(nn.functional.conv2d(x, w, b, padding=1)).reshape(16, -1).numpy()
    assert acc.dim == 2 * 3 * 3
    np.testing.assert_allclose(acc.covariance(), _np_cov(hidden), rtol=1e-5, atol=1e-6)
    # the classifier's input goes through fc1 and the second ReLU as well
    acc2 = layer_input_covariance(model, "classifier", batches)
    h2 = torch.relu(torch.from_numpy(hidden) @ model.fc1.weight.detach().double().T + model.fc1.bias.detach().double())
    np.testing.assert_allclose(acc2.covariance(), _np_cov(h2.numpy()), rtol=1e-5, atol=1e-6)


def test_covariance_restores_training_mode_and_removes_hook():
    model = build_model({"arch": "fc", "widths": [3]}, (4,), 2)
    model.train()
    layer_input_covariance(model, "fc1", [torch.randn(5, 4)])
    assert model.training
    assert not model.fc1._forward_pre_hooks
    model.eval()
    layer_input_covariance(model, "fc1", [torch.randn(5, 4)])
    assert not model.training


def test_covariance_uses_eval_mode_for_batchnorm():
    # a BatchNorm below the layer must use its running statistics (eval), not the batch's
    model = nn.Sequential(OrderedDict(bn=nn.BatchNorm1d(2), fc=nn.Linear(2, 2)))
    with torch.no_grad():
        model.bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
        model.bn.running_var.copy_(torch.tensor([4.0, 0.25]))
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    acc = layer_input_covariance(model, "fc", [x])
    expected = ((x.double() - torch.tensor([1.0, -1.0], dtype=torch.float64))
                / torch.sqrt(torch.tensor([4.0, 0.25], dtype=torch.float64) + 1e-5)).numpy()
    np.testing.assert_allclose(acc.covariance(), _np_cov(expected), rtol=1e-5)
    np.testing.assert_array_equal(model.bn.running_mean.numpy(), [1.0, -1.0])  # not updated


def test_covariance_unknown_layer():
    model = build_model({"arch": "fc", "widths": [3]}, (4,), 2)
    with pytest.raises(KeyError):
        layer_input_covariance(model, "nope", [torch.randn(2, 4)])


# --------------------------------------------------------------------------- activations


def _identity_model():
    """x → ReLU(I·x + b) with b = (0, 0, −10): unit 2 can never be positive on |x| < 10."""
    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(3))
        lin.bias.copy_(torch.tensor([0.0, 0.0, -10.0]))
    return nn.Sequential(OrderedDict(lin=lin, act=nn.ReLU()))


def test_activation_statistics_exact_on_identity_linear():
    x = torch.tensor([[1.0, -1.0, 2.0], [-2.0, 3.0, 1.0], [0.5, 0.5, 0.5], [3.0, -1.0, 0.0]])
    # split in two batches: "ever active" must be accumulated over batches
    table = activation_statistics(_identity_model(), [x[:2], x[2:]])
    assert list(table.columns) == ["module", "frac_active", "frac_dead", "mean_activation"]
    assert table["module"].tolist() == ["act"]
    row = table.iloc[0]
    # unit 0 positive on 3 of 4 rows, unit 1 on 2 of 4, unit 2 never: 5 of 12 values
    assert row["frac_active"] == pytest.approx(5 / 12)
    assert row["frac_dead"] == pytest.approx(1 / 3)
    # sum of ReLU outputs: (1 + 0.5 + 3) + (3 + 0.5) + 0 = 8 over 12 values
    assert row["mean_activation"] == pytest.approx(8 / 12)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_unit_active_in_one_batch_only_is_not_dead(order):
    x = torch.tensor([[-2.0, 1.0, 0.0], [-1.0, -1.0, 0.0]])
    # unit 0 never positive, unit 1 positive in one batch only (first or last), unit 2 never
    table = activation_statistics(_identity_model(), [x[order[0]:order[0] + 1], x[order[1]:order[1] + 1]])
    assert table.iloc[0]["frac_dead"] == pytest.approx(2 / 3)
    assert table.iloc[0]["frac_active"] == pytest.approx(1 / 6)


def test_activation_statistics_conv_units_are_channels():
    conv = nn.Conv2d(1, 2, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, 0.0]))
    lin = nn.Linear(8, 1)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(-4.0)
    model = nn.Sequential(OrderedDict(conv=conv, r1=nn.ReLU(), flat=nn.Flatten(), fc=lin, r2=nn.ReLU()))
    # two 1-channel 2×2 images; channel 0 = ReLU(x), channel 1 = ReLU(−x)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, -1.0]]).view(2, 1, 2, 2)
    table = activation_statistics(model, [x]).set_index("module")
    assert table.index.tolist() == ["r1", "r2"]
    # r1: 2 images × 2 channels × 4 positions = 16 values; channel 0 positive at 7 of its
    # 8 values, channel 1 at 1 (the −1): 8 of 16, no dead channel (a unit is a channel)
    assert table.loc["r1", "frac_active"] == pytest.approx(8 / 16)
    assert table.loc["r1", "frac_dead"] == 0.0
    assert table.loc["r1", "mean_activation"] == pytest.approx((10 + 18 + 1) / 16)
    # r2: one unit = ReLU(sum of the 8 ReLU outputs − 4): image 1 → 10 − 4 = 6, image 2 → 19 − 4 = 15
    assert table.loc["r2", "frac_active"] == 1.0
    assert table.loc["r2", "frac_dead"] == 0.0
    assert table.loc["r2", "mean_activation"] == pytest.approx((6 + 15) / 2)


def test_activation_statistics_conv_dead_channel():
    conv = nn.Conv2d(2, 2, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, -100.0]))  # channel 1 dead on |x| < 100
    model = nn.Sequential(OrderedDict(conv=conv, act=nn.ReLU()))
    # three images, channel 0 positive everywhere in each (1, 2, 3), channel 1 never:
    # every image has active values, but one of the two channels (units) is dead
    x = torch.stack([torch.full((2, 3, 3), v) for v in (1.0, 2.0, 3.0)])
    row = activation_statistics(model, [x]).iloc[0]
    assert row["frac_dead"] == pytest.approx(0.5)
    assert row["frac_active"] == pytest.approx(27 / 54)
    assert row["mean_activation"] == pytest.approx(9 * (1 + 2 + 3) / 54)


def test_activation_statistics_restores_mode_and_hooks():
    model = _identity_model()
    model.train()
    activation_statistics(model, [torch.zeros(1, 3)])
    assert model.training
    assert not model.act._forward_hooks


def test_shared_relu_module_refused():
    # a ReLU module applied twice per forward would mix two activations under one name
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.act = nn.Linear(3, 3), nn.ReLU()

        def forward(self, x):
            return self.act(self.lin(self.act(x)))

    with pytest.raises(ValueError, match="act"):
        activation_statistics(Twice(), [torch.randn(2, 3)])


def test_resnet18_reports_both_relus_of_every_block():
    model = initialize(build_model({"arch": "resnet18"}, (3, 32, 32), 3), 1.0, 0)
    table = activation_statistics(model, [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))])
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert table["module"].tolist() == ["relu"] + [f"{b}.{r}" for b in blocks for r in ("relu", "relu2")]
    # the second ReLU of a block sees the residual sum: check one value by hand
    block = model.layer1[0]
    captured = {}
    handle = block.register_forward_hook(lambda _m, _a, out: captured.setdefault("out", out.clone()))
    activation_statistics(model, [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))])
    handle.remove()
    row = table.set_index("module").loc["layer1.0.relu2"]
    assert row["mean_activation"] == pytest.approx(captured["out"].mean().item(), rel=1e-5)
    assert row["frac_active"] == pytest.approx((captured["out"] > 0).float().mean().item())


# --------------------------------------------------------------------------- activation probe


def test_activation_probe_flattens_activation_statistics():
    model = initialize(build_model({"arch": "cnn2", "filters": 3, "kernel_size": 3, "hidden": 4}, (2, 5, 5), 2), 1.0, 0)
    with torch.no_grad():
        model.conv1.bias.copy_(torch.tensor([0.0, -50.0, 0.1]))  # one dead channel
    batches = _batches()
    calls = []

    def batches_fn():
        calls.append(1)
        return iter(batches)  # a fresh iterator each call

    probe = activation_probe(batches_fn)
    model.train()
    values = probe(model)
    assert model.training  # mode restored
    table = activation_statistics(model, batches)
    expected = {
        f"{stat}:{row['module']}": row[stat]
        for _, row in table.iterrows()
        for stat in ("frac_active", "frac_dead", "mean_activation")
    }
    assert set(values) == {f"{s}:{m}" for m in ("relu1", "relu2") for s in ("frac_active", "frac_dead", "mean_activation")}
    assert values == pytest.approx(expected)
    assert all(type(v) is float for v in values.values())
    assert values["frac_dead:relu1"] == pytest.approx(1 / 3)
    assert probe(model) == values and len(calls) == 2  # batches_fn is called on every probe
