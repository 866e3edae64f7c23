"""The figures of the later targets (depth, transfer map, specialization, kernel size)
render readable PNGs from small synthetic tables, including the awkward cases (NaN
and infinite speed-ups, undefined misalignment, a single seed), refuse malformed
tables with a clear message, and compute their plotted numbers correctly.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS_DIR = Path(__file__).resolve().parents[1] / "src" / "randlabels" / "plots"
MODULES = ["depth_transfer", "transfer_map", "specialization", "kernel_size"]


# --------------------------------------------------------------------------- tables


def depth_table(seeds: int = 3) -> pd.DataFrame:
    """Layer-wise, covariance, first-k and last-k families over k = 0..3, two scales,
    plus pretrained/gaussian/scratch without depth; some NaN and one inf speed-up."""
    rng = np.random.default_rng(0)
    rows = []
    for scale in (0.5, 1.0):
        for seed in range(seeds):
            for family, slope in (("layerwise", 0.3), ("covariance", 0.15),
                                  ("first", 0.25), ("last", -0.2)):
                for depth in range(4):
                    speedup = np.exp(slope * depth + 0.05 * rng.standard_normal())
                    if family == "last" and depth == 3 and seed == 0:
                        speedup = np.nan  # never reached the target
                    if family == "first" and depth == 2 and seed == 1 and scale == 1.0:
                        speedup = np.inf  # reached it at step 0
                    rows.append(dict(experiment="vgg16", task="real", init_scale=scale,
                                     variant=f"{family}_k{depth}", family=family, depth=depth,
                                     seed=seed, speedup=speedup,
                                     auc_gap=0.05 * slope * depth + 0.005 * rng.standard_normal()))
            for variant, speedup in (("pretrained", 1.6), ("gaussian", 1.4), ("scratch", 1.0)):
                rows.append(dict(experiment="vgg16", task="real", init_scale=scale,
                                 variant=variant, family=variant, depth=np.nan, seed=seed,
                                 speedup=speedup * (1 + 0.05 * seed),
                                 auc_gap=0.0 if variant == "scratch" else 0.03))
    return pd.DataFrame(rows)


def map_table(seeds: int = 3) -> pd.DataFrame:
    """Speed-up falls with init scale and classes; large-scale cells partly unreached."""
    rng = np.random.default_rng(1)
    rows = []
    for classes in (2, 10, 100):
        for scale in (0.25, 0.5, 1.0, 2.0):
            for variant in ("scratch", "pretrained", "gaussian"):
                for seed in range(seeds):
                    if variant == "scratch":
                        speedup, gap = 1.0, 0.0
                    else:
                        speedup = np.exp(0.8 - 0.5 * scale - 0.2 * np.log10(classes)
                                         + 0.05 * rng.standard_normal())
                        gap = np.log(speedup) * 0.1
                        if scale == 2.0 and classes == 100 and seed < 2:
                            speedup = np.nan
                        if scale == 0.25 and classes == 2 and seed == 0 and variant == "gaussian":
                            speedup = np.inf
                    rows.append(dict(experiment="vgg16", task="real", classes=classes,
                                     init_scale=scale, variant=variant, seed=seed,
                                     speedup=speedup, auc_gap=gap))
    return pd.DataFrame(rows)


def specialization_table(seeds: int = 2, layers: int = 4) -> pd.DataFrame:
    """Upstream then downstream per-layer statistics; later layers collapse downstream
    for the narrow model; one NaN value."""
    rng = np.random.default_rng(2)
    names = [f"conv{i + 1}" for i in range(layers)]
    rows = []
    for experiment, collapse in (("vgg16", 0.6), ("vgg16_wide", 0.15)):
        for seed in range(seeds):
            for li, layer in enumerate(names):
                depth = li / max(layers - 1, 1)
                for epoch in (0, 5, 10, 20):
                    active = 0.5 - 0.1 * depth * epoch / 20
                    for stat, value in (("frac_active", active), ("frac_dead", 0.02 * depth),
                                        ("mean_activation", 0.3 + 0.1 * depth)):
                        rows.append(dict(experiment=experiment, variant="pretrained",
                                         init_scale=1.0, seed=seed, phase="upstream", x=epoch,
                                         layer=layer, statistic=stat,
                                         value=value + 0.01 * rng.standard_normal()))
                for variant in ("pretrained", "scratch"):
                    for step in (0, 50, 100, 200, 400):
                        drop = 0.7 * collapse * depth * np.exp(-step / 150) \
                            if variant == "pretrained" else 0.0
                        for stat, value in (("frac_active", 0.45 - drop),
                                            ("frac_dead", 0.02 + 0.8 * drop),
                                            ("mean_activation", 0.35 - 0.3 * drop)):
                            rows.append(dict(experiment=experiment, variant=variant,
                                             init_scale=1.0, seed=seed, phase="downstream",
                                             x=step, layer=layer, statistic=stat,
                                             value=value + 0.01 * rng.standard_normal()))
    table = pd.DataFrame(rows)
    table.loc[3, "value"] = np.nan
    return table


def kernel_table(seeds: int = 3) -> pd.DataFrame:
    """Kernel sizes 1, 3, 5, 7 (3 channels), epochs 0/20/40; M grows with dim; some NaN."""
    rng = np.random.default_rng(3)
    rows = []
    for k in (7, 3, 1, 5):  # deliberately unsorted
        dim = 3 * k * k
        for labels in ("random", "real"):
            for scale in (0.5, 1.0):
                for seed in range(seeds):
                    for epoch in (0, 20, 40):
                        for basis in ("data", "random"):
                            per_dim = (0.3 if basis == "random" else
                                       0.3 * np.exp(-epoch / (10 if labels == "random" else 40)))
                            value = dim * per_dim * (1 + 0.1 * rng.standard_normal())
                            if k == 7 and seed == 0 and basis == "data" and epoch == 40:
                                value = np.nan  # Σw singular
                            rows.append(dict(experiment=f"cnn2_k{k}", kernel_size=k,
                                             labels=labels, init_scale=scale, seed=seed,
                                             epoch=epoch, basis=basis, misalignment=value,
                                             dim=dim))
    return pd.DataFrame(rows)


TABLES = {"depth_transfer": depth_table, "transfer_map": map_table,
          "specialization": specialization_table, "kernel_size": kernel_table}


# --------------------------------------------------------------------------- helpers


def assert_png(path: Path, min_px: int = 200) -> None:
    """The file is a PNG of plausible size with real content; no temporary file left."""
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] >= min_px and image.shape[1] >= min_px
    assert image.shape[0] < 8000 and image.shape[1] < 8000
    assert image.std() > 0.01  # not a blank canvas
    rgb = np.round(image[..., :3] * 255).astype(np.int64)
    colours = np.unique(rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2])
    assert colours.size > 20  # more than a few flat colours
    leftovers = [p for p in path.parent.iterdir() if p.name.startswith(".") or "tmp" in p.name]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def module(name: str):
    return importlib.import_module(f"randlabels.plots.{name}")


# --------------------------------------------------------------------------- all modules


@pytest.mark.parametrize("name", MODULES)
def test_renders(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.png"
    module(name).plot(TABLES[name](), out)
    assert_png(out)


@pytest.mark.parametrize("name", MODULES)
def test_renders_with_one_seed(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.png"
    module(name).plot(TABLES[name](seeds=1), out)
    assert_png(out)


@pytest.mark.parametrize("name", MODULES)
def test_missing_column_is_named(name: str, tmp_path: Path) -> None:
    mod = module(name)
    dropped = mod.COLUMNS[-1]
    with pytest.raises(ValueError, match=dropped):
        mod.plot(TABLES[name]().drop(columns=[dropped]), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", MODULES)
def test_empty_table_is_refused(name: str, tmp_path: Path) -> None:
    mod = module(name)
    with pytest.raises(ValueError, match="empty"):
        mod.plot(TABLES[name]().iloc[:0], tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", MODULES)
def test_does_not_import_training_code(name: str) -> None:
    """Figures must re-render without torch or the training code (statically checked)."""
    tree = ast.parse((PLOTS_DIR / f"{name}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert not {n for n in imported if n.split(".")[0] in {"torch", "torchvision"}
                or n.startswith(("randlabels.models.networks", "randlabels.train"))}
    assert callable(module(name).plot)


# --------------------------------------------------------------------------- depth


def test_depth_statistics_geometric_mean_and_counts() -> None:
    from randlabels.plots.depth_transfer import depth_statistics

    table = depth_table()
    table = table[(table["init_scale"] == 1.0)]
    stats = depth_statistics(table)
    first2 = stats[(stats["family"] == "first") & (stats["depth"] == 2)
                   & (stats["metric"] == "speedup")].iloc[0]
    values = table[(table["family"] == "first") & (table["depth"] == 2)]["speedup"].to_numpy()
    finite = values[np.isfinite(values)]
    assert first2["n"] == 2 and first2["n_inf"] == 1 and first2["total"] == 3
    assert first2["centre"] == pytest.approx(np.sqrt(finite[0] * finite[1]))
    gaps = stats[(stats["family"] == "layerwise") & (stats["depth"] == 1)
                 & (stats["metric"] == "auc_gap")].iloc[0]
    expected = table[(table["family"] == "layerwise") & (table["depth"] == 1)]["auc_gap"].mean()
    assert gaps["centre"] == pytest.approx(expected)
    assert set(stats["family"]) == {"layerwise", "covariance", "first", "last"}


def test_depth_names_the_runs_that_only_scratch_brought_to_the_target(tmp_path: Path, monkeypatch) -> None:
    """With the summary's ``reached`` column, a NaN speed-up whose scratch partner
    reached the target is counted as "only scratch reached" (in a family and in a
    reference line), and a table without the column keeps the plain "n/r"."""
    from randlabels.plots import depth_transfer

    table = depth_table()
    table.loc[(table["family"] == "pretrained") & (table["init_scale"] == 0.5), "speedup"] = np.nan
    table["reached"] = np.isfinite(table["speedup"].to_numpy(float)) | np.isinf(table["speedup"].to_numpy(float))
    table["diverged"] = False
    last3 = lambda stats: stats[(stats["family"] == "last") & (stats["depth"] == 3) & (stats["metric"] == "speedup")  # noqa: E731
                                & (stats["init_scale"] == 0.5)].iloc[0]
    stat = last3(depth_transfer.depth_statistics(table))
    assert (stat["n_nan"], stat["n_only_baseline"], stat["n_only_variant"]) == (1, 1, 0)
    assert depth_transfer._undefined_note(stat) == "1/3 only scratch reached"
    plain = last3(depth_transfer.depth_statistics(table.drop(columns="reached")))
    assert (plain["n_only_baseline"], depth_transfer._undefined_note(plain)) == (0, "1/3 n/r")

    drawn, save = [], depth_transfer.style.save_figure

    def keep(fig, path):
        drawn.extend(t.get_text() for ax in fig.axes for t in ax.texts)
        drawn.extend(t.get_text() for t in fig.texts)
        save(fig, path)

    monkeypatch.setattr(depth_transfer.style, "save_figure", keep)
    depth_transfer.plot(table, tmp_path / "d.png")
    assert_png(tmp_path / "d.png")
    assert "pretrained: 3/3 only scratch reached" in drawn and "1/3 only scratch reached" in drawn
    assert any("only scratch reached: the variant never reached the target" in text for text in drawn)


def test_depth_several_tasks_title_and_all_undefined(tmp_path: Path) -> None:
    from randlabels.plots import depth_transfer

    other = depth_table()
    other["task"] = "random"
    other.loc[other["family"] == "pretrained", "speedup"] = np.nan  # reference undefined
    other.loc[other["family"] == "last", "speedup"] = np.nan  # a whole family undefined
    table = pd.concat([depth_table(), other], ignore_index=True)
    table["depth"] = table["depth"].astype(object).where(table["depth"].notna(), "")  # TSV-ish
    out = tmp_path / "d.png"
    depth_transfer.plot(table, out, title="custom title")
    assert_png(out)


def test_depth_without_any_depth_is_refused(tmp_path: Path) -> None:
    from randlabels.plots import depth_transfer

    table = depth_table()
    with pytest.raises(ValueError, match="depth"):
        depth_transfer.plot(table[table["depth"].isna()], tmp_path / "x.png")


# --------------------------------------------------------------------------- transfer map


def test_cell_value_is_the_geometric_mean() -> None:
    """Closed form: speed-ups 2, 8 and NaN -> geometric mean 4 over the 2 defined seeds."""
    from randlabels.plots.transfer_map import cell_values

    table = pd.DataFrame(dict(
        experiment="e", task="real", classes=[10, 10, 10, 10, 10], init_scale=1.0,
        variant=["pretrained"] * 3 + ["scratch"] * 2, seed=[0, 1, 2, 0, 1],
        speedup=[2.0, 8.0, np.nan, 1.0, 1.0], auc_gap=[0.1, 0.3, 0.2, 0.0, 0.0]))
    speed = cell_values(table, "pretrained").iloc[0]
    assert speed["value"] == pytest.approx(4.0)
    assert (speed["n"], speed["total"], speed["n_nan"], speed["n_inf"]) == (2, 3, 1, 0)
    gap = cell_values(table, "pretrained", metric="auc_gap").iloc[0]
    assert gap["value"] == pytest.approx(0.2) and gap["n"] == 3
    table.loc[2, "speedup"] = np.inf
    speed = cell_values(table, "pretrained").iloc[0]
    assert speed["value"] == pytest.approx(4.0) and speed["n_inf"] == 1


def test_cell_values_name_the_seeds_where_only_one_side_reached_the_target(tmp_path: Path, monkeypatch) -> None:
    """Of four NaN speed-ups: only scratch reached (negative transfer), only the variant
    reached, neither, and a diverged variant beside a scratch that reached (a failed
    run, not one that was slower); one finite seed."""
    from randlabels.plots.transfer_map import _notes, cell_values

    seeds = range(5)
    pretrained = dict(speedup=[np.nan, np.nan, np.nan, np.nan, 2.0], reached=[False, True, False, False, True],
                      diverged=[False, False, False, True, False])
    scratch = dict(speedup=[1.0, np.nan, np.nan, 1.0, 1.0], reached=[True, False, False, True, True],
                   diverged=[False] * 5)
    table = pd.concat([pd.DataFrame(dict(experiment="e", task="random2", classes=2, init_scale=2.0,
                                         variant=name, seed=list(seeds), auc_gap=0.0, **columns))
                       for name, columns in (("pretrained", pretrained), ("scratch", scratch))],
                      ignore_index=True)
    cell = cell_values(table, "pretrained").iloc[0]
    assert cell["value"] == pytest.approx(2.0) and (cell["n"], cell["n_nan"]) == (1, 4)
    assert (cell["n_only_baseline"], cell["n_only_variant"]) == (1, 1)
    assert _notes(pd.concat([cell, pd.Series({"variant": "pretrained"})])) == [
        "only scratch\nreached 1/5", "only pretrained\nreached 1/5", "n/r 2/5"]
    # A TSV round trip gives strings; without a `reached` column nothing is split.
    as_text = table.assign(reached=table["reached"].astype(str), diverged=table["diverged"].astype(str))
    assert cell_values(as_text, "pretrained").iloc[0]["n_only_baseline"] == 1
    plain = cell_values(table.drop(columns="reached"), "pretrained").iloc[0]
    assert (plain["n_only_baseline"], plain["n_only_variant"], plain["n_nan"]) == (0, 0, 4)
    assert _notes(plain) == ["n/r 4/5"]
    # The area gap is defined for every seed: no notes of this kind.
    gap = cell_values(table, "pretrained", metric="auc_gap").iloc[0]
    assert (gap["n_only_baseline"], gap["n_only_variant"]) == (0, 0)
    # Drawn: a cell where only scratch reached it in every seed has no "undefined".
    from randlabels.plots import transfer_map

    only_scratch = table[table["seed"] == 0]
    cell = cell_values(only_scratch, "pretrained").iloc[0]
    assert np.isnan(cell["value"]) and cell["n_only_baseline"] == cell["total"] == 1
    drawn, save = [], transfer_map.style.save_figure

    def keep(fig, path):
        drawn.extend(t.get_text() for ax in fig.axes for t in ax.texts)
        save(fig, path)

    monkeypatch.setattr(transfer_map.style, "save_figure", keep)
    transfer_map.plot(only_scratch, tmp_path / "map.png")
    assert_png(tmp_path / "map.png")
    assert "only scratch\nreached 1/1" in drawn and not any("undefined" in text for text in drawn)


def test_cell_values_one_row_per_cell() -> None:
    from randlabels.plots.transfer_map import cell_values

    cells = cell_values(map_table(), "gaussian")
    assert len(cells) == 3 * 4
    unreached = cells[(cells["classes"] == 100) & (cells["init_scale"] == 2.0)].iloc[0]
    assert unreached["n_nan"] == 2 and unreached["n"] == 1


def test_transfer_map_options_and_all_unreached_cell(tmp_path: Path) -> None:
    from randlabels.plots import transfer_map

    table = map_table()
    table.loc[(table["classes"] == 2) & (table["init_scale"] == 2.0)
              & (table["variant"] == "pretrained"), "speedup"] = np.nan
    table = table[~((table["classes"] == 10) & (table["init_scale"] == 0.25))]  # no runs
    out = tmp_path / "map.png"
    transfer_map.plot(table, out, variants=["pretrained"], target=0.8)
    assert_png(out)
    with pytest.raises(ValueError, match="nosuch"):
        transfer_map.plot(table, tmp_path / "bad.png", variants=["nosuch"])
    with pytest.raises(ValueError, match="baseline"):
        transfer_map.plot(table[table["variant"] == "scratch"], tmp_path / "bad.png")


# --------------------------------------------------------------------------- specialization


def test_specialization_many_layers_and_one_variant(tmp_path: Path) -> None:
    from randlabels.plots import specialization

    table = specialization_table(layers=13)
    out = tmp_path / "s.png"
    specialization.plot(table, out, variants=["pretrained"])
    assert_png(out)
    with pytest.raises(ValueError, match="one or two"):
        specialization.plot(table, tmp_path / "bad.png", variants=["a", "b", "c"])
    with pytest.raises(ValueError, match="phase"):
        specialization.plot(table.assign(phase="middle"), tmp_path / "bad.png")


def test_specialization_mean_over_seeds() -> None:
    from randlabels.plots.specialization import mean_over_seeds

    table = specialization_table(seeds=2)
    means = mean_over_seeds(table)
    row = means[(means["experiment"] == "vgg16") & (means["variant"] == "scratch")
                & (means["layer"] == "conv2") & (means["statistic"] == "frac_dead")
                & (means["x"] == 100)].iloc[0]
    raw = table[(table["experiment"] == "vgg16") & (table["variant"] == "scratch")
                & (table["layer"] == "conv2") & (table["statistic"] == "frac_dead")
                & (table["x"] == 100)]["value"]
    assert row["value"] == pytest.approx(raw.mean()) and row["n"] == 2


# --------------------------------------------------------------------------- kernel size


def test_kernel_size_uses_only_the_final_epoch() -> None:
    from randlabels.plots.kernel_size import final_epoch

    table = kernel_table()
    # One experiment trained longer: its final epoch is its own maximum.
    extra = table[table["experiment"] == "cnn2_k3"].query("epoch == 40").assign(epoch=60)
    table = pd.concat([table, extra], ignore_index=True)
    final = final_epoch(table)
    last = final.groupby("experiment")["epoch"].unique()
    assert last["cnn2_k3"].tolist() == [60]
    assert all(last[e].tolist() == [40] for e in ("cnn2_k1", "cnn2_k5", "cnn2_k7"))
    assert len(final) == 4 * 2 * 2 * 3 * 2  # kernels × labels × scales × seeds × bases
    row = final[final["misalignment"].notna()].iloc[0]
    assert row["per_dim"] == pytest.approx(row["misalignment"] / row["dim"])
    assert final["per_dim"].isna().sum() == 2 * 2  # the NaN snapshots (k = 7, seed 0, data)


def test_kernel_size_all_undefined_and_string_sizes(tmp_path: Path) -> None:
    from randlabels.plots import kernel_size

    table = kernel_table()
    table["kernel_size"] = table["kernel_size"].map(lambda k: f"{k}x{k}")
    table.loc[table["labels"] == "real", "misalignment"] = np.nan
    table.loc[table["kernel_size"] == "1x1", "dim"] = 0  # dimension missing -> undefined
    out = tmp_path / "k.png"
    kernel_size.plot(table, out)
    assert_png(out)
    assert kernel_size._kernel_order(["7x7", "3x3", "11x11", "1x1"]) == [
        "1x1", "3x3", "7x7", "11x11"]


def test_kernel_size_draws_one_layer() -> None:
    """M / dim of different layers must not be pooled: the first layer is the default."""
    from randlabels.plots import kernel_size

    first = kernel_table().assign(layer="conv1")
    second = first.assign(layer="fc1", dim=1024, misalignment=5.0)
    table = pd.concat([first, second], ignore_index=True)
    chosen, name = kernel_size.select_layer(table)
    assert name == "conv1" and set(chosen["layer"]) == {"conv1"} and len(chosen) == len(first)
    chosen, name = kernel_size.select_layer(table, "fc1")
    assert name == "fc1" and (chosen["dim"] == 1024).all()
    with pytest.raises(ValueError, match="conv9"):
        kernel_size.select_layer(table, "conv9")
    assert kernel_size.select_layer(kernel_table())[1] is None


def test_kernel_size_draws_the_pooled_scores_of_the_weights_and_of_the_change(tmp_path: Path, monkeypatch) -> None:
    """Rows with a true ``pooled`` column (as the q_kernel_size target writes them, read
    back from its TSV) are drawn as a star (of the weights) and a diamond (of the change)
    per kernel size and basis, at the final epoch, raw and per dimension."""
    from randlabels.io import read_table, write_table
    from randlabels.plots import kernel_size, style

    per_seed = kernel_table().assign(pooled=False, of="weights")
    rows = []
    for k in (7, 3, 1, 5):
        for labels in ("random", "real"):
            for scale in (0.5, 1.0):
                for epoch in (0, 20, 40):
                    for of in ("weights", "change") if epoch else ("weights",):
                        for basis in ("data", "random"):
                            # Distinct values: 1000·k + 100 (change) + 10 (random basis) + epoch.
                            value = 1000 * k + (100 if of == "change" else 0) + (10 if basis == "random" else 0) + epoch
                            rows.append(dict(experiment=f"cnn2_k{k}", kernel_size=k, labels=labels,
                                             init_scale=scale, epoch=epoch, basis=basis, misalignment=float(value),
                                             dim=3 * k * k, pooled=True, of=of, seeds=3))
    write_table(pd.concat([per_seed, pd.DataFrame(rows)], ignore_index=True), tmp_path / "q.tsv")
    drawn = {}
    save = style.save_figure

    def keep(fig, path):
        drawn["points"] = [(c.get_gid(), float(y)) for ax in fig.axes for c in ax.collections
                           if (c.get_gid() or "").startswith(kernel_size.POOLED_GID) for _, y in c.get_offsets()]
        drawn["labels"] = [t.get_text() for t in fig.legends[0].get_texts()]
        drawn["footnote"] = fig.texts[-1].get_text()
        save(fig, path)

    monkeypatch.setattr(style, "save_figure", keep)
    kernel_size.plot(read_table(tmp_path / "q.tsv"), tmp_path / "k.png")
    assert_png(tmp_path / "k.png")
    for of, gid, offset in (("weights", "pooled weights", 0), ("change", "pooled change", 100)):
        raw = [1000 * k + offset + b + 40 for k in (1, 3, 5, 7) for b in (0, 10)]  # epoch 40 only
        per_panel = [float(v) for v in raw] + [v / (3 * k * k) for v, k in zip(raw, np.repeat([1, 3, 5, 7], 2))]
        got = sorted(y for g, y in drawn["points"] if g == gid)
        assert got == pytest.approx(sorted(per_panel * 4)), of  # 2 label kinds × 2 init scales
    assert {"Σw pooled over the seeds", "Σ(W − W₀) pooled: what training changed"} <= set(drawn["labels"])
    assert "the filters of the 3 seeds of a configuration pooled into one Σw" in drawn["footnote"]
    assert "not drawn" not in drawn["footnote"]
    # An undefined pooled value is not drawn, and the footnote says why.
    table = read_table(tmp_path / "q.tsv")
    singular = table["pooled"] & (table["kernel_size"] == 7) & (table["of"] == "weights") & (table["epoch"] == 40)
    table.loc[singular, ["misalignment", "reason"]] = [np.nan, "Σw is singular"]
    kernel_size.plot(table, tmp_path / "k.png")
    assert len([g for g, _ in drawn["points"] if g == "pooled weights"]) == (8 - 2) * 8  # 8 panels, 2 fewer in each
    assert "pooled, not drawn: 8 undefined value(s) (NaN) left out: Σw is singular (×8)" in drawn["footnote"]
    # Without pooled rows nothing of it is drawn or named.
    kernel_size.plot(kernel_table(), tmp_path / "plain.png")
    assert drawn["points"] == [] and "Σw pooled over the seeds" not in drawn["labels"]
    assert "star, diamond" not in drawn["footnote"]


def test_specialization_one_downstream_task(tmp_path: Path) -> None:
    """Several downstream tasks are not averaged together: one is chosen (default real)."""
    from randlabels.plots import specialization

    table = specialization_table(seeds=1)
    down = table["phase"] == "downstream"
    other = table[down].assign(task="random10", value=0.9)
    table = pd.concat([table.assign(task=np.where(down, "real", "")), other], ignore_index=True)
    chosen, task = specialization.select_task(table)
    assert task == "real" and not (chosen["value"] == 0.9).any()
    assert (chosen["phase"] == "upstream").sum() == (table["phase"] == "upstream").sum()
    chosen, task = specialization.select_task(table, "random10")
    assert task == "random10" and (chosen.loc[chosen["phase"] == "downstream", "value"] == 0.9).all()
    out = tmp_path / "s.png"
    specialization.plot(table, out, task="random10")
    assert_png(out)


def _two_task_curves() -> pd.DataFrame:
    """Fresh random labels of 2 and of 10 classes, scratch and pretrained, two scales:
    accuracy at chance until a step, then 0.8 (2 classes) or 0.6 (10 classes). The
    pretrained run gets there twice as fast (2 classes) or three times (10 classes)."""
    rows = []
    steps = np.arange(0, 201, 10)
    for task, chance, top, reach in (("random2", 0.5, 0.8, {"scratch": 100, "pretrained": 50}),
                                     ("random10", 0.1, 0.6, {"scratch": 120, "pretrained": 40})):
        for scale in (0.5, 1.0):
            for variant in ("scratch", "pretrained"):
                for seed in (0, 1):
                    acc = np.where(steps >= reach[variant], top, chance)
                    rows += [dict(experiment="map", task=task, init_scale=scale, variant=variant,
                                  seed=seed, step=int(s), train_acc=float(a), diverged=False)
                             for s, a in zip(steps, acc)]
    return pd.DataFrame(rows)


def test_a_relative_target_defines_the_map_for_2_and_10_classes(tmp_path: Path) -> None:
    """One absolute target leaves a class count undefined (0.3 is below 2 classes' chance:
    reached at step 0 by every run; 0.7 is never reached on 10 classes); halfway from
    chance (0.75 and 0.55) defines both, with the closed-form speed-ups 2 and 3."""
    from randlabels.analysis.summary import transfer_summary
    from randlabels.plots import transfer_map
    from randlabels.workflow import targets

    curves = _two_task_curves()

    def speedups(target) -> pd.DataFrame:
        summary = transfer_summary(curves, target=target)
        _, figure = targets.combine("fig_transfer_map", {"transfer_summary": summary,
                                                         "finetune_curves": curves}, {})
        return figure, transfer_map.cell_values(figure, "pretrained").set_index(["classes", "init_scale"])

    for absolute, undefined in ((0.3, 2), (0.7, 10)):
        _, cells = speedups(absolute)
        assert cells.loc[undefined, "value"].isna().all() and (cells.loc[undefined, "n_nan"] == 2).all()
        defined = 10 if undefined == 2 else 2
        assert np.isfinite(cells.loc[defined, "value"]).all()

    figure, cells = speedups({"from_chance": 0.5})
    assert cells.loc[2, "value"].tolist() == pytest.approx([2.0, 2.0])
    assert cells.loc[10, "value"].tolist() == pytest.approx([3.0, 3.0])
    assert (cells["n"] == 2).all() and (cells["n_nan"] == 0).all()
    assert figure.groupby("classes")["target"].first().to_dict() == {2: pytest.approx(0.75), 10: pytest.approx(0.55)}
    assert transfer_map.class_labels(figure, [2, 10]) == ["2\n(target 75%)", "10\n(target 55%)"]
    out = tmp_path / "map.png"
    transfer_map.plot(figure, out, target={"from_chance": 0.5})
    assert_png(out)
