"""Tests of randlabels.inits.construct (paper §2.5) and its rule script construct_init.py."""

from __future__ import annotations

import logging
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from randlabels.inits.construct import (
    construct_layers,
    constructible_layers,
    estimated_transfer,
    parametric_transfer,
)
from randlabels.analysis.stats import eigh_descending, misalignment, random_orthonormal_basis, weight_statistics
from randlabels.data.digits import prepare_digits
from randlabels.data.h5file import read_dataset
from randlabels.data.splits import make_split, write_split
from randlabels.inits.pretrained import clone_state, fresh_model, load_into
from randlabels.models.networks import build_model
from randlabels.seeding import stream_seed
from randlabels.training.checkpoints import read_init, save_checkpoints

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"

DIM = 8
LAMBDA = np.logspace(-2, 1.5, DIM)  # σ from 0.1 to ~5.6: both sides of τ
FC = {"arch": "fc", "widths": [4000, 16]}
CNN = {"arch": "cnn2", "filters": 8, "kernel_size": 3, "hidden": 32}


def _gaussian(n=20000, seed=0):
    """x ~ N(0, Q diag(λ) Qᵀ) with a random rotation Q; returns (x, Q)."""
    q = random_orthonormal_basis(DIM, seed=seed + 100)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, DIM)) * np.sqrt(LAMBDA)) @ q.T
    return torch.as_tensor(x, dtype=torch.float32), q


@pytest.fixture(scope="module")
def gaussian_data():
    x, q = _gaussian()
    batches = lambda: iter(x.split(5000))  # noqa: E731
    return x, q, batches


def _fresh(spec, shape, seed=0, scale=1.0, classes=3):
    return fresh_model(spec, shape, classes, scale, seed)


# --------------------------------------------------------------------------- g


def test_parametric_transfer_formula_and_maximum_at_median():
    sigma = np.array([0.0, 0.1, 0.5, 1.0, 2.0, 4.0, 9.0])
    tau = 1.5  # median of the positive σ; σ = 0 gives 0
    expected = np.where(sigma > 0, sigma / (1 + (sigma / tau) ** 2), 0.0)
    np.testing.assert_allclose(parametric_transfer(sigma), expected, rtol=1e-14)
    # on a fine grid the maximum sits at τ (the grid's median), with value τ/2
    grid = np.linspace(0.01, 4.01, 40001)
    g = parametric_transfer(grid)
    tau = np.median(grid)
    assert grid[np.argmax(g)] == pytest.approx(tau, abs=1e-3)
    assert g.max() == pytest.approx(tau / 2, rel=1e-8)
    assert np.all(np.diff(g[grid < tau]) > 0) and np.all(np.diff(g[grid > tau]) < 0)
    with pytest.raises(ValueError, match="no positive"):
        parametric_transfer(np.zeros(3))


def test_estimated_transfer_is_sigma_when_filters_share_the_data_covariance(gaussian_data):
    x, q, batches = gaussian_data
    pretrained = _fresh(FC, (DIM,))
    cov = q @ np.diag(LAMBDA) @ q.T
    rows = np.random.default_rng(5).multivariate_normal(np.zeros(DIM), cov, size=4000)
    pretrained.fc1.weight.data = torch.as_tensor(rows, dtype=torch.float32)
    g = estimated_transfer(pretrained, "fc1", batches)
    sigma_points, f_points = g.points
    sigma = np.sqrt(LAMBDA)
    ratio = g(sigma) / sigma
    np.testing.assert_allclose(ratio / ratio.mean(), 1.0, atol=0.06)
    np.testing.assert_allclose(sigma_points, np.sort(sigma), rtol=0.05)
    # constant beyond the ends; σ <= 0 gives the smallest point's value
    assert g(np.array([sigma.max() * 100]))[0] == pytest.approx(f_points[-1])
    assert g(np.array([sigma.min() / 100, 0.0, -1.0])) == pytest.approx([f_points[0]] * 3)
    with pytest.raises(ValueError, match="no conv/linear layer"):
        estimated_transfer(pretrained, "relu1", batches)


# --------------------------------------------------------------------------- construction


