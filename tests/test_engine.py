"""Tests of randlabels.training.engine on the CPU: data handling, determinism, metrics, divergence."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from randlabels.models.networks import build_model, initialize
from randlabels.training.engine import DeviceData, TrainConfig, Trainer

METRIC_COLUMNS = ["epoch", "step", "loss", "train_acc", "test_acc", "lr", "diverged", "seconds"]


def _images(n=10, h=3, w=4, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8), rng.integers(0, 5, n)


def _blobs(n=96, seed=0):
    """Two Gaussian blobs at ±2 on the first axis, 4 features: linearly separable."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = rng.standard_normal((n, 4)).astype(np.float32) * 0.5
    x[:, 0] += np.where(labels == 1, 2.0, -2.0)
    return x, labels


def _vector_data(n=96, seed=0):
    x, y = _blobs(n, seed)
    return DeviceData(x, y, np.zeros(4), np.ones(4))


def _model(seed=0, width=8, classes=2):
    return initialize(build_model({"arch": "fc", "widths": [width]}, (4,), classes), 1.0, seed)


def _fit(seed=0, model_seed=0, epochs=2, **config):
    data = _vector_data()
    config = {"batch_size": 16, "lr": 0.05, **config}
    trainer = Trainer(_model(model_seed), data, TrainConfig(epochs=epochs, **config), seed=seed,
                      test_data=_vector_data(32, seed=1))
    return trainer, trainer.fit(checkpoint_epochs=range(epochs + 1))


# --------------------------------------------------------------------------- DeviceData


def test_image_normalization_matches_formula():
    images, labels = _images()
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.25, 0.5]
    data = DeviceData(images, labels, mean, std)
    assert data.input_shape == (3, 3, 4)
    assert len(data) == 10
    expected = (images.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)  # NHWC
    expected = expected.transpose(0, 3, 1, 2)  # NCHW
    got = data.normalized(slice(None))
    assert got.dtype == torch.float32 and tuple(got.shape) == (10, 3, 3, 4)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    # index tensors give the same rows
    idx = torch.tensor([7, 2])
    np.testing.assert_allclose(data.normalized(idx).numpy(), expected[[7, 2]], rtol=1e-5, atol=1e-5)
    # the stored uint8 data is untouched by normalizing
    assert data.inputs.dtype == torch.uint8
    np.testing.assert_array_equal(data.inputs.numpy(), images)


def test_vector_data_identity_normalization():
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    data = DeviceData(x, np.arange(6), np.zeros(5), np.ones(5))
    assert data.input_shape == (5,)
    np.testing.assert_array_equal(data.normalized(slice(None)).numpy(), x)
    data2 = DeviceData(x, np.arange(6), np.full(5, 1.0), np.full(5, 2.0))
    np.testing.assert_allclose(data2.normalized(slice(None)).numpy(), (x - 1.0) / 2.0, rtol=1e-6)


def test_length_mismatch_refused():
    with pytest.raises(ValueError, match="5 inputs but 4 labels"):
        DeviceData(np.zeros((5, 2), np.float32), np.zeros(4), [0, 0], [1, 1])


def test_each_epoch_order_covers_every_sample_once_and_follows_the_seed():
    """Trainer.orders, the order fit's batches are cut from: a new permutation each
    epoch, the same sequence for the same seed, and batches that keep each input with
    its label."""
    n = 23
    # inputs encode their own index, so that a batch can be traced back
    x = np.arange(n, dtype=np.float32)[:, None].repeat(4, axis=1)
    data = DeviceData(x, np.arange(n), np.zeros(4), np.ones(4))

    def trainer(seed):
        return Trainer(_model(classes=n), data, TrainConfig(epochs=2, batch_size=5), seed=seed)

    first = trainer(4)
    order = first.orders()
    assert order.shape == (1, n)
    order = order[0].tolist()
    assert sorted(order) == list(range(n))
    assert order != list(range(n))  # shuffled (probability 1/23! of a false failure)
    for b in range(5):  # cut as Trainer.step cuts them: the last batch is the rest
        inputs, labels = first.training_batch(torch.tensor(order[b * 5 : (b + 1) * 5]))
        assert len(labels) == (5 if b < 4 else 3) and torch.equal(inputs[:, 0].long(), labels)
    second = first.orders()[0].tolist()
    assert sorted(second) == list(range(n)) and second != order  # a new permutation per epoch
    again = trainer(4)
    assert again.orders()[0].tolist() == order and again.orders()[0].tolist() == second
    assert trainer(5).orders()[0].tolist() != order


