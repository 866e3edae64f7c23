"""Appendix E.1 (the three synthetic f(σ) panels): upstream-only splits, Gaussian data
drawn afresh per seed, the f / f − f(epoch 0) figure, and the configs that run them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from randlabels.analysis.statsfile import first_layer_name, read_layer
from randlabels.data import gaussian
from randlabels.data.h5file import read_dataset
from randlabels.data.splits import make_split, read_split, write_split
from randlabels.errors import InputFileError
from randlabels.io import read_table
from randlabels.seeding import stream_rng
from randlabels.workflow import plan, targets
from randlabels.workflow.config import check_config
from workflow_helpers import ROOT, SCHEMA, copy_project, job_counts, load_config, refused, snakemake

PAPER = ROOT / "configs" / "paper-cifar10.yaml"
EMBEDDED = ROOT / "configs" / "embedded-all.yaml"
E1 = ("e1_d10_w2048", "e1_d30_w2048", "e1_d30_w256_n2000")
SPECTRUM = {"kind": "linear", "low": 0.1, "high": 3.0}


load = load_config


def vector_config(**split) -> dict:
    """A valid config: one Gaussian dataset of 100 samples, one fc experiment."""
    return {
        "seeds": [0, 1],
        "datasets": {"g": {"source": "gaussian", "dim": 4, "variances": [1, 2, 3, 4], "n_samples": 100}},
        "experiments": {"e": {
            "dataset": "g", "model": {"arch": "fc", "widths": [8]}, "init_scales": [1.0],
            "split": split or {"upstream": 100, "downstream": 0, "test": 0},
            "pretrain": {"labels": ["random"], "epochs": 1},
        }},
    }


# ----------------------------------------------------------------- upstream-only split


def test_a_split_may_put_every_sample_upstream(tmp_path):
    split = make_split(np.zeros(50, bool), upstream=50, downstream=0, test=0,
                       upstream_classes=10, downstream_classes=10, seed=3)
    np.testing.assert_array_equal(split.upstream, np.arange(50))
    assert len(split.downstream) == 0 and len(split.test) == 0
    assert split.upstream_random.shape == (50,) and split.downstream_random.shape == (0,)
    write_split(split, tmp_path / "s.h5")
    back = read_split(tmp_path / "s.h5")
    np.testing.assert_array_equal(back.upstream, split.upstream)
    np.testing.assert_array_equal(back.upstream_random, split.upstream_random)
    assert back.downstream.shape == (0,) and back.test.shape == (0,) and back.downstream_random.shape == (0,)
    # The upstream part and its labels do not depend on the other sizes (same streams).
    other = make_split(np.zeros(50, bool), upstream=50, downstream=0, test=None,
                       upstream_classes=10, downstream_classes=10, seed=3)
    np.testing.assert_array_equal(other.upstream_random, split.upstream_random)


def test_negative_or_fractional_sizes_are_refused():
    for sizes in ({"downstream": -1, "test": 0}, {"downstream": 0, "test": -2}, {"downstream": 1.5, "test": 0}):
        with pytest.raises(ValueError, match="not a valid size"):
            make_split(np.zeros(20, bool), upstream=5, upstream_classes=2, downstream_classes=2, seed=0, **sizes)


def test_the_config_accepts_an_upstream_only_split():
    check_config(vector_config(), SCHEMA)  # no exception
    assert plan.split_settings(vector_config(), "e")["downstream"] == 0


def test_downstream_zero_is_refused_for_an_experiment_that_fine_tunes():
    config = vector_config()
    config["experiments"]["e"]["finetune"] = {"labels": "random", "epochs": 1, "variants": ["scratch"]}
    message = refused(config)
    assert "experiments.e.split.downstream: 0, but the experiment fine-tunes" in message
    assert "remove the finetune section" in message


def test_test_zero_is_refused_where_real_labels_are_evaluated():
    config = vector_config()
    config["experiments"]["e"]["pretrain"]["labels"] = ["random", "real"]
    assert "experiments.e.split.test: 0, but real labels are evaluated on the test set" in refused(config)
    config = vector_config(upstream=50, downstream=20, test=0)
    config["experiments"]["e"]["finetune"] = {"labels": "real", "epochs": 1, "variants": ["scratch"]}
    assert "a real-label fine-tuning task" in refused(config)


def test_no_test_samples_left_says_how_to_ask_for_none():
    assert "test: 0 if no stage needs one" in refused(vector_config(upstream=60, downstream=40))


# ----------------------------------------------------------------- per-seed Gaussian data


def _draw(path, draw_seed, n=500, seed=0):
    gaussian.prepare_gaussian(path, dim=30, spectrum=SPECTRUM, n_samples=n, seed=seed, per_seed=True,
                              draw_seed=draw_seed)
    return read_dataset(path)


def test_each_seed_has_its_own_draw_and_a_seed_always_the_same(tmp_path):
    a0, a1 = _draw(tmp_path / "a0.h5", 0), _draw(tmp_path / "a1.h5", 1)
    assert a0.images.shape == (500, 30) and len(a0.labels) == 500 and not a0.is_test.any()
    assert a0.attrs["draw_seed"] == 0 and a1.attrs["draw_seed"] == 1 and a0.attrs["n_samples"] == 500
    assert not np.array_equal(a0.images, a1.images)
    # A seed's draw is its own stream: the same numbers whenever it is drawn.
    again = _draw(tmp_path / "again.h5", 1)
    np.testing.assert_array_equal(again.images, a1.images)
    np.testing.assert_array_equal(again.labels, a1.labels)
    rng = stream_rng(1, "gaussian-data", 0)
    np.testing.assert_array_equal(a1.images, (rng.standard_normal((500, 30)) * np.sqrt(np.linspace(0.1, 3.0, 30)))
                                  .astype(np.float32))
    # The dataset's own seed gives other draws.
    assert not np.array_equal(_draw(tmp_path / "c.h5", 1, seed=7).images, a1.images)


def test_each_seeds_draw_has_the_covariance_sigma_x(tmp_path):
    """Per seed, the empirical covariance (known zero mean) is within 5 standard errors
    of diag(0.1, …, 3.0) in every entry (see test_datasets.test_gaussian_paper_covariance)."""
    n = 40_000
    target = np.diag(np.linspace(0.1, 3.0, 30))
    var = np.diag(target)
    stderr = np.sqrt((np.outer(var, var) + target**2) / n)
    for seed in (0, 5):
        data = _draw(tmp_path / f"g{seed}.h5", seed, n=n)
        x = data.images.astype(np.float64)
        cov = x.T @ x / n
        assert np.all(np.abs(cov - target) <= 5 * stderr), (seed, np.abs(cov - target).max())
        assert np.all(np.abs(np.bincount(data.labels, minlength=10) - n / 10) < 5 * np.sqrt(n * 0.09))


def test_a_split_of_another_seeds_draw_is_refused_naming_the_file(tmp_path):
    data = _draw(tmp_path / "g.h5", 1, n=10)
    with pytest.raises(InputFileError, match=r"g\.h5.*draw of seed 1, not of seed 4.*its own file"):
        gaussian.check_draw(data.attrs, 4, tmp_path / "g.h5")
    gaussian.check_draw(data.attrs, 1, tmp_path / "g.h5")  # its own seed passes


def test_without_per_seed_the_data_are_what_they_always_were(tmp_path):
    gaussian.prepare_gaussian(tmp_path / "g.h5", dim=3, variances=[1, 2, 3], n_samples=20, seed=4)
    data = read_dataset(tmp_path / "g.h5")
    rng = np.random.default_rng(4)  # the draw before per_seed existed
    np.testing.assert_array_equal(data.images, (rng.standard_normal((20, 3)) * np.sqrt([1, 2, 3])).astype(np.float32))
    np.testing.assert_array_equal(data.labels, rng.integers(0, 10, size=20, dtype=np.int64))
    assert "draw_seed" not in data.attrs
    gaussian.check_draw(data.attrs, 3)  # a shared dataset: any seed splits it


@pytest.mark.parametrize("params, word", [
    ({"per_seed": True}, "draw_seed"),
    ({"per_seed": True, "draw_seed": -1}, "draw_seed"),
    ({"per_seed": True, "draw_seed": 1.5}, "draw_seed"),
    ({"draw_seed": 0}, "per_seed: true"),
    ({"per_seed": "yes", "draw_seed": 0}, "per_seed"),
])
def test_bad_per_seed_parameters(tmp_path, params, word):
    with pytest.raises(ValueError, match=word):
        gaussian.prepare_gaussian(tmp_path / "g.h5", dim=2, variances=[1, 2], n_samples=10, seed=0, **params)
    assert not (tmp_path / "g.h5").exists()


def test_a_per_seed_dataset_is_one_file_per_seed_with_its_seed_in_the_settings():
    config = vector_config()
    before = plan.dataset_settings(config, "g")
    assert "per_seed" not in before and "draw_seed" not in before
    assert plan.dataset_file(config, "e", 3) == "results/data/g.h5"  # shared: every seed reads it
    config["datasets"]["g"]["per_seed"] = False  # the default, written out: nothing changes
    assert plan.dataset_settings(config, "g") == before
    with pytest.raises(ValueError, match="'g' is not drawn per seed"):
        plan.dataset_settings(config, "g", 1)
    config["datasets"]["g"]["per_seed"] = True
    assert plan.dataset_settings(config, "g", 7) == {**before, "per_seed": True, "draw_seed": 7}
    with pytest.raises(ValueError, match="'g' needs the seed it is drawn for"):
        plan.dataset_settings(config, "g")
    assert plan.dataset_file(config, "e", 3) == "results/data/g/seed3.h5"
    assert plan.datasets_pattern(config, drawn_per_seed=True) == "g"
    assert plan.datasets_pattern(config, drawn_per_seed=False) == "(?!)"
    check_config(config, SCHEMA)


def test_the_schema_refuses_a_per_seed_that_is_not_a_boolean():
    config = vector_config()
    config["datasets"]["g"]["per_seed"] = "yes"
    assert "datasets.g.per_seed" in refused(config)


# ----------------------------------------------------------------- figure


def _tf_table(experiments=(("e1_a", np.linspace(1.0, 1.9, 10)), ("e1_b", np.linspace(0.1, 3.0, 30))),
              seeds=(0, 1, 2), epochs=(0, 25, 200)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for exp, variances in experiments:
        for seed in seeds:
            sigma = np.sqrt(variances[::-1] * (1 + 0.01 * rng.standard_normal(len(variances))))
            for epoch in epochs:
                f = 0.25 + 1e-4 * epoch * np.sin(sigma) + 0.001 * rng.standard_normal(len(sigma))
                for index, (s, value) in enumerate(zip(sigma, f)):
                    rows.append(dict(experiment=exp, labels="random", init_scale=1.0, seed=seed, epoch=epoch,
                                     layer="fc0", index=index, sigma=s, f=value, collapsed=False))
    return pd.DataFrame(rows)


def test_change_from_init_is_f_minus_f_at_epoch_zero_by_hand():
    from randlabels.plots.transfer_function import change_from_init

    table = pd.DataFrame({
        "experiment": ["a"] * 6 + ["b"] * 2,
        "labels": ["random"] * 8,
        "init_scale": [1.0] * 8,
        "seed": [0, 0, 0, 0, 1, 1, 0, 0],
        "layer": ["fc0"] * 8,
        "epoch": [0, 0, 10, 10, 0, 10, 10, 20],  # experiment b has no epoch 0
        "index": [0, 1, 0, 1, 0, 0, 0, 0],
        "sigma": [2.0, 1.0, 2.0, 1.0, 2.1, 2.1, 1.5, 1.5],
        "f": [0.50, 0.40, 0.56, 0.38, 0.70, 0.65, 0.3, 0.4],
    }).sample(frac=1.0, random_state=1)  # any row order
    change = change_from_init(table)
    expected = pd.Series([0.0, 0.0, 0.06, -0.02, 0.0, -0.05, np.nan, np.nan],
                         index=range(8)).loc[table.index]
    np.testing.assert_allclose(change.to_numpy(), expected.to_numpy(), atol=1e-12)
    assert change.index.equals(table.index)


def test_the_figure_draws_several_seeds_and_panels(tmp_path):
    from randlabels.plots import transfer_function

    from test_plots import assert_png

    table = _tf_table()
    out = tmp_path / "tf.png"
    transfer_function.plot(table, out)
    assert_png(out)
    bands = transfer_function._seed_bands(table)
    assert set(bands["n_seeds"]) == {3}
    # The lower row's line is the mean over seeds of f − f(0); its band the seeds' range.
    one = table[(table["experiment"] == "e1_b") & (table["index"] == 4)]
    change = one.set_index(["seed", "epoch"])["f"]
    per_seed = [change[(s, 200)] - change[(s, 0)] for s in (0, 1, 2)]
    row = bands[(bands["experiment"] == "e1_b") & (bands["index"] == 4) & (bands["epoch"] == 200)].iloc[0]
    assert row["change"] == pytest.approx(np.mean(per_seed))
    assert (row["change_min"], row["change_max"]) == (pytest.approx(min(per_seed)), pytest.approx(max(per_seed)))
    zero = bands[bands["epoch"] == 0]
    assert np.allclose(zero[["change", "change_min", "change_max"]].to_numpy(), 0.0)


def test_the_target_table_carries_the_change_from_init():
    table = _tf_table(seeds=(0, 1))
    info = {exp: {"model": "fc"} for exp in table["experiment"].unique()}
    combined, figure_table = targets.combine("fig_transfer_function", {"transfer_function": table}, info)
    by_run = combined.set_index(["experiment", "seed", "epoch", "index"])
    for exp in ("e1_a", "e1_b"):
        expected = by_run.loc[(exp, 1, 200, 3), "f"] - by_run.loc[(exp, 1, 0, 3), "f"]
        assert by_run.loc[(exp, 1, 200, 3), "f_change"] == pytest.approx(expected)
    assert (combined.loc[combined["epoch"] == 0, "f_change"] == 0).all()
    assert "f_change" in figure_table.columns


# ----------------------------------------------------------------- configs


@pytest.mark.parametrize("path", [EMBEDDED, PAPER])
def test_the_configs_pass_the_check_and_hold_the_three_panels(path):
    result = subprocess.run([sys.executable, "-m", "randlabels.workflow.config", str(path)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    config = load(path)
    assert set(E1) <= set(targets.experiments(config, "fig_transfer_function"))
    assert {"gaussian_fc"} <= set(targets.experiments(config, "fig_transfer_function"))
    shapes = {}
    for exp in E1:
        entry = config["experiments"][exp]
        dataset = config["datasets"][entry["dataset"]]
        assert dataset["per_seed"] is True and "finetune" not in entry
        assert entry["pretrain"]["labels"] == ["random"] and entry["split"]["upstream_classes"] == 10
        variances = np.linspace(dataset["spectrum"]["low"], dataset["spectrum"]["high"], dataset["dim"])
        shapes[exp] = (dataset["dim"], entry["model"]["widths"], entry["split"]["upstream"], variances)
    assert shapes["e1_d10_w2048"][:3] == (10, [2048, 256], 10000)
    np.testing.assert_allclose(shapes["e1_d10_w2048"][3], np.arange(10, 20) / 10)
    assert shapes["e1_d30_w2048"][:3] == (30, [2048, 256], 10000)
    assert shapes["e1_d30_w256_n2000"][:3] == (30, [256, 256], 2000)
    np.testing.assert_allclose(shapes["e1_d30_w2048"][3], np.arange(1, 31) / 10)


@pytest.mark.parametrize("path, packed", [(EMBEDDED, False), (PAPER, True)])
def test_a_dry_run_of_each_config_plans_the_e1_jobs(tmp_path, path, packed):
    project = copy_project(tmp_path / "project")
    output = snakemake(project, "fig_transfer_function", "-n", "--configfile", f"configs/{path.name}").stdout
    counts = job_counts(output)
    seeds = load(path)["seeds"]
    for name in ("gaussian_e1_dim10", "gaussian_e1_dim30"):
        assert f"results/data/{name}.h5" not in output
        for seed in seeds:
            assert f"results/data/{name}/seed{seed}.h5" in output
    assert counts["prepare_dataset_draw"] == 2 * len(seeds)
    for exp in E1:
        for seed in seeds:
            assert f"results/{exp}/splits/seed{seed}.h5" in output
            assert f"results/{exp}/stats/random/scale1/seed{seed}.h5" in output
        assert f"results/{exp}/tables/transfer_function.tsv" in output
        if packed:
            assert f"results/{exp}/pretrain/random/scale1/packed/seeds{seeds[0]}-{seeds[-1]}.pt" in output
        else:
            assert f"results/{exp}/pretrain/random/scale1/seed{seeds[0]}/checkpoints.pt" in output
    assert counts["paper_target"] == 1 and "finetune" not in counts
    assert counts["make_split"] >= 3 * len(seeds)


# ----------------------------------------------------------------- workflow


TINY = """
device: cpu
seeds: [0, 1]
datasets:
  g:
    source: gaussian
    dim: 5
    spectrum: {kind: linear, low: 0.5, high: 2.5}
    n_samples: 200
    per_seed: true
