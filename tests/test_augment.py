"""Random crops and flips on the device (randlabels.data.augment), the Trainer's use of them,
and the Trainer's learning-curve probe."""

from __future__ import annotations

import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from randlabels.data.augment import Augmentation
from randlabels.models.networks import build_model, initialize
from randlabels.training.engine import DeviceData, TrainConfig, Trainer
from randlabels.training.packed import PackedTrainer, with_labels
from randlabels.training.resume import ResumeStore, StopSignals, TrainingInterrupted

CNN = {"arch": "cnn2", "filters": 4, "kernel_size": 3, "hidden": 8}
AUGMENT = {"crop": 2, "flip": True}


def _batch(b=16, c=3, h=6, w=7, seed=0):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def _reference(images, crop, dy, dx, flip):
    """The augmentation by a plain loop over the images."""
    padded = F.pad(images, (crop,) * 4)
    h, w = images.shape[-2:]
    out = []
    for i in range(len(images)):
        image = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out.append(image.flip(-1) if flip[i] else image)
    return torch.stack(out)


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("settings", [None, {}, {"crop": 0}, {"flip": False}, {"crop": 0, "flip": False}])
def test_settings_that_ask_for_nothing_give_none(settings):
    assert Augmentation.from_settings(settings) is None


def test_settings_give_the_augmentation():
    assert Augmentation.from_settings({"crop": 4, "flip": True}) == Augmentation(crop=4, flip=True)
    assert Augmentation.from_settings({"crop": 4}) == Augmentation(crop=4, flip=False)
    assert Augmentation.from_settings({"flip": True}) == Augmentation(crop=0, flip=True)


@pytest.mark.parametrize("settings, message", [
    ({"crop": -1}, "crop"),
    ({"crop": 1.5}, "crop"),
    ({"crop": "4"}, "crop"),
    ({"flip": "yes"}, "flip"),
    ({"crop": 4, "flop": True}, "flop"),
    ("crop", "mapping"),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        Augmentation.from_settings(settings)
    with pytest.raises(ValueError, match=message):
        TrainConfig(epochs=1, augment=settings)


def test_train_config_with_augment_stays_hashable():
    config = TrainConfig(epochs=1, augment={"crop": 4, "flip": True})
    assert hash(config) == hash(TrainConfig(epochs=1))  # the dict is left out of the hash
    assert config == TrainConfig.from_dict({"epochs": 1, "augment": {"crop": 4, "flip": True}})
    assert config != TrainConfig(epochs=1)


# --------------------------------------------------------------------------- apply


def test_crop_equals_a_loop_over_the_drawn_offsets():
    augmentation, images = Augmentation(crop=3), _batch()
    dy, dx, flip = augmentation.draw(len(images), torch.Generator().manual_seed(5))
    assert not flip.any()
    out = augmentation.apply(images, torch.Generator().manual_seed(5))
    assert out.shape == images.shape
    assert torch.equal(out, _reference(images, 3, dy, dx, flip))
    assert not torch.equal(out, images)


def test_crop_and_flip_equal_a_loop_over_the_drawn_draws():
    augmentation, images = Augmentation(crop=2, flip=True), _batch(32)
    dy, dx, flip = augmentation.draw(len(images), torch.Generator().manual_seed(6))
    out = augmentation.apply(images, torch.Generator().manual_seed(6))
    assert torch.equal(out, _reference(images, 2, dy, dx, flip))


def test_padding_is_zero_that_is_the_dataset_mean():
    augmentation = Augmentation(crop=2)
    images = torch.ones(1, 1, 4, 4)
    out = augmentation.transform(images, torch.tensor([0]), torch.tensor([4]), torch.tensor([False]))
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 2:, :2] = 1.0  # the window at (0, 4) of the padded 8×8 frame; the rest is padding
    assert torch.equal(out, expected)


def test_flip_only_mirrors_some_images_and_keeps_the_others():
    images = _batch(64)
    out = Augmentation(flip=True).apply(images, torch.Generator().manual_seed(0))
    same = [torch.equal(o, i) for o, i in zip(out, images)]
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]
    assert all(s != m for s, m in zip(same, mirrored))  # exactly one of the two
    assert 10 < sum(mirrored) < 54  # both happen (p = 1/2 each)


def test_all_offsets_occur_and_no_others():
    augmentation, generator = Augmentation(crop=4), torch.Generator().manual_seed(1)
    dy, dx, _ = augmentation.draw(2000, generator)
    assert sorted(dy.unique().tolist()) == list(range(9))
    assert sorted(dx.unique().tolist()) == list(range(9))
    assert not torch.equal(dy, dx)  # drawn independently