def test_batches_in_storage_order():
    images, labels = _images(n=7)
    data = DeviceData(images, labels, [0, 0, 0], [1, 1, 1])
    batches = list(data.batches(3))
    assert [len(b[1]) for b in batches] == [3, 3, 1]
    assert torch.cat([b[1] for b in batches]).tolist() == labels.tolist()
    stacked = torch.cat([b[0] for b in batches])
    np.testing.assert_allclose(stacked.numpy(), images.transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)


# --------------------------------------------------------------------------- TrainConfig


def test_train_config_rejects_unknown_schedule():
    with pytest.raises(ValueError) as err:
        TrainConfig(epochs=1, schedule="linear")
    assert "linear" in str(err.value) and "cosine" in str(err.value) and "constant" in str(err.value)


@pytest.mark.parametrize("bad", [{"epochs": -1}, {"epochs": 1, "batch_size": 0}, {"epochs": 1, "lr": 0.0}])
def test_train_config_rejects_invalid_settings(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_train_config_from_dict_ignores_unknown_keys():
    config = TrainConfig.from_dict({"epochs": 3, "lr": 0.5, "checkpoints": [1, 2], "device": "cpu"})
    assert config == TrainConfig(epochs=3, lr=0.5)


# --------------------------------------------------------------------------- Trainer


def test_fit_is_deterministic_on_cpu():
    t1, r1 = _fit(seed=0)
    t2, r2 = _fit(seed=0)
    cols = [c for c in METRIC_COLUMNS if c != "seconds"]
    assert r1.metrics[cols].equals(r2.metrics[cols])
    s1, s2 = t1.state(), t2.state()
    assert s1.keys() == s2.keys()
    for key in s1:
        assert torch.equal(s1[key], s2[key]), key
    for epoch in r1.checkpoints:
        for key in s1:
            assert torch.equal(r1.checkpoints[epoch][key], r2.checkpoints[epoch][key])


def test_fit_batch_order_depends_on_seed():
    t1, r1 = _fit(seed=0)
    t2, r2 = _fit(seed=1)  # same initialization, different batch order
    assert torch.equal(r1.checkpoints[0]["fc1.weight"], r2.checkpoints[0]["fc1.weight"])
    assert not torch.equal(t1.state()["fc1.weight"], t2.state()["fc1.weight"])
    assert r1.metrics["loss"].iloc[1] != r2.metrics["loss"].iloc[1]


def test_metrics_table_layout_and_checkpoints():
    trainer, result = _fit(epochs=3)
    metrics = result.metrics
    assert list(metrics.columns) == METRIC_COLUMNS
    assert metrics["epoch"].tolist() == [0, 1, 2, 3]
    steps_per_epoch = math.ceil(96 / 16)
    assert metrics["step"].tolist() == [0, steps_per_epoch, 2 * steps_per_epoch, 3 * steps_per_epoch]
    assert metrics["seconds"].iloc[0] == 0.0
    assert (metrics["seconds"].diff().iloc[1:] >= 0).all()
    assert not metrics["diverged"].any() and result.diverged is False
    assert metrics["lr"].tolist() == [0.05] * 4
    assert metrics[["train_acc", "test_acc"]].apply(lambda c: c.between(0, 1)).all().all()
    assert result.curve.empty  # no eval_every
    # checkpoints: a state per requested epoch; epoch 0 is the initialization
    assert sorted(result.checkpoints) == [0, 1, 2, 3]
    init = _model(0).state_dict()
    for key, value in init.items():
        assert torch.equal(result.checkpoints[0][key], value), key
    assert not torch.equal(result.checkpoints[1]["fc1.weight"], init["fc1.weight"])
    final = trainer.state()
    for key in final:
        assert torch.equal(result.checkpoints[3][key], final[key])


def test_epoch_zero_row_is_evaluation_of_init():
    data = _vector_data()
    trainer = Trainer(_model(0), data, TrainConfig(epochs=0, batch_size=16), seed=0)
    loss, acc = trainer.evaluate(data)
    result = trainer.fit(checkpoint_epochs=[0])
    assert len(result.metrics) == 1
    row = result.metrics.iloc[0]
    assert row["loss"] == pytest.approx(loss) and row["train_acc"] == acc
    assert math.isnan(row["test_acc"])  # no test data given
    # by hand: mean cross-entropy of the initial model
    model = _model(0)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(data.normalized(slice(None))), data.labels)
    assert loss == pytest.approx(expected.item(), rel=1e-6)