def test_covariance_construction_aligns_rows_with_data_covariance(gaussian_data):
    x, q, batches = gaussian_data
    model = _fresh(FC, (DIM,))
    fresh_w = model.fc1.weight.detach().clone()
    info = construct_layers(model, 1, "covariance", batches, seed=0)
    assert list(info) == ["fc1"]
    assert info["fc1"]["dim"] == DIM and info["fc1"]["units"] == 4000 and info["fc1"]["samples"] == len(x)

    cov_x = np.cov(x.double().numpy(), rowvar=False)
    values, vectors = eigh_descending(cov_x)
    g = parametric_transfer(np.sqrt(values))
    expected = vectors @ np.diag(g**2) @ vectors.T
    _, cov_w = weight_statistics(model.fc1.weight)
    # equal up to the overall scale (the tensor is rescaled to the He norm)
    rel = np.linalg.norm(cov_w / np.trace(cov_w) - expected / np.trace(expected)) / np.linalg.norm(expected / np.trace(expected))
    assert rel < 0.06
    # in the eigenbasis V of Σx, Σw is diagonal with entries ∝ g(σ)²; V itself is Q's
    # (near-equal g² on both sides of τ make Σw's own eigenvectors mix, so compare in V)
    in_v = vectors.T @ cov_w @ vectors / np.trace(cov_w)
    np.testing.assert_allclose(np.diag(in_v), g**2 / np.sum(g**2), rtol=0.08)
    off = in_v - np.diag(np.diag(in_v))
    assert np.abs(off).max() < 0.05 * np.diag(in_v).max()
    true_vectors = eigh_descending(q @ np.diag(LAMBDA) @ q.T)[1]
    assert np.abs(np.sum(true_vectors * vectors, axis=0)).min() > 0.99
    w_values = np.linalg.eigvalsh(cov_w)
    # aligned: the misalignment is small next to the same Σw in a random basis,
    # and next to a Σw of the same spectrum in a random orientation
    aligned = misalignment(cov_x, cov_w)
    control = misalignment(cov_x, cov_w, basis=random_orthonormal_basis(DIM, seed=3))
    r = random_orthonormal_basis(DIM, seed=4)
    rotated = misalignment(cov_x, r @ np.diag(w_values) @ r.T)
    assert aligned < 0.05 * control and aligned < 0.05 * rotated
    # a fresh (isotropic) init has no such anisotropy: its spectrum is flat
    _, cov_fresh = weight_statistics(fresh_w)
    fresh_spread = np.ptp(np.linalg.eigvalsh(cov_fresh)) / np.trace(cov_fresh) * DIM
    built_spread = np.ptp(w_values) / np.trace(cov_w) * DIM
    assert fresh_spread < 0.5 < built_spread


def test_k0_is_the_fresh_init_and_norms_match_he(gaussian_data):
    _, _, batches = gaussian_data
    spec = {"arch": "fc", "widths": [64, 32, 16]}
    fresh = clone_state(_fresh(spec, (DIM,), seed=7, scale=0.5))

    model = _fresh(spec, (DIM,), seed=7, scale=0.5)
    assert construct_layers(model, 0, "covariance", batches, seed=1) == {}
    for key, value in clone_state(model).items():
        assert torch.equal(value, fresh[key]), key

    model = _fresh(spec, (DIM,), seed=7, scale=0.5)
    info = construct_layers(model, 2, "covariance", batches, seed=1)
    assert list(info) == ["fc1", "fc2"]
    state = clone_state(model)
    for name in ("fc1", "fc2"):
        key = name + ".weight"
        assert not torch.equal(state[key], fresh[key])
        assert state[key].double().norm().item() == pytest.approx(fresh[key].double().norm().item(), rel=1e-6)
        assert info[name]["norm"] == pytest.approx(fresh[key].double().norm().item(), rel=1e-6)
        assert torch.count_nonzero(state[name + ".bias"]) == 0
    for key in ("fc3.weight", "fc3.bias", "classifier.weight", "classifier.bias"):
        assert torch.equal(state[key], fresh[key]), key


def test_deterministic_per_seed(gaussian_data):
    _, _, batches = gaussian_data
    spec = {"arch": "fc", "widths": [32, 16]}
    states = []
    for seed in (3, 3, 4):
        model = _fresh(spec, (DIM,))
        construct_layers(model, 2, "covariance", batches, seed=seed)
        states.append(clone_state(model))
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    assert not torch.equal(states[0]["fc1.weight"], states[2]["fc1.weight"])
    assert not torch.equal(states[0]["fc2.weight"], states[2]["fc2.weight"])


def _digit_batches(n=150, batch=64):
    images = torch.as_tensor(read_digits()[:n])
    return lambda: iter(images.split(batch))


_DIGITS: dict = {}


def read_digits():
    """Normalized 8×8 digits (N, 1, 8, 8), prepared once per test session in memory."""
    if "x" not in _DIGITS:
        from sklearn.datasets import load_digits

        x = load_digits().images.astype(np.float32)[:, None] / 16.0
        _DIGITS["x"] = (x - x.mean()) / x.std()
    return _DIGITS["x"]


@pytest.mark.parametrize("method", ["covariance", "layerwise"])
def test_conv_model_constructs_conv_and_hidden_layer(method):
    batches = _digit_batches()  # 150 images: fc1's Σx (d = 512) is rank-deficient
    pretrained = _fresh(CNN, (1, 8, 8), seed=11) if method == "layerwise" else None
    for k in (1, 2):
        model = _fresh(CNN, (1, 8, 8), seed=2)
        fresh = clone_state(model)
        info = construct_layers(model, k, method, batches, seed=0, pretrained=pretrained)
        assert list(info) == ["conv1", "fc1"][:k]
        assert info["conv1"]["dim"] == 9 and info["conv1"]["units"] == 8
        state = clone_state(model)
        for key, value in state.items():
            assert value.shape == fresh[key].shape and torch.isfinite(value).all(), key
        if k == 2:
            assert info["fc1"]["dim"] == 8 * 64 and info["fc1"]["units"] == 32
            assert info["fc1"]["rank"] < 150  # more dimensions than samples
            assert state["fc1.weight"].norm().item() == pytest.approx(fresh["fc1.weight"].norm().item(), rel=1e-5)
        else:
            assert torch.equal(state["fc1.weight"], fresh["fc1.weight"])
        assert torch.equal(state["classifier.weight"], fresh["classifier.weight"])
        out = model(next(batches()))
        assert torch.isfinite(out).all()