def test_same_seed_same_output_other_seed_other_output():
    augmentation, images = Augmentation(crop=4, flip=True), _batch(8, h=32, w=32)
    first = augmentation.apply(images, torch.Generator().manual_seed(3))
    assert torch.equal(first, augmentation.apply(images, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, augmentation.apply(images, torch.Generator().manual_seed(4)))


def test_channels_last_layout_is_kept():
    images = _batch().contiguous(memory_format=torch.channels_last)
    out = Augmentation(crop=1, flip=True).apply(images, torch.Generator().manual_seed(0))
    assert out.is_contiguous(memory_format=torch.channels_last)
    reference = Augmentation(crop=1, flip=True).apply(images.contiguous(), torch.Generator().manual_seed(0))
    assert torch.equal(out, reference)


def test_vector_data_cannot_be_augmented():
    with pytest.raises(ValueError, match="images"):
        Augmentation(flip=True).apply(torch.zeros(4, 5), torch.Generator())
    x = np.zeros((8, 5), np.float32)
    data = DeviceData(x, np.zeros(8), np.zeros(5), np.ones(5))
    model = initialize(build_model({"arch": "fc", "widths": [4]}, (5,), 2), 1.0, 0)
    config = TrainConfig(epochs=1, augment={"crop": 4})
    with pytest.raises(ValueError, match="augment"):
        Trainer(model, data, config, seed=0)
    with pytest.raises(ValueError, match="augment"):
        PackedTrainer([model, model], data, config, [0, 1])


# --------------------------------------------------------------------------- Trainer


def _images(n=44, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), rng.integers(0, 3, n)


def _data(cls=DeviceData, **kwargs):
    images, labels = _images()
    return cls(images, labels, [0.5], [0.25], **kwargs)


def _config(augment=AUGMENT, epochs=3):
    return TrainConfig(epochs=epochs, batch_size=8, lr=0.05, momentum=0.9, weight_decay=1e-4,
                       schedule="cosine", augment=augment)


def _trainer(data=None, augment=AUGMENT, seed=11, **kwargs):
    model = initialize(build_model(CNN, (1, 8, 8), 3), 1.0, 7)
    return Trainer(model, data or _data(), _config(augment), seed=seed, test_data=_data(), **kwargs)


def _same(a: pd.DataFrame, b: pd.DataFrame):
    pd.testing.assert_frame_equal(a.drop(columns="seconds", errors="ignore"), b.drop(columns="seconds", errors="ignore"))


def _same_states(a: dict, b: dict):
    assert a.keys() == b.keys()
    for epoch in a:
        for name in a[epoch]:
            assert torch.equal(a[epoch][name], b[epoch][name]), (epoch, name)


def test_training_with_augmentation_differs_from_training_without():
    plain = _trainer(augment=None).fit(checkpoint_epochs=[0, 3], eval_every=4)
    off = _trainer(augment={"crop": 0, "flip": False}).fit(checkpoint_epochs=[0, 3], eval_every=4)
    augmented = _trainer().fit(checkpoint_epochs=[0, 3], eval_every=4)
    _same(plain.metrics, off.metrics)  # all off: exactly the plain run
    _same_states(plain.checkpoints, off.checkpoints)
    # the initialization is evaluated on the unaugmented data in both runs
    _same(plain.metrics.iloc[:1], augmented.metrics.iloc[:1])
    assert np.isfinite(augmented.metrics["loss"]).all()
    assert not torch.equal(plain.checkpoints[3]["conv1.weight"], augmented.checkpoints[3]["conv1.weight"])
    assert plain.metrics["loss"].iloc[-1] != augmented.metrics["loss"].iloc[-1]


def test_training_batches_are_augmented_evaluation_batches_are_not():
    trainer = _trainer()
    index = torch.arange(8)
    inputs, labels = trainer.training_batch(index)
    plain, plain_labels = trainer.data.batch(index)
    assert torch.equal(labels, plain_labels) and not torch.equal(inputs, plain)
    # the draws come from the trainer's generator, after the batch is cut
    generator = torch.Generator().manual_seed(11)
    assert torch.equal(inputs, Augmentation(**AUGMENT).apply(plain, generator))
    assert torch.equal(trainer.generator.get_state(), generator.get_state())


class SignalOnBatch(DeviceData):
    """Data that sends this process SIGTERM when its ``at``-th training batch is cut."""

    def __init__(self, *args, at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.at = 0, at

    def batch(self, index):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().batch(index)


def _weight_norm(model):
    with torch.no_grad():
        return {"conv1_norm": model.conv1.weight.norm().item()}


# 44 samples in batches of 8: 6 steps per epoch; step 9 is mid-epoch 2, step 12 ends it.
@pytest.mark.parametrize("at_batch", [9, 12])
def test_resume_with_augmentation_is_bit_exact(tmp_path, at_batch):
    fit = dict(checkpoint_epochs=[0, 2, 3], eval_every=3)
    uninterrupted = _trainer(probe=_weight_norm).fit(**fit)
    store = ResumeStore(tmp_path / "state.pt", "augmented")
    with StopSignals() as stop, pytest.raises(TrainingInterrupted) as info:
        _trainer(_data(SignalOnBatch, at=at_batch), probe=_weight_norm).fit(**fit, resume=store, stop=stop)
    assert info.value.step == at_batch
    resumed = _trainer(probe=_weight_norm).fit(**fit, resume=store)
    _same(resumed.metrics, uninterrupted.metrics)
    _same(resumed.curve, uninterrupted.curve)
    _same_states(resumed.checkpoints, uninterrupted.checkpoints)


# --------------------------------------------------------------------------- packed


def test_packed_replicas_with_augmentation_match_separate_runs():
    images, _ = _images()
    base = DeviceData(images, np.zeros(len(images)), [0.5], [0.25])
    rng = np.random.default_rng(1)
    datas = [with_labels(base, rng.integers(0, 3, len(images))) for _ in range(3)]
    config, seeds = _config(), [100, 101, 102]
    fit = dict(checkpoint_epochs=[0, 3], eval_every=4)

    def models():
        return [initialize(build_model(CNN, (1, 8, 8), 3), 1.0, s) for s in (10, 11, 12)]

    separate = [Trainer(m, d, config, seed=s).fit(**fit) for m, d, s in zip(models(), datas, seeds)]
    packed = PackedTrainer(models(), datas, config, seeds).fit(**fit)
    plain = PackedTrainer(models(), datas, _config(None), seeds).fit(**fit)
    for a, b, c in zip(separate, packed, plain):  # tolerance as in tests/test_packed.py
        assert a.metrics["step"].tolist() == b.metrics["step"].tolist()
        for table in ("metrics", "curve"):
            for column in ("loss", "train_acc"):
                np.testing.assert_allclose(getattr(b, table)[column], getattr(a, table)[column], rtol=1e-4, atol=1e-6)
        for key in a.checkpoints[3]:
            np.testing.assert_allclose(b.checkpoints[3][key].numpy(), a.checkpoints[3][key].numpy(),
                                       rtol=1e-4, atol=1e-6, err_msg=key)
        assert not torch.allclose(b.checkpoints[3]["conv1.weight"], c.checkpoints[3]["conv1.weight"])


# --------------------------------------------------------------------------- probe


def test_probe_columns_join_the_learning_curve():
    calls = []

    def probe(model):
        calls.append(model.training)
        return {**_weight_norm(model), "probe_calls": float(len(calls))}

    trainer = _trainer(augment=None, probe=probe)
    result = trainer.fit(checkpoint_epochs=[0, 1, 2, 3], eval_every=6)  # 6 steps per epoch
    curve = result.curve
    assert curve["step"].tolist() == [0, 6, 12, 18]
    assert {"conv1_norm", "probe_calls"} <= set(curve.columns)
    assert curve["probe_calls"].tolist() == [1.0, 2.0, 3.0, 4.0]  # once per curve row
    for row, epoch in zip(curve.itertuples(), [0, 1, 2, 3]):
        assert row.conv1_norm == result.checkpoints[epoch]["conv1.weight"].norm().item()
    assert "conv1_norm" not in result.metrics.columns  # the per-epoch rows stay as they were
    # the probe changes no numbers of the run itself
    plain = _trainer(augment=None).fit(checkpoint_epochs=[0, 1, 2, 3], eval_every=6)
    _same(result.metrics, plain.metrics)
    _same(result.curve.drop(columns=["conv1_norm", "probe_calls"]), plain.curve)


def test_probe_may_not_overwrite_curve_columns():
    trainer = _trainer(augment=None, probe=lambda model: {"loss": 0.0})
    with pytest.raises(ValueError, match="loss"):
        trainer.fit(eval_every=6)


# --------------------------------------------------------------------------- CUDA


@pytest.mark.gpu  # deselected by default; `make test-gpu` runs it on a CUDA machine
def test_cuda_augmentation_matches_the_loop_and_never_synchronizes():
    augmentation, images = Augmentation(**AUGMENT), _batch(32)
    dy, dx, flip = augmentation.draw(32, torch.Generator(device="cuda").manual_seed(0))
    out = augmentation.apply(images.cuda(), torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(out.cpu(), _reference(images, 2, dy.cpu(), dx.cpu(), flip.cpu()))

    images, labels = _images()
    data = DeviceData(np.repeat(images, 3, axis=3), labels, [0.5] * 3, [0.25] * 3, device="cuda")
    model = initialize(build_model(CNN, (3, 8, 8), 3), 1.0, 7)
    trainer = Trainer(model, data, _config(), seed=0)
    order = data.permutation(trainer.generator)
    inputs, _ = trainer.training_batch(order[:8])
    assert inputs.is_contiguous(memory_format=torch.channels_last)
    loss_sum = trainer.train_step(inputs, labels=data.labels[order[:8]]).double()  # cuDNN picks algorithms
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b in range(1, 5):
            loss_sum += trainer.train_step(*trainer.training_batch(order[b * 8 : (b + 1) * 8]))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss_sum).item()