def test_eval_every_gives_curve_rows():
    data = _vector_data()  # 96 samples, batch 16: 6 steps per epoch
    trainer = Trainer(_model(0), data, TrainConfig(epochs=2, batch_size=16, lr=0.05), seed=0)
    result = trainer.fit(eval_every=4)
    curve = result.curve
    assert curve["step"].tolist() == [0, 4, 8, 12]
    np.testing.assert_allclose(curve["epoch"].to_numpy(), [0, 4 / 6, 8 / 6, 2])
    assert {"loss", "train_acc", "lr", "diverged"} <= set(curve.columns)
    # the step-12 curve row and the epoch-2 metrics row evaluate the same model
    assert curve["train_acc"].iloc[-1] == result.metrics["train_acc"].iloc[-1]


@pytest.mark.parametrize("eval_every, evaluated", [
    (3, [0, 3, 6, 9, 12]),  # both epochs end on a curve step: evaluated there once
    (4, [0, 4, 6, 8, 12]),  # epoch 1 ends at step 6, between curve steps: evaluated there
])
def test_an_epoch_that_ends_on_a_curve_step_is_evaluated_once(eval_every, evaluated):
    data = _vector_data()  # 96 samples, batch 16: 6 steps per epoch
    trainer = Trainer(_model(0), data, TrainConfig(epochs=2, batch_size=16, lr=0.05), seed=0,
                      test_data=_vector_data(32, seed=1))
    steps, evaluations = [], trainer.evaluations
    trainer.evaluations = lambda: (steps.append(trainer.step_count), evaluations())[1]
    result = trainer.fit(eval_every=eval_every)
    assert steps == evaluated
    expected = _fit(epochs=2)[1].metrics  # the same run without a curve: each epoch row evaluated afresh
    for column in ("train_acc", "test_acc", "loss", "step"):
        np.testing.assert_array_equal(result.metrics[column].to_numpy(), expected[column].to_numpy())


def test_huge_learning_rate_diverges_and_stops_early():
    data = _vector_data()
    trainer = Trainer(_model(0), data, TrainConfig(epochs=20, batch_size=16, lr=1e6), seed=0)
    result = trainer.fit()
    assert result.diverged is True
    assert bool(result.metrics["diverged"].iloc[-1]) is True
    assert not math.isfinite(result.metrics["loss"].iloc[-1])
    assert len(result.metrics) < 21  # stopped before the 20 epochs
    assert not result.metrics["diverged"].iloc[0]


def test_huge_learning_rate_with_eval_every_stops_within_the_epoch():
    data = _vector_data()
    trainer = Trainer(_model(0), data, TrainConfig(epochs=20, batch_size=16, lr=1e6), seed=0)
    result = trainer.fit(eval_every=1)
    assert result.diverged is True
    assert bool(result.curve["diverged"].iloc[-1]) is True
    assert result.curve["diverged"].sum() == 1  # stopped at the first non-finite evaluation
    assert len(result.metrics) < 21


