"""Tests of randlabels.analysis.measure and randlabels.analysis.statsfile: per-layer statistics and their HDF5 file."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from randlabels.analysis.measure import check_layer_sizes, layer_memory_bytes, measure_checkpoints, measure_layer
from randlabels.analysis.covariance import patch_covariance
from randlabels.analysis.stats import random_orthonormal_basis
from randlabels.errors import ResourceError
from randlabels.models.networks import build_model
from randlabels.analysis.statsfile import (
    ARRAYS,
    FORMAT,
    activation_table,
    first_layer_name,
    last_epoch,
    misalignment_table,
    read_layer,
    transfer_function_table,
    write_stats,
)
from randlabels.inits.pretrained import clone_state, fresh_model, load_into


def _orthogonal(d, seed):
    return random_orthonormal_basis(d, seed)


def _weights_with_covariance(q: np.ndarray, variances) -> torch.Tensor:
    """Rows ±s_i q_i (2d rows, mean 0): covariance (ddof 1) = Σ_i 2 s_i²/(2d−1) q_i q_iᵀ."""
    d = q.shape[0]
    n = 2 * d
    rows = []
    for i, var in enumerate(variances):
        s = math.sqrt(var * (n - 1) / 2)
        rows += [s * q[:, i], -s * q[:, i]]
    return torch.tensor(np.array(rows), dtype=torch.float64)


# --------------------------------------------------------------------------- measure_layer


def test_measure_layer_on_aligned_covariances():
    d = 3
    q = _orthogonal(d, 1)
    cov_x = q @ np.diag([3.0, 2.0, 1.0]) @ q.T
    variances = [0.5, 2.0, 1.0]  # Σw shares Σx's eigenvectors, with another spectrum
    weight = _weights_with_covariance(q, variances)
    basis = _orthogonal(d, 99)
    rec = measure_layer(cov_x, np.zeros(d), weight, "conv1", basis)
    np.testing.assert_allclose(rec.cov_w, q @ np.diag(variances) @ q.T, atol=1e-12)
    np.testing.assert_allclose(rec.mean_w, 0.0, atol=1e-12)
    assert rec.misalignment_data == pytest.approx(0.0, abs=1e-10)
    assert rec.undefined_reason == ""
    # σ in Σx's descending order, and f(σ_i) = sqrt(variance of Σw along v_i)
    np.testing.assert_allclose(rec.sigma, np.sqrt([3.0, 2.0, 1.0]), rtol=1e-12)
    np.testing.assert_allclose(rec.f, np.sqrt(variances), rtol=1e-10)
    np.testing.assert_allclose(rec.eigval_x, [3.0, 2.0, 1.0], rtol=1e-12)
    np.testing.assert_allclose(rec.eigval_w, [2.0, 1.0, 0.5], rtol=1e-12)
    # the random-basis control of a non-isotropic Σw is > 0
    assert rec.misalignment_random > 1e-3
    assert rec.weight_shape == (6, 3) and rec.weights.shape == (6, 3)
    assert rec.layer == "conv1"


def test_measure_layer_misaligned_is_positive():
    d = 3
    cov_x = np.diag([3.0, 2.0, 1.0])
    weight = _weights_with_covariance(_orthogonal(d, 5), [4.0, 1.0, 0.25])
    rec = measure_layer(cov_x, np.zeros(d), weight, "l", _orthogonal(d, 6))
    assert rec.misalignment_data > 1e-2
    assert math.isfinite(rec.misalignment_random)


def test_measure_layer_conv_weight_flattened_in_patch_order():
    weight = torch.randn(20, 2, 1, 2, generator=torch.Generator().manual_seed(0))
    rec = measure_layer(np.eye(4), np.zeros(4), weight, "c", _orthogonal(4, 0))
    assert rec.weight_shape == (20, 2, 1, 2)
    np.testing.assert_array_equal(rec.weights, weight.reshape(20, 4).double().numpy())
    np.testing.assert_allclose(rec.cov_w, np.cov(rec.weights, rowvar=False), rtol=1e-10)
    # Σx = I: every basis is an eigenbasis, f_i² are the diagonal entries of Σw in that basis
    np.testing.assert_allclose(np.sum(rec.f ** 2), np.trace(rec.cov_w), rtol=1e-10)


def test_fewer_filters_than_dimensions_is_undefined():
    weight = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    rec = measure_layer(np.diag([4.0, 3.0, 2.0, 1.0]), np.zeros(4), weight, "fc1", _orthogonal(4, 0))
    assert math.isnan(rec.misalignment_data) and math.isnan(rec.misalignment_random)
    assert rec.undefined_reason
    assert "singular" in rec.undefined_reason
    # f needs no inverse: still defined, and non-negative
    assert np.all(np.isfinite(rec.f)) and np.all(rec.f >= 0)


# --------------------------------------------------------------------------- measure_checkpoints

SPEC = {"arch": "cnn2", "filters": 12, "kernel_size": 3, "hidden": 4}
SHAPE = (1, 4, 4)
ATTRS = {"experiment": "toy", "labels": "random", "init_scale": 0.5, "seed": 3, "arch": "cnn2",
         "diverged": False, "source": "pretrain/toy.pt"}  # as the statistics rule writes them


def _inputs():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(8, *SHAPE, generator=gen) for _ in range(2)]


@pytest.fixture(scope="module")
def measured():
    model = fresh_model(SPEC, SHAPE, 3, 1.0, seed=0)
    init = clone_state(model)
    gen = torch.Generator().manual_seed(1)
    later = {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in init.items()}
    states = {2: later, 0: init}  # unsorted on purpose
    inputs = _inputs()
    records = measure_checkpoints(
        build_model(SPEC, SHAPE, 3), states, ["first", "fc1"], batches=lambda: iter(inputs),
        seed=3, load=lambda m, s: load_into(m, s, "memory"),
    )
    return states, inputs, records


@pytest.fixture(scope="module")
def stats_file(measured, tmp_path_factory):
    _, _, records = measured
    path = tmp_path_factory.mktemp("stats") / "run.h5"
    write_stats(path, records, ATTRS)
    return path


def test_measure_checkpoints_records(measured):
    states, inputs, records = measured
    assert [r.epoch for r in records] == [0, 2]
    for record in records:
        assert [layer.layer for layer in record.layers] == ["conv1", "fc1"]
    conv0, fc0 = records[0].layers
    conv2, fc2 = records[1].layers
    # first layer: Σx of the 3×3 'same' patches of the inputs, identical at every epoch
    ref = patch_covariance(inputs, kernel_size=3, padding=1)
    np.testing.assert_allclose(conv0.cov_x, ref.covariance(), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(conv0.cov_x, conv2.cov_x)
    # deeper layer: Σx depends on the checkpoint's own conv weights
    assert fc0.cov_x.shape == (12 * 16, 12 * 16)
    assert not np.allclose(fc0.cov_x, fc2.cov_x)
    # the weights measured are the checkpoint's
    np.testing.assert_array_equal(conv2.weights, states[2]["conv1.weight"].reshape(12, -1).double().numpy())
    np.testing.assert_array_equal(fc0.weights, states[0]["fc1.weight"].double().numpy())
    # 12 filters in 9 dims: defined; 4 units in 192 dims: undefined, with a reason
    assert math.isfinite(conv0.misalignment_data) and conv0.undefined_reason == ""
    assert math.isnan(fc0.misalignment_data) and fc0.undefined_reason
    # activations of both ReLUs at each checkpoint
    for record in records:
        assert record.activations["module"].tolist() == ["relu1", "relu2"]


def test_measure_checkpoints_is_deterministic(measured):
    states, inputs, records = measured
    again = measure_checkpoints(
        build_model(SPEC, SHAPE, 3), states, ["conv1"], batches=lambda: iter(inputs),
        seed=3, load=lambda m, s: load_into(m, s, "memory"),
    )
    assert again[1].layers[0].misalignment_random == records[1].layers[0].misalignment_random
    other_seed = measure_checkpoints(
        build_model(SPEC, SHAPE, 3), {0: states[0]}, ["conv1"], batches=lambda: iter(inputs),
        seed=4, load=lambda m, s: load_into(m, s, "memory"),
    )
    assert other_seed[0].layers[0].misalignment_random != records[0].layers[0].misalignment_random
    assert other_seed[0].layers[0].misalignment_data == pytest.approx(records[0].layers[0].misalignment_data, rel=1e-12)


def test_measure_checkpoints_rejects_unknown_layer(measured):
    states, inputs, _ = measured
    with pytest.raises(ValueError, match="nope"):
        measure_checkpoints(build_model(SPEC, SHAPE, 3), states, ["nope"], batches=lambda: iter(inputs),
                            seed=0, load=lambda m, s: load_into(m, s, "memory"))


# --------------------------------------------------------------------------- statsfile


def test_stats_file_layout_with_h5py(stats_file, measured):
    _, _, records = measured
    with h5py.File(stats_file, "r") as f:
        assert f.attrs["format"] == FORMAT
        for key, value in ATTRS.items():
            assert f.attrs[key] == value
        assert sorted(f.keys()) == ["epoch_0000", "epoch_0002"]
        group = f["epoch_0002"]
        assert group.attrs["epoch"] == 2
        assert [str(v) for v in group.attrs["layers"]] == ["conv1", "fc1"]
        assert set(group.keys()) == {"conv1", "fc1", "activations"}
        sub = group["conv1"]
        assert set(sub.keys()) == set(ARRAYS)
        assert set(sub.attrs.keys()) == {"weight_shape", "misalignment_data", "misalignment_random", "undefined_reason",
                                         "shared_input", "random_basis_seed"}
        for name in ARRAYS:
            assert sub[name].dtype == np.float64
        np.testing.assert_array_equal(sub["cov_x"][()], records[1].layers[0].cov_x)
        np.testing.assert_array_equal(sub.attrs["weight_shape"], [12, 1, 3, 3])
        acts = group["activations"]
        assert acts.dtype.names == ("module", "frac_active", "frac_dead", "mean_activation")
        assert len(acts) == 2


def test_misalignment_table(stats_file, measured):
    _, _, records = measured
    table = misalignment_table([stats_file])
    assert list(table.columns) == ["experiment", "labels", "init_scale", "seed", "diverged", "epoch", "layer", "basis",
                                   "misalignment", "reason"]
    assert len(table) == 2 * 2 * 2  # epochs × layers × bases
    assert (table["experiment"] == "toy").all() and (table["seed"] == 3).all() and (table["init_scale"] == 0.5).all()
    row = table.query("epoch == 2 and layer == 'conv1' and basis == 'data'")
    assert len(row) == 1
    assert row["misalignment"].iloc[0] == records[1].layers[0].misalignment_data
    assert row["reason"].iloc[0] == ""
    rnd = table.query("epoch == 0 and layer == 'conv1' and basis == 'random'")
    assert rnd["misalignment"].iloc[0] == records[0].layers[0].misalignment_random
    fc = table[table["layer"] == "fc1"]
    assert len(fc) == 4 and fc["misalignment"].isna().all()
    for index, epoch in enumerate((0, 2)):
        reasons = fc.loc[fc["epoch"] == epoch, "reason"]
        assert (reasons == records[index].layers[1].undefined_reason).all() and len(reasons) == 2
    assert fc["reason"].str.contains("singular").all()


def test_transfer_function_table(stats_file, measured):
    _, _, records = measured
    table = transfer_function_table([stats_file])
    assert list(table.columns) == ["experiment", "labels", "init_scale", "seed", "diverged", "epoch", "layer", "index", "sigma", "f"]
    assert len(table) == 2 * (9 + 192)
    conv = table.query("epoch == 2 and layer == 'conv1'")
    assert conv["index"].tolist() == list(range(9))
    np.testing.assert_array_equal(conv["sigma"].to_numpy(), records[1].layers[0].sigma)
    np.testing.assert_array_equal(conv["f"].to_numpy(), records[1].layers[0].f)


def test_activation_table(stats_file, measured):
    _, _, records = measured
    table = activation_table([stats_file])
    assert len(table) == 2 * 2
    assert {"module", "frac_active", "frac_dead", "mean_activation", "experiment", "seed", "epoch"} <= set(table.columns)
    assert table["module"].map(type).eq(str).all()
    got = table[table["epoch"] == 2].set_index("module")
    want = records[1].activations.set_index("module")
    for col in ("frac_active", "frac_dead", "mean_activation"):
        np.testing.assert_array_equal(got.loc[["relu1", "relu2"], col].to_numpy(), want.loc[["relu1", "relu2"], col].to_numpy())


def test_tables_over_several_runs(stats_file, measured, tmp_path):
    _, _, records = measured
    second = tmp_path / "run2.h5"
    write_stats(second, records, {**ATTRS, "seed": 4})
    table = misalignment_table([stats_file, second])
    assert len(table) == 16 and sorted(table["seed"].unique()) == [3, 4]
    assert len(transfer_function_table([stats_file, second])) == 4 * (9 + 192)
    assert len(activation_table([stats_file, second])) == 8
    assert transfer_function_table([]).empty and activation_table([]).empty and misalignment_table([]).empty


def test_read_layer_last_epoch_first_layer(stats_file, measured):
    _, _, records = measured
    data = read_layer(stats_file, 0, "fc1")
    rec = records[0].layers[1]
    for name in ARRAYS:
        np.testing.assert_array_equal(data[name], np.asarray(getattr(rec, name), dtype=np.float64))
    assert math.isnan(data["misalignment_data"]) and math.isnan(data["misalignment_random"])
    assert str(data["undefined_reason"]) == rec.undefined_reason
    np.testing.assert_array_equal(data["weight_shape"], [4, 192])
    with pytest.raises(ValueError, match="epoch 5"):
        read_layer(stats_file, 5, "conv1")
    with pytest.raises(ValueError, match="nope"):
        read_layer(stats_file, 0, "nope")
    assert last_epoch(stats_file) == 2
    assert first_layer_name(stats_file) == "conv1"
    assert isinstance(first_layer_name(stats_file), str)


def test_first_layer_name_without_layers_raises(tmp_path):
    from randlabels.analysis.measure import CheckpointRecord

    path = tmp_path / "empty.h5"
    write_stats(path, [CheckpointRecord(epoch=0, layers=[], activations=None)], ATTRS)
    with pytest.raises(ValueError, match="empty.h5"):
        first_layer_name(path)


@pytest.mark.parametrize("reader", [misalignment_table, transfer_function_table, activation_table])
def test_non_stats_files_named(tmp_path, reader):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(ValueError, match="garbage.h5"):
        reader([garbage])
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something-else/1"
    with pytest.raises(ValueError, match="other.h5"):
        reader([other])


def test_non_stats_file_single_readers(tmp_path):
    other = tmp_path / "split.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("upstream", data=np.arange(3))
    for call in (lambda: read_layer(other, 0, "conv1"), lambda: last_epoch(other), lambda: first_layer_name(other)):
        with pytest.raises(ValueError, match="split.h5"):
            call()


def test_stats_files_are_compressed_and_float32_halves_them(measured, tmp_path):
    """The arrays come back as written (float64 exactly, float32 to its precision), and
    the files shrink: a 192-dimensional Σx of fc1 dominates this one."""
    _, _, records = measured
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:  # what write_stats wrote before: float64, uncompressed
        for record in records:
            for layer in record.layers:
                for name in ("cov_x", "eigvec_x", "cov_w", "eigvec_w"):
                    f.create_dataset(f"{record.epoch}/{layer.layer}/{name}", data=np.asarray(getattr(layer, name), dtype=np.float64))
    double, single = tmp_path / "f64.h5", tmp_path / "f32.h5"
    write_stats(double, records, ATTRS)
    write_stats(single, records, ATTRS, precision="float32")
    fc = records[-1].layers[1]
    got64, got32 = read_layer(double, 2, "fc1"), read_layer(single, 2, "fc1")
    np.testing.assert_array_equal(got64["cov_x"], fc.cov_x)
    assert got32["cov_x"].dtype == np.float32
    np.testing.assert_allclose(got32["cov_x"], fc.cov_x, rtol=1e-6, atol=1e-7 * np.abs(fc.cov_x).max())
    with h5py.File(double) as f:
        assert f.attrs["precision"] == "float64" and f["epoch_0002/fc1/cov_x"].compression == "gzip"
    with h5py.File(single) as f:
        assert f.attrs["precision"] == "float32"
    sizes = {p.stem: p.stat().st_size for p in (plain, double, single)}
    print(sizes)
    assert sizes["f64"] < sizes["plain"] and sizes["f32"] < 0.6 * sizes["f64"]
    # the tables read from either agree
    pd.testing.assert_frame_equal(misalignment_table([double]), misalignment_table([single]))
    with pytest.raises(ValueError, match="precision"):
        write_stats(tmp_path / "bad.h5", records, ATTRS, precision="float16")


def test_a_layer_too_large_for_the_jobs_memory_is_refused_before_any_data_pass():
    """The 2-layer CNN's hidden layer after 256 filters on 32×32 images has 262 144 input
    dimensions: 6 × 262144² × 8 bytes ≈ 3 TiB. The check names the key and the size."""
    model = build_model({"arch": "cnn2", "filters": 256, "kernel_size": 3, "hidden": 64}, (3, 32, 32), 10)
    assert model.fc1.weight.shape[1] == 262144
    passes = []

    def batches():
        passes.append(1)
        return iter([torch.zeros(2, 3, 32, 32)])

    with pytest.raises(ResourceError, match=r"experiments\.big\.stats\.layers: layer fc1 has 262144 input "
                                            r"dimensions.*3\.07e\+03 GiB, more than this job's 7\.81 GiB") as err:
        measure_checkpoints(model, {0: model.state_dict()}, ["first", "fc1"], batches, seed=0,
                            load=lambda m, s: m.load_state_dict(s), memory_mb=8000,
                            where="experiments.big.stats.layers")
    assert passes == [] and "Leave the layer out of stats.layers" in str(err.value)
    # The first layer (27 dimensions) fits in a megabyte; so does nothing without a limit.
    assert layer_memory_bytes(27) == 6 * 27 * 27 * 8
    check_layer_sizes(model, ["conv1"], memory_mb=1, where="x")
    check_layer_sizes(model, ["fc1"], memory_mb=None, where="x")
