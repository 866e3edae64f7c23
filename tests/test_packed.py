"""Replica packing on the CPU: R replicas trained together equal R separate Trainer runs.

Tolerance: the packed replicas run grouped convolutions and batched matrix products
where separate runs run plain ones, so sums are taken in another order; metrics and
weights must agree to rtol 1e-4 (atol 1e-6 for entries near zero). Observed: about
1e-7. Everything that is no rounding (steps, epochs, which checkpoints, divergence,
the resume point) must agree exactly.
"""

from __future__ import annotations

import dataclasses
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch

from randlabels.models.networks import build_model, initialize
from randlabels.training.engine import DeviceData, TrainConfig, Trainer
from randlabels.training.packed import PackedTrainer, clip_grad_norm_per_replica, with_labels
from randlabels.training.resume import ResumeStore, StopSignals, TrainingInterrupted

RTOL, ATOL = 1e-4, 1e-6
CNN = {"arch": "cnn2", "filters": 6, "kernel_size": 3, "hidden": 12}
FC = {"arch": "fc", "widths": [16]}
CONFIG = TrainConfig(epochs=3, batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-4, schedule="cosine")
CHECKPOINTS = [0, 2, 3]
R = 3


def _images(n=52, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)


def _labels(n, replicas=R, seed=1, classes=4):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, classes, n) for _ in range(replicas)]


def _model(spec, shape, seed, scale=1.0, classes=4):
    return initialize(build_model(spec, shape, classes), scale, seed)


def _separate(models, datas, seeds, tests=None, config=CONFIG, **fit):
    tests = tests or [None] * len(models)
    return [
        Trainer(m, d, config, seed=s, test_data=t).fit(**fit)
        for m, d, s, t in zip(models, datas, seeds, tests)
    ]


def _close_tables(a: pd.DataFrame, b: pd.DataFrame, atol: float = ATOL):
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    for column in a.columns:
        if column == "seconds":
            continue
        if column in ("epoch", "step", "diverged", "lr"):
            assert a[column].tolist() == b[column].tolist(), column
        else:
            np.testing.assert_allclose(b[column].to_numpy(float), a[column].to_numpy(float),
                                       rtol=RTOL, atol=atol, err_msg=column)


def _close_states(a: dict, b: dict, atol: float = ATOL):
    assert list(a) == list(b)
    for key in a:
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
        np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=RTOL, atol=atol, err_msg=key)


def _same_results(separate, packed, atol: float = ATOL):
    assert len(separate) == len(packed)
    for a, b in zip(separate, packed):
        assert a.diverged == b.diverged
        _close_tables(a.metrics, b.metrics, atol)
        _close_tables(a.curve, b.curve, atol)
        assert sorted(a.checkpoints) == sorted(b.checkpoints)
        for epoch in a.checkpoints:
            _close_states(a.checkpoints[epoch], b.checkpoints[epoch], atol)


def test_cnn_replicas_with_own_labels_match_separate_runs():
    images = _images()
    base = DeviceData(images, np.zeros(len(images)), [0.5], [0.25])
    datas = [with_labels(base, labels) for labels in _labels(len(images))]
    test = DeviceData(_images(20, seed=5), _labels(20, 1, seed=6)[0], [0.5], [0.25])
    seeds = [100, 101, 102]
    init_seeds = [10, 11, 12]
    separate = _separate([_model(CNN, (1, 8, 8), s) for s in init_seeds], datas, seeds, [test] * R,
                         checkpoint_epochs=CHECKPOINTS, eval_every=5)
    packed_trainer = PackedTrainer([_model(CNN, (1, 8, 8), s) for s in init_seeds], datas, CONFIG, seeds,
                                   test_data=test)
    assert packed_trainer.data.shared  # one copy of the images for all replicas
    packed = packed_trainer.fit(checkpoint_epochs=CHECKPOINTS, eval_every=5)
    _same_results(separate, packed)
    # the replicas really differ (own init, order and labels)
    assert not torch.equal(packed[0].checkpoints[3]["conv1.weight"], packed[1].checkpoints[3]["conv1.weight"])
    assert packed[0].metrics["loss"].iloc[-1] != packed[1].metrics["loss"].iloc[-1]


def test_variants_share_data_and_order_and_each_replica_is_probed_as_its_trainer_probes():
    """The packed fine-tuning: different initial weights, one dataset, one data-order
    seed, and a learning-curve probe (the activation statistics) run on each replica's
    own current state."""
    from randlabels.analysis.probes import activation_probe

    images = _images()
    data = DeviceData(images, _labels(len(images), 1)[0], [0.5], [0.25])
    test = DeviceData(_images(20, seed=5), _labels(20, 1, seed=6)[0], [0.5], [0.25])
    probe_images = data.normalized(slice(0, 24))
    probe = activation_probe(lambda: probe_images.split(10))
    inits = lambda: [_model(CNN, (1, 8, 8), 10, scale) for scale in (0.5, 1.0, 2.0)]  # noqa: E731
    separate = [Trainer(m, data, CONFIG, seed=100, test_data=test, probe=probe).fit(eval_every=4) for m in inits()]
    packed = PackedTrainer(inits(), data, CONFIG, [100] * R, test_data=test, probe=probe).fit(eval_every=4)
    assert any(column.startswith("frac_active:") for column in packed[0].curve.columns)
    _same_results(separate, packed)
    # the replicas really differ, probe values included
    assert packed[0].curve["mean_activation:relu1"].iloc[-1] != packed[2].curve["mean_activation:relu1"].iloc[-1]