def test_invalid_requests_are_refused(gaussian_data):
    _, _, batches = gaussian_data
    spec = {"arch": "fc", "widths": [16, 8]}
    model = _fresh(spec, (DIM,))
    before = clone_state(model)
    assert constructible_layers(model) == ["fc1", "fc2"]
    with pytest.raises(ValueError, match="has 2 weight layer"):
        construct_layers(model, 3, "covariance", batches, seed=0)
    with pytest.raises(ValueError, match="pre-trained"):
        construct_layers(model, 1, "layerwise", batches, seed=0)
    with pytest.raises(ValueError, match="unknown construction method"):
        construct_layers(model, 1, "magic", batches, seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        construct_layers(model, -1, "covariance", batches, seed=0)
    with pytest.raises(ValueError, match="input dimension d = 8"):
        construct_layers(model, 1, "covariance", batches, seed=0, max_dim=4)
    for key, value in clone_state(model).items():
        assert torch.equal(value, before[key]), key


# --------------------------------------------------------------------------- rule script


def _run_script(monkeypatch, tmp_path, *, method, depth, source=None):
    inputs = {"dataset": str(tmp_path / "digits.h5"), "split": str(tmp_path / "split.h5")}
    if source is not None:
        inputs["source"] = source
    fake = SimpleNamespace(
        input=SimpleNamespace(**inputs),
        output=[str(tmp_path / f"init_{method}_{depth}.pt")],
        log=[str(tmp_path / "logs" / f"construct_{method}.log")],
        wildcards=SimpleNamespace(exp="test", construct=f"{method}{depth}", scale="0.5", seed="1"),
        config={"experiments": {"test": {"finetune": {}}}},  # from_labels: the default, random
        threads=1,
        params=SimpleNamespace(
            model=CNN, method=method, depth=depth, init_scale=0.5, seed=1,
            batch_size=64, samples=150, device="cpu",
        ),
    )
    monkeypatch.syspath_prepend(str(SCRIPTS))
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # runlog.start replaces it
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    threads = torch.get_num_threads()  # the script sets the job's thread count
    try:
        runpy.run_path(str(SCRIPTS / "construct_init.py"), init_globals={"snakemake": fake}, run_name="__main__")
    finally:
        torch.set_num_threads(threads)
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers[:], root.level = saved
        logging.captureWarnings(False)
    return fake


@pytest.fixture(scope="module")
def script_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("construct")
    prepare_digits(tmp / "digits.h5")
    dataset = read_dataset(tmp / "digits.h5")
    split = make_split(dataset.is_test,
                       upstream=300, downstream=300, test=100, upstream_classes=5, downstream_classes=4, seed=0)
    write_split(split, tmp / "split.h5")
    source = build_model(CNN, (1, 8, 8), 5)
    init = clone_state(fresh_model(CNN, (1, 8, 8), 5, 1.0, 9))
    gen = torch.Generator().manual_seed(0)
    trained = {k: v + 0.3 * v.std() * torch.randn(v.shape, generator=gen) if v.dim() > 1 else v for k, v in init.items()}
    load_into(source, trained, "test")
    save_checkpoints(tmp / "source.pt", spec=CNN, input_shape=(1, 8, 8), num_classes=5, init_scale=0.5, seed=1,
                     labels="random", experiment="test", states={0: init, 3: trained}, diverged=True)
    return tmp


@pytest.mark.parametrize("method", ["covariance", "layerwise"])
def test_script_end_to_end(monkeypatch, script_files, method):
    tmp = script_files
    source = str(tmp / "source.pt") if method == "layerwise" else None
    fake = _run_script(monkeypatch, tmp, method=method, depth=2, source=source)
    init = read_init(fake.output[0])
    assert init["spec"] == CNN and init["num_classes"] == 5 and list(init["input_shape"]) == [1, 8, 8]
    assert init["source_diverged"] is (method == "layerwise")
    assert method in init["description"] and "k = 2" in init["description"]
    model = load_into(build_model(CNN, (1, 8, 8), 5), init["state"], fake.output[0])
    fresh = clone_state(fresh_model(CNN, (1, 8, 8), 5, 0.5, stream_seed(1, "init", "finetune")))
    for key in ("conv1.weight", "fc1.weight"):
        assert not torch.equal(init["state"][key], fresh[key])
        assert init["state"][key].norm().item() == pytest.approx(fresh[key].norm().item(), rel=1e-5)
    assert torch.equal(init["state"]["classifier.weight"], fresh["classifier.weight"])
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    text = Path(fake.log[0]).read_text()
    assert "layer conv1" in text and "layer fc1" in text
    assert ("diverged" in text) is (method == "layerwise")