def test_cosine_schedule_decays_to_zero():
    data = _vector_data()
    config = TrainConfig(epochs=3, batch_size=16, lr=0.1, schedule="cosine")
    trainer = Trainer(_model(0), data, config, seed=0)
    result = trainer.fit(eval_every=9)
    lrs = result.metrics["lr"].tolist()
    assert lrs[0] == pytest.approx(0.1)
    total = 18  # 3 epochs × 6 steps
    for step, lr in zip(result.metrics["step"], lrs):
        assert lr == pytest.approx(0.05 * (1 + math.cos(math.pi * step / total)), abs=1e-12)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert result.curve["lr"].iloc[1] == pytest.approx(0.05)  # halfway: half the rate


def test_tiny_model_learns_separable_problem():
    _, result = _fit(epochs=4, lr=0.1)
    metrics = result.metrics
    assert metrics["train_acc"].iloc[0] < 0.5  # this initialization starts out wrong
    assert metrics["train_acc"].iloc[-1] >= 0.95
    assert metrics["test_acc"].iloc[-1] >= 0.9
    assert metrics["loss"].iloc[-1] < 0.5 * metrics["loss"].iloc[0]


def test_on_epoch_end_called_each_epoch():
    data = _vector_data()
    seen = []
    Trainer(_model(0), data, TrainConfig(epochs=3, batch_size=32), seed=0).fit(on_epoch_end=seen.append)
    assert seen == [1, 2, 3]


def test_image_model_trains_on_image_data():
    images, labels = _images(n=12, h=4, w=4, c=1)
    data = DeviceData(images, labels, [0.5], [0.25])
    model = initialize(build_model({"arch": "cnn2", "filters": 2, "hidden": 3}, data.input_shape, 5), 1.0, 0)
    result = Trainer(model, data, TrainConfig(epochs=1, batch_size=5), seed=0).fit()
    assert result.metrics["step"].tolist() == [0, 3]
    assert np.isfinite(result.metrics["loss"]).all()


# --------------------------------------------------------------------------- no host sync


class _NoHostReads:
    """Within the block, Python-level reads of a tensor's value on the host fail.

    On the CPU this is the test we can run of "the step never waits for the device":
    every way the training step's Python code could copy a value to the host
    (.item(), .tolist(), .cpu(), bool() of a tensor, ...) raises. The CUDA test below
    checks the same with the driver's own synchronization detector.
    """

    NAMES = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def __enter__(self):
        for name in self.NAMES:
            def refuse(self, *args, _name=name, **kwargs):
                raise AssertionError(f"Tensor.{_name} inside a training step: a host-device copy")
            self.monkeypatch.setattr(torch.Tensor, name, refuse)

    def __exit__(self, *exc):
        self.monkeypatch.undo()


def _image_trainer(config=None, device="cpu"):
    images, labels = _images(n=40, h=8, w=8, c=3)
    data = DeviceData(images, labels, [0.5] * 3, [0.25] * 3, device=device)
    model = initialize(build_model({"arch": "cnn2", "filters": 4, "hidden": 8}, data.input_shape, 5), 1.0, 0)
    config = config or TrainConfig(epochs=1, batch_size=8, lr=0.05, weight_decay=1e-4, schedule="cosine")
    return Trainer(model, data, config, seed=0), data


def test_training_step_reads_nothing_back_to_the_host(monkeypatch):
    trainer, data = _image_trainer()
    order = data.permutation(trainer.generator)
    loss_sum = torch.zeros((), dtype=torch.float64)
    with _NoHostReads(monkeypatch):
        for b in range(5):  # cut the batch on the device, step, sum the loss on the device
            loss_sum += trainer.train_step(*data.batch(order[b * 8 : (b + 1) * 8]))
    assert trainer.step_count == 5 and math.isfinite(loss_sum.item())


def test_packed_training_step_reads_nothing_back_to_the_host(monkeypatch):
    from randlabels.training.packed import PackedTrainer

    images, labels = _images(n=40, h=8, w=8, c=3)
    data = DeviceData(images, labels, [0.5] * 3, [0.25] * 3)
    models = [initialize(build_model({"arch": "cnn2", "filters": 4, "hidden": 8}, (3, 8, 8), 5), 1.0, s)
              for s in (0, 1)]
    trainer = PackedTrainer(models, data, TrainConfig(epochs=1, batch_size=8, lr=0.05), [0, 1])
    order = trainer.orders()
    loss_sum = torch.zeros(2, dtype=torch.float64)
    with _NoHostReads(monkeypatch):
        for b in range(5):
            loss_sum += trainer.train_step(*trainer.data.batch(order[:, b * 8 : (b + 1) * 8]))
    assert torch.isfinite(loss_sum).all().item()