def test_replicas_with_own_inputs_and_test_sets_match_separate_runs():
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((40, 5)).astype(np.float32) for _ in range(R)]
    labels = _labels(40)
    datas = [DeviceData(x, y, np.full(5, 0.1 * i), np.full(5, 1.0 + i)) for i, (x, y) in enumerate(zip(xs, labels))]
    tests = [DeviceData(rng.standard_normal((12, 5)).astype(np.float32), y[:12], np.zeros(5), np.ones(5))
             for y in labels]
    seeds = [7, 8, 9]
    separate = _separate([_model(FC, (5,), s) for s in seeds], datas, seeds, tests, checkpoint_epochs=CHECKPOINTS)
    trainer = PackedTrainer([_model(FC, (5,), s) for s in seeds], datas, CONFIG, seeds, test_data=tests)
    assert not trainer.data.shared
    _same_results(separate, trainer.fit(checkpoint_epochs=CHECKPOINTS))


def test_batch_norm_running_statistics_are_per_replica():
    """ResNet18 (batch norm): weights, running statistics and metrics after one step."""
    images = _images(64)
    base = DeviceData(images, np.zeros(64), [0.5], [0.25])
    datas = [with_labels(base, y) for y in _labels(64, 2)]
    config = TrainConfig(epochs=1, batch_size=64, lr=0.005, momentum=0.9)
    spec = {"arch": "resnet18"}
    separate = _separate([_model(spec, (1, 8, 8), s) for s in (1, 2)], datas, [3, 4], config=config,
                         checkpoint_epochs=[1])
    packed = PackedTrainer([_model(spec, (1, 8, 8), s) for s in (1, 2)], datas, config, [3, 4]).fit(
        checkpoint_epochs=[1])
    # Batch norm divides by each channel's batch standard deviation, which amplifies
    # the float32 rounding of another reduction order (vmap's batched kernels, the
    # thread count) in channels whose batch variance is tiny: elementwise, a few
    # weights of such a channel differ by up to 1e-3 relative. So the states are
    # compared tensor by tensor in norm, the metrics elementwise.
    for a, b in zip(separate, packed):
        assert a.diverged == b.diverged
        _close_tables(a.metrics, b.metrics, atol=1e-5)
        for key, expected in a.checkpoints[1].items():
            got = b.checkpoints[1][key]
            assert got.shape == expected.shape and got.dtype == expected.dtype, key
            difference = float((got.double() - expected.double()).norm())
            # Relative to the tensor, with a floor for tensors that are still near 0
            # after one step (biases start at 0).
            assert difference <= 1e-4 * float(expected.double().norm()) + 1e-5 * expected.numel() ** 0.5, key
    assert "bn1.running_mean" in packed[0].checkpoints[1]
    assert packed[0].checkpoints[1]["bn1.num_batches_tracked"].item() == 1


@pytest.mark.parametrize("eval_every", [None, 2])
def test_a_diverging_replica_stops_where_a_trainer_would(eval_every):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 5)).astype(np.float32)
    data = DeviceData(x, rng.integers(0, 4, 40), np.zeros(5), np.ones(5))
    config = TrainConfig(epochs=4, batch_size=16, lr=0.05)
    scales = [1.0, 1e30, 1.0]  # the middle replica's logits overflow at once

    def models():
        return [_model(FC, (5,), 20 + r, scale) for r, scale in enumerate(scales)]

    separate = _separate(models(), [data] * R, [1, 2, 3], config=config, checkpoint_epochs=[0, 1, 4],
                         eval_every=eval_every)
    packed = PackedTrainer(models(), data, config, [1, 2, 3]).fit(checkpoint_epochs=[0, 1, 4], eval_every=eval_every)
    assert [r.diverged for r in packed] == [False, True, False]
    assert len(packed[1].metrics) < len(packed[0].metrics)
    assert 1 not in packed[1].checkpoints and 4 not in packed[1].checkpoints
    _same_results(separate, packed)


class SignalAtStep(PackedTrainer):
    """Sends this process ``signum`` during its ``at``-th training step."""

    def __init__(self, *args, at: int, signum: int = signal.SIGTERM, **kwargs):
        super().__init__(*args, **kwargs)
        self.at, self.signum = at, signum

    def train_step(self, inputs, labels):
        if self.step_count + 1 == self.at:
            os.kill(os.getpid(), self.signum)
        return super().train_step(inputs, labels)


