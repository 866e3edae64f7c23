"""Tests of randlabels.training.optimizer: the schedule, torch.optim.SGD's steps bit for
bit, closed-form momentum, a saved state continued exactly, and no torch._dynamo import."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch

from randlabels.io import load_torch, save_torch
from randlabels.training.engine import TrainConfig
from randlabels.training.optimizer import SGD, lr_factor

# 2 epochs of 5 steps: a warm-up over 3 steps, then a cosine; momentum and weight decay.
CONFIG = TrainConfig(epochs=2, batch_size=8, lr=0.2, momentum=0.9, weight_decay=0.01,
                     schedule="cosine", warmup_epochs=0.6)
STEPS_PER_EPOCH = 5


def test_warmup_rises_linearly_then_hands_over_to_the_schedule():
    # 2 epochs of 5 steps: warm-up over the first 4 steps (0.8 epochs), then constant.
    config = TrainConfig(epochs=2, batch_size=8, lr=0.1, warmup_epochs=0.8)
    assert [lr_factor(config, step, 5) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # With cosine, the cosine spans the 6 steps after the warm-up, from 1 down to 0.
    cosine = TrainConfig(epochs=2, batch_size=8, lr=0.1, warmup_epochs=0.8, schedule="cosine")
    after = [lr_factor(cosine, step, 5) for step in range(4, 11)]
    assert after == pytest.approx([0.5 * (1 + math.cos(math.pi * t / 6)) for t in range(7)])
    assert after[-1] == pytest.approx(0.0, abs=1e-15) and after[3] == pytest.approx(0.5)
    # Without a warm-up the cosine is the one of test_cosine_schedule_decays_to_zero.
    plain = TrainConfig(epochs=3, batch_size=8, lr=0.1, schedule="cosine")
    assert lr_factor(plain, 9, 6) == pytest.approx(0.5)


def _params(seed=0, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(device).requires_grad_() for shape in ((3, 4), (4,), (2, 3))]


def _gradients(params, step):
    """Gradients of a fixed loss; the last parameter has none on odd steps (as a layer
    that a step does not reach)."""
    loss = sum(((p - 0.1 * step) ** 2).sum() * (i + 1) for i, p in enumerate(params[:2]))
    if step % 2 == 0:
        loss = loss + (params[2] ** 3).sum()
    loss.backward()


def _equal_to_torch_sgd(device):
    ours_params, torch_params = _params(device=device), _params(device=device)
    ours = SGD(ours_params, CONFIG, STEPS_PER_EPOCH)
    reference = torch.optim.SGD(torch_params, lr=CONFIG.lr, momentum=CONFIG.momentum,
                                weight_decay=CONFIG.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(reference, lambda s: lr_factor(CONFIG, s, STEPS_PER_EPOCH))
    for step in range(2 * STEPS_PER_EPOCH):
        assert ours.lr == reference.param_groups[0]["lr"]  # the same float, not only close
        ours.zero_grad()
        reference.zero_grad(set_to_none=True)
        _gradients(ours_params, step)
        _gradients(torch_params, step)
        ours.step()
        reference.step()
        schedule.step()
        for a, b in zip(ours_params, torch_params):
            assert torch.equal(a, b)
    assert ours.lr == reference.param_groups[0]["lr"] == 0.0  # the cosine's end
    for i, p in enumerate(torch_params):
        assert torch.equal(ours.momentum_buffers[i], reference.state[p]["momentum_buffer"])


def test_steps_equal_torch_sgd_with_lambda_lr_bit_for_bit():
    _equal_to_torch_sgd("cpu")


@pytest.mark.gpu  # deselected by default; `make test-gpu` runs it on a CUDA machine
def test_steps_equal_torch_sgd_on_cuda_bit_for_bit():
    """On CUDA both take the multi-tensor (foreach) path of the same function."""
    _equal_to_torch_sgd("cuda")


def test_momentum_on_a_constant_gradient_is_the_geometric_sum():
    """Loss g·w: after n steps of lr η and momentum μ, w = w0 − η g Σ_{k=1..n} (1 − μ^k)/(1 − μ)."""
    config = TrainConfig(epochs=1, lr=0.5, momentum=0.75)
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([1.0, -2.0], dtype=torch.float64)
    optimizer = SGD([w], config, steps_per_epoch=6)
    for _ in range(6):
        optimizer.zero_grad()
        (g * w).sum().backward()
        optimizer.step()
    expected = -0.5 * g * sum((1 - 0.75**k) / (1 - 0.75) for k in range(1, 7))
    assert torch.allclose(w.detach(), expected, rtol=0, atol=1e-12)


def test_a_parameter_without_gradient_keeps_its_value_and_momentum():
    params = _params()
    optimizer = SGD(params, CONFIG, STEPS_PER_EPOCH)
    _gradients(params, 0)  # all three have gradients
    optimizer.step()
    still, buffer = params[2].detach().clone(), optimizer.momentum_buffers[2].clone()
    optimizer.zero_grad()
    _gradients(params, 1)  # the last one has none
    assert params[2].grad is None
    optimizer.step()
    assert torch.equal(params[2], still) and torch.equal(optimizer.momentum_buffers[2], buffer)
    assert optimizer.steps == 2


def test_a_saved_state_continues_exactly(tmp_path):
    straight_params, resumed_params = _params(), _params()
    straight = SGD(straight_params, CONFIG, STEPS_PER_EPOCH)
    first = SGD(resumed_params, CONFIG, STEPS_PER_EPOCH)
    for step in range(4):
        for optimizer, params in ((straight, straight_params), (first, resumed_params)):
            optimizer.zero_grad()
            _gradients(params, step)
            optimizer.step()
    save_torch(first.state_dict(), tmp_path / "state.pt")  # as a resume state is saved
    resumed = SGD(resumed_params, CONFIG, STEPS_PER_EPOCH)
    resumed.load_state_dict(load_torch(tmp_path / "state.pt"))
    assert resumed.steps == 4 and resumed.lr == straight.lr
    for step in range(4, 10):
        for optimizer, params in ((straight, straight_params), (resumed, resumed_params)):
            optimizer.zero_grad()
            _gradients(params, step)
            optimizer.step()
    for a, b in zip(straight_params, resumed_params):
        assert torch.equal(a, b)


def test_a_state_for_other_parameters_is_refused():
    optimizer = SGD(_params(), CONFIG, STEPS_PER_EPOCH)
    with pytest.raises(ValueError, match="holds 2 momentum buffers, not 3"):
        optimizer.load_state_dict({"steps": 1, "momentum_buffers": [None, None]})


def test_training_does_not_import_torch_dynamo():
    """torch.optim.Optimizer imports torch._dynamo when it is built (about 1.3 s); a
    training job that does not compile never needs it."""
    child = textwrap.dedent(
        """
        import sys
        import numpy as np
        from randlabels.models.networks import build_model
        from randlabels.training.engine import DeviceData, TrainConfig, Trainer
        x = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
        data = DeviceData(x, np.arange(32) % 2, np.zeros(4), np.ones(4))
        model = build_model({"arch": "fc", "widths": [8]}, (4,), 2)
        Trainer(model, data, TrainConfig(epochs=2, batch_size=8, momentum=0.9), seed=0).fit()
        print(sorted(m for m in sys.modules if m.startswith("torch._dynamo")))
        """
    )
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
