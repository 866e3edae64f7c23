"""Tests of randlabels.transfer: rescaled pre-trained states, head reset, checkpoint files."""

from __future__ import annotations

import pytest
import torch

from randlabels.models import build_model
from randlabels.transfer import (
    clone_state,
    fresh_model,
    load_into,
    read_checkpoints,
    read_init,
    save_checkpoints,
    save_init,
    transferred_state,
)

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