def test_clipped_training_steps_read_nothing_back_to_the_host(monkeypatch):
    """Gradient clipping keeps the norms on the device: one replica's
    (clip_grad_norm_) and each packed replica's (clip_grad_norm_per_replica)."""
    from randlabels.training.packed import PackedTrainer

    config = TrainConfig(epochs=1, batch_size=8, lr=0.05, clip_grad_norm=0.01)  # below the norms: clips
    trainer, data = _image_trainer(config)
    models = [initialize(build_model({"arch": "cnn2", "filters": 4, "hidden": 8}, (3, 8, 8), 5), 1.0, s)
              for s in (0, 1)]
    packed = PackedTrainer(models, data, config, [0, 1])
    order, packed_order = data.permutation(trainer.generator), packed.orders()
    loss_sum, packed_sum = torch.zeros((), dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    with _NoHostReads(monkeypatch):
        for b in range(5):
            loss_sum += trainer.train_step(*data.batch(order[b * 8 : (b + 1) * 8]))
            packed_sum += packed.train_step(*packed.data.batch(packed_order[:, b * 8 : (b + 1) * 8]))
    assert math.isfinite(loss_sum.item()) and torch.isfinite(packed_sum).all().item()


def test_augmented_training_step_reads_nothing_back_to_the_host(monkeypatch):
    from randlabels.training.packed import PackedTrainer

    config = TrainConfig(epochs=1, batch_size=8, lr=0.05, augment={"crop": 2, "flip": True})
    trainer, data = _image_trainer(config)
    models = [initialize(build_model({"arch": "cnn2", "filters": 4, "hidden": 8}, (3, 8, 8), 5), 1.0, s)
              for s in (0, 1)]
    packed = PackedTrainer(models, data, config, [0, 1])
    order, packed_order = data.permutation(trainer.generator), packed.orders()
    loss_sum = torch.zeros((), dtype=torch.float64)
    packed_sum = torch.zeros(2, dtype=torch.float64)
    with _NoHostReads(monkeypatch):  # the crops and flips are drawn and cut on the device
        for b in range(5):
            loss_sum += trainer.train_step(*trainer.training_batch(order[b * 8 : (b + 1) * 8]))
            packed_sum += packed.train_step(*packed.training_batch(packed_order[:, b * 8 : (b + 1) * 8]))
    assert math.isfinite(loss_sum.item()) and torch.isfinite(packed_sum).all().item()


@pytest.mark.gpu  # deselected by default; `make test-gpu` runs it on a CUDA machine
@pytest.mark.parametrize("clip", [None, 1.0])
def test_cuda_training_step_never_synchronizes(clip):
    """Nor with gradient clipping: each norm stays on the device (clip_grad_norm_,
    clip_grad_norm_per_replica)."""
    from randlabels.training.packed import PackedTrainer

    config = TrainConfig(epochs=1, batch_size=8, lr=0.05, weight_decay=1e-4, schedule="cosine", clip_grad_norm=clip)
    trainer, data = _image_trainer(config, device="cuda")
    assert torch.backends.cudnn.benchmark is True
    order = data.permutation(trainer.generator)
    loss_sum = torch.zeros((), dtype=torch.float64, device="cuda")
    loss_sum += trainer.train_step(*data.batch(order[:8]))  # first step: cuDNN picks algorithms
    models = [initialize(build_model({"arch": "cnn2", "filters": 4, "hidden": 8}, (3, 8, 8), 5), 1.0, s)
              for s in (0, 1)]
    packed = PackedTrainer(models, data, TrainConfig(epochs=1, batch_size=8, lr=0.05, clip_grad_norm=clip), [0, 1])
    packed_order = packed.orders()
    packed_sum = torch.zeros(2, dtype=torch.float64, device="cuda")
    packed_sum += packed.train_step(*packed.data.batch(packed_order[:, :8]))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b in range(1, 5):
            loss_sum += trainer.train_step(*data.batch(order[b * 8 : (b + 1) * 8]))
            packed_sum += packed.train_step(*packed.data.batch(packed_order[:, b * 8 : (b + 1) * 8]))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(loss_sum.item()) and torch.isfinite(packed_sum).all().item()


def test_cuda_where_there_is_none_names_the_config_key(monkeypatch):
    from randlabels.errors import ResourceError
    from randlabels.training.engine import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ResourceError, match="config key device is 'cuda', but CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ResourceError, match="has 1 CUDA device"):
        resolve_device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_device_data_subset_of_a_prepared_dataset():
    from randlabels.data.h5file import Dataset

    images = np.arange(5 * 4 * 4 * 1, dtype=np.uint8).reshape(5, 4, 4, 1)
    dataset = Dataset(images=images, labels=np.array([0, 1, 2, 0, 1]), is_test=np.zeros(5, bool), class_names=["a", "b", "c"],
                      attrs={"num_classes": 3, "kind": "image", "norm_mean": [0.5], "norm_std": [0.25]})
    data = DeviceData.subset(dataset, np.array([3, 1]), "cpu")
    assert data.labels.tolist() == [0, 1]
    np.testing.assert_array_equal(data.inputs.numpy(), images[[3, 1]])
    expected = (images[[3, 1]].transpose(0, 3, 1, 2) / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(data.normalized(slice(None)).numpy(), expected, rtol=1e-6)
    relabelled = DeviceData.subset(dataset, np.array([3, 1]), "cpu", labels=np.array([2, 2]))
    assert relabelled.labels.tolist() == [2, 2]


def test_job_device_sets_the_threads_and_resolves_the_device():
    from randlabels.training.engine import job_device

    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1  # not what it was (a test worker runs one thread)
    try:
        assert job_device("cpu", threads=wanted) == torch.device("cpu")
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_warmup_reaches_the_optimizer():
    data = _vector_data()  # 6 steps per epoch at batch 16
    config = TrainConfig(epochs=2, batch_size=16, lr=0.3, warmup_epochs=1)
    result = Trainer(_model(0), data, config, seed=0).fit(eval_every=1)
    lrs = result.curve.set_index("step")["lr"]
    # The curve row after step s shows the rate of step s + 1 (the schedule advances after each step).
    assert [lrs[s] for s in range(6)] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.25, 0.3])
    assert lrs[12] == pytest.approx(0.3)