def _resumable(cls=PackedTrainer, **kwargs):
    images = _images(44)
    base = DeviceData(images, np.zeros(44), [0.5], [0.25])
    datas = [with_labels(base, y) for y in _labels(44, 2)]
    models = [_model(CNN, (1, 8, 8), s) for s in (5, 6)]
    return cls(models, datas, CONFIG, [1, 2], **kwargs)


# 44 samples in batches of 16: 3 steps per epoch; step 4 is mid-epoch 2, step 6 ends it.
@pytest.mark.parametrize("at", [4, 6])
def test_stop_signal_saves_and_rerun_matches_uninterrupted(tmp_path, at):
    uninterrupted = _resumable().fit(checkpoint_epochs=CHECKPOINTS, eval_every=2)
    store = ResumeStore(tmp_path / "state.pt", "packed")
    with StopSignals() as stop, pytest.raises(TrainingInterrupted) as info:
        _resumable(SignalAtStep, at=at).fit(checkpoint_epochs=CHECKPOINTS, eval_every=2, resume=store, stop=stop)
    assert info.value.step == at
    assert store.load()["step_count"] == at  # the state loads (weights-only), not started over
    resumed = _resumable().fit(checkpoint_epochs=CHECKPOINTS, eval_every=2, resume=store)
    for a, b in zip(uninterrupted, resumed):  # on the CPU, bit for bit
        pd.testing.assert_frame_equal(a.metrics.drop(columns="seconds"), b.metrics.drop(columns="seconds"))
        pd.testing.assert_frame_equal(a.curve, b.curve)
        assert sorted(a.checkpoints) == sorted(b.checkpoints)
        for epoch in a.checkpoints:
            for key in a.checkpoints[epoch]:
                assert torch.equal(a.checkpoints[epoch][key], b.checkpoints[epoch][key])


def test_mismatched_groups_are_refused():
    images = _images(20)
    data = DeviceData(images, np.zeros(20), [0.5], [0.25])
    cnn = [_model(CNN, (1, 8, 8), s) for s in (1, 2)]
    with pytest.raises(ValueError, match="2 seeds for 3 models"):
        PackedTrainer(cnn + [_model(CNN, (1, 8, 8), 3)], data, CONFIG, [1, 2])
    wider = _model({**CNN, "filters": 7}, (1, 8, 8), 3)
    with pytest.raises(ValueError, match="model 1 is not of the same architecture"):
        PackedTrainer([cnn[0], wider], data, CONFIG, [1, 2])
    smaller = DeviceData(images[:10], np.zeros(10), [0.5], [0.25])
    with pytest.raises(ValueError, match="same size and shape"):
        PackedTrainer(cnn, [data, smaller], CONFIG, [1, 2])
    with pytest.raises(ValueError, match="3 training datasets for 2 replicas"):
        PackedTrainer(cnn, [data] * 3, CONFIG, [1, 2])
    with pytest.raises(ValueError, match="labels for 20 samples"):
        with_labels(data, np.zeros(19))


def test_warmup_and_per_replica_clipping_match_separate_runs():
    """Each replica's gradient is clipped by its own norm, as its Trainer clips it; a
    bound below the gradient norms makes clipping act on every step."""
    images = _images()
    base = DeviceData(images, np.zeros(len(images)), [0.5], [0.25])
    datas = [with_labels(base, labels) for labels in _labels(len(images))]
    config = TrainConfig(epochs=2, batch_size=16, lr=0.05, momentum=0.9, warmup_epochs=0.5, clip_grad_norm=0.05)
    seeds, init_seeds = [100, 101, 102], [10, 11, 12]
    # Init scales 1, 2, 4: very different gradient norms, so one shared factor would differ.
    models = lambda: [_model(CNN, (1, 8, 8), s, scale) for s, scale in zip(init_seeds, (1.0, 2.0, 4.0))]
    separate = _separate(models(), datas, seeds, config=config, checkpoint_epochs=[0, 2])
    packed = PackedTrainer(models(), datas, config, seeds).fit(checkpoint_epochs=[0, 2])
    _same_results(separate, packed)
    unclipped = _separate(models(), datas, seeds, config=dataclasses.replace(config, clip_grad_norm=None),
                          checkpoint_epochs=[0, 2])
    for a, b in zip(separate, unclipped):
        assert not torch.allclose(a.checkpoints[2]["conv1.weight"], b.checkpoints[2]["conv1.weight"])


def test_clip_grad_norm_per_replica_equals_torch_on_each_replica():
    rng = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 4, 5, generator=rng) * torch.tensor([0.01, 1.0, 100.0]).view(3, 1, 1),
             torch.randn(3, 7, generator=rng)]
    clipped = [g.clone() for g in grads]
    clip_grad_norm_per_replica(clipped, 2.0)
    for r in range(3):
        params = [torch.nn.Parameter(torch.zeros_like(g[r])) for g in grads]
        for p, g in zip(params, grads):
            p.grad = g[r].clone()
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        for p, c in zip(params, clipped):
            torch.testing.assert_close(c[r], p.grad)