experiments:
  tiny_e1:
    dataset: g
    model: {arch: fc, widths: [32, 16]}
    init_scales: [1.0]
    split: {upstream: 200, downstream: 0, test: 0}
    # Packed, as the paper config's E.1 experiments: one job reads each seed's own file.
    pretrain: {labels: [random], epochs: 2, checkpoints: [0, 1, 2], batch_size: 50, pack_seeds: 2}
targets:
  fig_transfer_function: {experiments: [tiny_e1]}
"""


@pytest.mark.slow
def test_per_seed_upstream_only_end_to_end(tmp_path):
    """Every seed pre-trains on all of its own draw, a file of its own with a Σx of its
    own, also where the seeds share a packed job; the target's table holds f − f(epoch
    0); and a seed added later is drawn, trained and measured alone, the others' jobs
    left as they are."""
    project = copy_project(tmp_path / "project")
    (project / "configs" / "tiny-e1.yaml").write_text(TINY)
    snakemake(project, "fig_transfer_function", "--cores", "2", "--configfile", "configs/tiny-e1.yaml", timeout=900)
    assert not (project / "results" / "data" / "g.h5").exists()
    draws = [read_dataset(project / "results" / "data" / "g" / f"seed{s}.h5") for s in (0, 1)]
    assert [len(data) for data in draws] == [200, 200] and [d.attrs["draw_seed"] for d in draws] == [0, 1]
    assert not np.array_equal(draws[0].images, draws[1].images)
    for seed in (0, 1):
        split = read_split(project / "results" / "tiny_e1" / "splits" / f"seed{seed}.h5")
        np.testing.assert_array_equal(np.sort(split.upstream), np.arange(200))  # all of its own draw
        assert len(split.downstream) == 0 and len(split.test) == 0
    sigmas = []
    for seed in (0, 1):
        path = project / "results" / "tiny_e1" / "stats" / "random" / "scale1" / f"seed{seed}.h5"
        sigmas.append(read_layer(path, 0, first_layer_name(path))["sigma"])
    assert not np.allclose(sigmas[0], sigmas[1])  # each seed's own sample covariance
    table = read_table(project / "results" / "paper" / "fig_transfer_function.tsv")
    assert set(table["seed"]) == {0, 1} and set(table["epoch"]) == {0, 1, 2}
    assert np.allclose(table.loc[table["epoch"] == 0, "f_change"], 0.0)
    assert (project / "results" / "paper" / "fig_transfer_function.png").stat().st_size > 1000
    # Seed 1 of the packed job trained on its own file: as in a job of its own.
    from test_packing_workflow import _same_metrics

    alone = copy_project(tmp_path / "alone")
    (alone / "configs" / "tiny-e1.yaml").write_text(TINY.replace(", pack_seeds: 2}", "}"))
    metrics = "results/tiny_e1/pretrain/random/scale1/seed1/metrics.tsv"
    snakemake(alone, metrics, "--cores", "2", "--configfile", "configs/tiny-e1.yaml")
    _same_metrics(alone / metrics, project / metrics)

    more = TINY.replace("seeds: [0, 1]", "seeds: [0, 1, 2]")
    assert more != TINY
    (project / "configs" / "tiny-e1.yaml").write_text(more)
    output = snakemake(project, "fig_transfer_function", "-n", "--configfile", "configs/tiny-e1.yaml").stdout
    counts = job_counts(output)
    for rule in ("prepare_dataset_draw", "make_split", "pretrain_packed", "unpack_pretrain", "statistics"):
        assert counts.pop(rule) == 1, (rule, output[-3000:])  # seed 2's, in a group of its own
    assert set(counts) <= {"aggregate_pretraining", "aggregate_statistics", "paper_target", "fig_transfer_function"}, counts
    # The one job of each rule is seed 2's.
    for path in ("data/g/seed2.h5", "tiny_e1/splits/seed2.h5", "tiny_e1/pretrain/random/scale1/packed/seeds2-2.pt",
                 "tiny_e1/stats/random/scale1/seed2.h5"):
        assert f"Missing output files: results/{path}" in output, path