def test_bad_warmup_or_clipping_is_refused():
    with pytest.raises(ValueError, match="invalid training settings"):
        TrainConfig(epochs=1, warmup_epochs=-1)
    with pytest.raises(ValueError, match="clip_grad_norm must be > 0"):
        TrainConfig(epochs=1, clip_grad_norm=0)


def test_clipping_bounds_each_step_to_lr_times_the_norm():
    """Plain SGD (no momentum, no decay): a clipped step moves the parameters by at most
    lr × max_norm, and by exactly that where the raw gradient is larger."""
    data = _vector_data()
    config = TrainConfig(epochs=1, batch_size=16, lr=1.0, momentum=0.0, clip_grad_norm=1e-3)
    trainer = Trainer(_model(0), data, config, seed=0)
    before = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
    trainer.train_step(*data.batch(torch.arange(16)))
    after = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    assert float((after - before).norm()) == pytest.approx(1e-3, rel=1e-3)
    # A bound far above the gradient changes nothing: the same step as without clipping.
    loose = Trainer(_model(0), data, dataclasses.replace(config, clip_grad_norm=1e6), seed=0)
    free = Trainer(_model(0), data, dataclasses.replace(config, clip_grad_norm=None), seed=0)
    for t in (loose, free):
        t.train_step(*data.batch(torch.arange(16)))
    for a, b in zip(loose.model.parameters(), free.model.parameters()):
        assert torch.equal(a, b)
