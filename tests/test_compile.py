"""TrainConfig.compile: torch.compile gives the numbers of eager mode (on the CPU).

Tolerance: compiled kernels fuse operations and sum in another order, so metrics and
weights must agree to rtol 1e-5 (atol 1e-7); observed differences are about 1e-8.
Compilation on the CPU needs a C compiler (gcc) and takes about 20 s per test here,
so the models are the smallest that exercise a convolution, a ReLU and two linear
layers. Steps, epochs and checkpoint epochs must agree exactly.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from randlabels.models.networks import build_model, initialize
from randlabels.training.engine import DeviceData, TrainConfig, Trainer
from randlabels.training.packed import PackedTrainer

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                                reason="torch.compile on the CPU needs a C compiler")

SPEC = {"arch": "cnn2", "filters": 4, "kernel_size": 3, "hidden": 8}
RTOL, ATOL = 1e-5, 1e-7


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    yield
    torch._dynamo.reset()  # compiled code of one test does not linger into the next


def _data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (44, 8, 8, 1), dtype=np.uint8)
    return DeviceData(images, rng.integers(0, 4, 44), [0.5], [0.25])


def _model(seed):
    return initialize(build_model(SPEC, (1, 8, 8), 4), 1.0, seed)


def _config(compile_: bool) -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=16, lr=0.05, weight_decay=1e-4, compile=compile_)


def _assert_close(eager, compiled):
    for table in ("metrics", "curve"):
        a, b = getattr(eager, table), getattr(compiled, table)
        assert list(a.columns) == list(b.columns)
        for column in ("epoch", "step", "lr", "diverged"):
            assert a[column].tolist() == b[column].tolist()
        for column in ("loss", "train_acc", "test_acc"):
            np.testing.assert_allclose(b[column].to_numpy(float), a[column].to_numpy(float), rtol=RTOL, atol=ATOL)
    assert sorted(eager.checkpoints) == sorted(compiled.checkpoints)
    for epoch, state in eager.checkpoints.items():
        assert list(state) == list(compiled.checkpoints[epoch])  # the model's own keys
        for key, value in state.items():
            np.testing.assert_allclose(compiled.checkpoints[epoch][key].numpy(), value.numpy(), rtol=RTOL, atol=ATOL)


def test_config_compile_is_off_by_default_and_read_from_settings():
    assert TrainConfig(epochs=1).compile is False
    assert TrainConfig.from_dict({"epochs": 1, "compile": True}).compile is True


def test_compiled_training_matches_eager():
    data = _data()
    runs = {}
    for compile_ in (False, True):
        trainer = Trainer(_model(0), data, _config(compile_), seed=1, test_data=data)
        runs[compile_] = trainer.fit(checkpoint_epochs=[0, 2], eval_every=2)
        if compile_:
            assert trainer.forward is not trainer.model  # the compiled wrapper
    _assert_close(runs[False], runs[True])


def test_compiled_packed_training_matches_eager():
    data = _data()
    runs = {}
    for compile_ in (False, True):
        models = [_model(seed) for seed in (0, 1)]
        runs[compile_] = PackedTrainer(models, data, _config(compile_), [1, 2], test_data=data).fit(
            checkpoint_epochs=[0, 2], eval_every=2)
    for eager, compiled in zip(runs[False], runs[True]):
        _assert_close(eager, compiled)
