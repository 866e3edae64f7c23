"""Every figure renders a readable PNG from small synthetic tables, atomically.

The tables mimic the workflow's tidy outputs, including the awkward cases the
figures must show rather than hide: undefined (NaN) misalignment and diverged runs.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from randlabels.analysis.summary import transfer_summary
from workflow_helpers import figure_caption

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]
PLOTS_DIR = ROOT / "src" / "randlabels" / "plots"
FIGURE_MODULES = ["misalignment", "misalignment_change", "transfer_function", "learning_curves", "transfer_summary",
                  "eigenfilters", "depth_transfer", "transfer_map", "specialization", "kernel_size"]


# --------------------------------------------------------------------------- tables


def misalignment_table(with_nan: bool = True) -> pd.DataFrame:
    """Two init scales, random/real labels, data/random basis, 3 seeds, some NaN."""
    rng = np.random.default_rng(0)
    rows = []
    for scale in (0.5, 1.0):
        for labels in ("random", "real"):
            for basis in ("data", "random"):
                for seed in range(3):
                    for epoch in (0, 5, 10, 20, 40):
                        if basis == "data":
                            base = 30.0 * np.exp(-epoch / (8 if labels == "random" else 25))
                        else:
                            base = 30.0
                        value = base * (1 + 0.1 * rng.standard_normal()) + 0.05
                        reason = ""
                        if with_nan and scale == 0.5 and epoch == 0 and seed == 0:
                            value, reason = np.nan, "Sigma_w singular (fewer filters than d)"
                        rows.append(dict(experiment="cnn2", labels=labels, init_scale=scale,
                                         seed=seed, epoch=epoch, layer="conv1", basis=basis,
                                         misalignment=value, reason=reason))
    return pd.DataFrame(rows)


def transfer_function_table() -> pd.DataFrame:
    """f(σ) rising then falling, sharpening with epochs; 2 scales, 2 label kinds, 2 seeds."""
    rng = np.random.default_rng(1)
    sigma = np.sqrt(np.linspace(3.0, 0.1, 30))
    rows = []
    for scale in (0.5, 1.0):
        for labels in ("random", "real"):
            for seed in range(2):
                for epoch in (0, 5, 10, 20, 40):
                    bump = (epoch / 40) * np.exp(-((sigma - 1.0) ** 2) / 0.2)
                    f = scale * (0.2 + bump + 0.02 * rng.standard_normal(sigma.size))
                    for index, (s, fv) in enumerate(zip(sigma, f)):
                        rows.append(dict(experiment="cnn2", labels=labels, init_scale=scale,
                                         seed=seed, epoch=epoch, layer="conv1", index=index,
                                         sigma=s, f=fv))
    return pd.DataFrame(rows)


def finetune_curves(diverge: bool = True) -> pd.DataFrame:
    """Scratch reaches accuracy later than pretrained; one gaussian seed diverges."""
    rows = []
    steps = np.arange(0, 1001, 50)
    rates = {"scratch": 300.0, "pretrained": 150.0, "pretrained_norescale": 200.0,
             "gaussian": 170.0}
    for scale in (0.5, 1.0):
        for variant, rate in rates.items():
            for seed in range(3):
                acc = 0.1 + 0.85 * (1 - np.exp(-steps / (rate * scale * (1 + 0.1 * seed))))
                bad = diverge and variant == "gaussian" and scale == 1.0 and seed == 2
                for step, a in zip(steps, acc):
                    failed = bad and step >= 300
                    rows.append(dict(experiment="vgg16", variant=variant, init_scale=scale,
                                     seed=seed, step=int(step), train_acc=0.1 if failed else a,
                                     test_acc=np.nan if failed else a - 0.05,
                                     loss=np.nan if failed else float(-np.log(a)),
                                     diverged=bool(failed)))
    return pd.DataFrame(rows)


def eigen_inputs(c_in: int, k: int = 5, n: int = 64):
    """Filters, and eigenvectors (columns) of their covariance and of a smooth Σx."""
    rng = np.random.default_rng(2)
    d = c_in * k * k
    coords = np.stack(np.meshgrid(np.arange(k), np.arange(k), indexing="ij"), -1).reshape(-1, 2)
    dist = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    patch_cov = np.exp(-dist / 2.0)
    sigma_x = np.kron(np.eye(c_in) * 0.5 + 0.5, patch_cov)  # channels correlated, (C, k, k) order
    filters = rng.multivariate_normal(np.zeros(d), sigma_x, size=n)
    sigma_w = np.cov(filters, rowvar=False)
    eval_w, evec_w = np.linalg.eigh(sigma_w)
    eval_x, evec_x = np.linalg.eigh(sigma_x)
    # Columns by decreasing eigenvalue, as the plot expects without eigenvalues.
    return filters, evec_w[:, ::-1], evec_x[:, ::-1], (c_in, k, k), eval_w, eval_x


# --------------------------------------------------------------------------- helpers


def assert_png(path: Path, min_px: int = 200) -> None:
    """The file is a PNG that matplotlib reads back at a plausible size."""
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] >= min_px and image.shape[1] >= min_px
    assert image.shape[0] < 6000 and image.shape[1] < 6000
    assert image.std() > 0.01  # not a blank canvas
    leftovers = [p for p in path.parent.iterdir() if p.name.startswith(".") or "tmp" in p.name]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def render_all(out_dir: Path) -> dict[str, Path]:
    """Render every figure from the synthetic tables into ``out_dir``; return the paths."""
    from randlabels.plots import (eigenfilters, learning_curves, misalignment,
                                  transfer_function)
    from randlabels.plots import transfer_summary as summary_plot

    paths = {name: out_dir / f"{name}.png" for name in
             ["misalignment", "transfer_function", "learning_curves", "transfer_summary",
              "eigenfilters_gray", "eigenfilters_rgb"]}
    misalignment.plot(misalignment_table(), paths["misalignment"])
    transfer_function.plot(transfer_function_table(), paths["transfer_function"])
    curves = finetune_curves()
    learning_curves.plot(curves, paths["learning_curves"])
    summary_plot.plot(transfer_summary(curves, target=0.7), paths["transfer_summary"], target=0.7)
    filters, ew, ex, shape, _, _ = eigen_inputs(1)
    eigenfilters.draw(filters, ew, ex, shape, paths["eigenfilters_gray"],
                      title="5×5 grayscale filters")
    filters, ew, ex, shape, _, _ = eigen_inputs(3)
    eigenfilters.draw(filters, ew, ex, shape, paths["eigenfilters_rgb"], title="5×5 RGB filters")
    return paths


# --------------------------------------------------------------------------- tests


def test_every_figure_renders(tmp_path: Path) -> None:
    for path in render_all(tmp_path).values():
        assert_png(path)


def test_misalignment_all_defined_and_log_axis(tmp_path: Path) -> None:
    from randlabels.plots import misalignment

    table = misalignment_table(with_nan=False)
    table.loc[table["basis"] == "data", "misalignment"] *= 1e-4  # span > 2 decades
    out = tmp_path / "m.png"
    misalignment.plot(table, out)
    assert_png(out)
    assert misalignment._y_scale(table["misalignment"])[0] == "log"


def test_misalignment_scale_choice() -> None:
    from randlabels.plots.misalignment import _y_scale

    assert _y_scale(pd.Series([1.0, 5.0, 50.0]))[0] == "linear"
    assert _y_scale(pd.Series([0.01, 5.0, np.nan]))[0] == "log"
    kind, kws = _y_scale(pd.Series([0.0, 0.01, 5.0]))
    assert kind == "symlog" and kws["linthresh"] == pytest.approx(0.01)


def test_misalignment_all_undefined_facet(tmp_path: Path) -> None:
    from randlabels.plots import misalignment

    table = misalignment_table()
    table.loc[table["init_scale"] == 0.5, "misalignment"] = np.nan
    out = tmp_path / "m.png"
    misalignment.plot(table, out)
    assert_png(out)


def test_misalignment_entirely_undefined(tmp_path: Path) -> None:
    """A realistic case: Σw is singular in every snapshot (fewer filters than d)."""
    from randlabels.plots import misalignment

    table = misalignment_table()
    table["misalignment"] = np.nan
    out = tmp_path / "m.png"
    misalignment.plot(table, out)
    assert_png(out)


def pooled_table() -> pd.DataFrame:
    """A ``misalignment_pooled`` table: two label kinds at one init scale, epochs 0, 5
    and 10; the weights scored at every epoch, their change from epoch 0 after it.
    Values encode (of, labels, basis, epoch), so a drawn line says which rows it is."""
    rows = []
    for labels in ("random", "real"):
        for epoch in (0, 5, 10):
            for of in ("weights", "change") if epoch else ("weights",):
                for basis in ("data", "random"):
                    value = (100 if of == "change" else 1) * (2 if basis == "random" else 1) * (
                        3 if labels == "real" else 1) * (1 + epoch)
                    rows.append(dict(experiment="cnn2", labels=labels, init_scale=1.0, epoch=epoch,
                                     layer="conv1", of=of, basis=basis, misalignment=float(value), seeds=3,
                                     filters=192, left_out="", reason=""))
    return pd.DataFrame(rows)


def _drawn_by_gid(monkeypatch) -> dict:
    """Capture, at save time, each line's (gid, colour, dashed) → its (x, y), and the texts."""
    from randlabels.plots import style

    drawn = {}
    save = style.save_figure

    def keep(fig, path):
        drawn["lines"] = {(line.get_gid(), line.get_color(), line.get_linestyle()): (
            list(line.get_xdata()), list(line.get_ydata())) for ax in fig.axes for line in ax.lines}
        drawn["titles"] = [ax.get_title() for ax in fig.axes]
        drawn["texts"] = [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]
        drawn["suptitle"] = fig._suptitle.get_text()
        drawn["yscale"] = {ax.get_yscale() for ax in fig.axes}
        save(fig, path)

    monkeypatch.setattr(style, "save_figure", keep)
    return drawn


def test_misalignment_change_draws_the_change_and_faintly_the_weights(tmp_path: Path, monkeypatch) -> None:
    from randlabels.io import read_table, write_table
    from randlabels.plots import misalignment_change, style

    drawn = _drawn_by_gid(monkeypatch)
    write_table(pooled_table(), tmp_path / "pooled.tsv")  # as the rule reads it: empty cells are NaN
    out = tmp_path / "change.png"
    misalignment_change.plot(read_table(tmp_path / "pooled.tsv"), out)
    assert_png(out)
    palette = style.label_palette(["random", "real"])
    lines = drawn["lines"]
    assert len(lines) == 8  # (change, weights) × (random, real labels) × (data, random basis)
    for labels, factor in (("random", 1), ("real", 3)):
        colour = palette[labels]
        for basis, dash, times in (("data", "-", 1), ("random", "--", 2)):
            change = next(v for (gid, c, ls), v in lines.items()
                          if gid == misalignment_change.CHANGE_GID and c == colour and ls == dash)
            weights = next(v for (gid, c, ls), v in lines.items()
                           if gid == misalignment_change.WEIGHTS_GID and c == colour and ls == dash)
            assert change == ([5, 10], [100 * times * factor * 6, 100 * times * factor * 11])
            assert weights == ([0, 5, 10], [times * factor * 1, times * factor * 6, times * factor * 11])
    assert drawn["yscale"] == {"log"}
    assert drawn["titles"] == ["init scale 1"]
    assert "layer conv1, cnn2; pooled over 3 seeds (192 filters)" in drawn["suptitle"]


def test_misalignment_change_counts_undefined_values_and_says_when_nothing_changed(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    from randlabels.plots import misalignment_change

    drawn = _drawn_by_gid(monkeypatch)
    table = pooled_table()
    undefined = (table["of"] == "change") & (table["epoch"] == 5) & (table["labels"] == "real")
    table.loc[undefined, ["misalignment", "reason"]] = [np.nan, "Σw singular"]
    misalignment_change.plot(table, tmp_path / "a.png")
    assert drawn["titles"] == ["init scale 1\nchange: 2 of 8 values undefined"]
    assert any("2 undefined value(s) (NaN) left out: Σw singular (×2)" in text for text in drawn["texts"])
    real_change = [v for (gid, _, _), v in drawn["lines"].items() if gid == "change" and v[0] == [10]]
    assert len(real_change) == 2  # the real-label lines start after the undefined epoch

    misalignment_change.plot(table[table["epoch"] == 0], tmp_path / "b.png")  # only the initialization
    assert drawn["titles"] == ["init scale 1\nno change to score (no epoch after 0)"]
    assert "no change scored" in drawn["texts"]
    assert {gid for gid, _, _ in drawn["lines"]} == {"weights"}
    assert_png(tmp_path / "b.png")

    with pytest.raises(ValueError, match=r"misalignment_change figure: missing column\(s\) \['of'\]"):
        misalignment_change.plot(table.drop(columns="of"), tmp_path / "c.png")


def test_learning_curves_every_run_diverged_in_a_facet(tmp_path: Path) -> None:
    from randlabels.plots import learning_curves

    curves = finetune_curves()
    curves.loc[curves["init_scale"] == 1.0, "diverged"] = True
    out = tmp_path / "lc.png"
    learning_curves.plot(curves, out)
    assert_png(out)


def test_learning_curves_leave_out_scales_an_experiment_lacks(tmp_path: Path, monkeypatch) -> None:
    """Two experiments at different init scales: each row shows its own scales, and no
    panel is drawn empty."""
    from randlabels.plots import learning_curves, style

    curves = finetune_curves(diverge=False)
    scales = sorted(curves["init_scale"].unique())
    other = curves[curves["init_scale"] == scales[0]].assign(experiment="other", init_scale=7.0)
    shown = {}

    def keep(fig, path):
        shown["panels"] = sorted(ax.get_title() for ax in fig.axes if ax.get_visible())
        style.plt.close(fig)

    monkeypatch.setattr(style, "save_figure", keep)
    learning_curves.plot(pd.concat([curves, other]), tmp_path / "lc.png")
    experiment = curves["experiment"].iloc[0]
    assert len(shown["panels"]) == len(scales) + 1
    assert all(t.startswith(f"{experiment}, ") for t in shown["panels"] if not t.startswith("other"))
    assert sum(t.startswith("other, ") for t in shown["panels"]) == 1


def test_learning_curves_without_divergence(tmp_path: Path) -> None:
    from randlabels.plots import learning_curves

    out = tmp_path / "lc.png"
    learning_curves.plot(finetune_curves(diverge=False), out)
    assert_png(out)


def test_transfer_summary_with_unreached_variant(tmp_path: Path) -> None:
    from randlabels.plots import transfer_summary as summary_plot

    summary = transfer_summary(finetune_curves(), target=0.9)
    out = tmp_path / "ts.png"
    summary_plot.plot(summary, out, target=0.9)
    assert_png(out)


def test_eigenfilters_other_channel_count_and_eigenvalue_order(tmp_path: Path) -> None:
    from randlabels.plots import eigenfilters

    filters, ew, ex, shape, eval_w, eval_x = eigen_inputs(2, k=3)
    out = tmp_path / "e.png"
    # eigh order (ascending) with eigenvalues given: the plot must sort itself.
    eigenfilters.draw(filters, ew[:, ::-1], ex[:, ::-1], shape, out, n_show=4,
                      eigval_w=eval_w, eigval_x=eval_x)
    assert_png(out)


def test_eigenfilters_rejects_wrong_shape(tmp_path: Path) -> None:
    from randlabels.plots import eigenfilters

    filters, ew, ex, _, _, _ = eigen_inputs(1)
    with pytest.raises(ValueError):
        eigenfilters.draw(filters, ew, ex, (3, 5, 5), tmp_path / "bad.png")
    assert not list(tmp_path.iterdir())


def test_empty_table_is_refused(tmp_path: Path) -> None:
    from randlabels.plots import misalignment

    with pytest.raises(ValueError, match="empty"):
        misalignment.plot(misalignment_table().iloc[:0], tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_failed_render_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    from randlabels.plots import learning_curves

    def broken(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError):
        learning_curves.plot(finetune_curves(), tmp_path / "lc.png")
    assert not list(tmp_path.iterdir())


def test_variant_colours_are_stable() -> None:
    from randlabels.plots import style

    from randlabels.inits import variants

    assert tuple(style.VARIANT_COLORS) == variants.FIXED  # the names are the variants module's
    assert len(set(style.VARIANT_COLORS.values())) == len(variants.FIXED)
    assert style.variant_color("scratch") == (0.35, 0.35, 0.35)
    assert style.variant_color("pretrained") == style.VARIANT_COLORS["pretrained"]
    assert style.variant_color("some_new_variant") == style.variant_color("some_new_variant")
    assert style.variant_palette(["scratch", "gaussian"])["gaussian"] == style.variant_color(
        "gaussian")


@pytest.mark.parametrize("module", FIGURE_MODULES + ["style"])
def test_plot_modules_do_not_import_training_code(module: str) -> None:
    """Figures must re-render without torch or the training code (statically checked)."""
    tree = ast.parse((PLOTS_DIR / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    forbidden = {name for name in imported
                 if name.split(".")[0] in {"torch", "torchvision"}
                 or name in {"randlabels.models.networks", "randlabels.train", "randlabels.training"}}
    assert not forbidden
    assert callable(getattr(importlib.import_module(f"randlabels.plots.{module}"),
                            "plot" if module != "style" else "save_figure"))


def test_captions_say_what_the_bands_are():
    """A figure drawn with style.SEED_BAND shows the seeds' range; its report caption
    must say so, not promise a confidence interval."""
    using_band = [p.stem for p in PLOTS_DIR.glob("*.py") if "SEED_BAND" in p.read_text() and p.stem != "style"]
    assert using_band
    for module in using_band:
        caption = figure_caption(module)
        assert "min to max" in caption and "95%" not in caption, module


def test_transfer_summary_titles_each_panel_with_its_own_relative_target(tmp_path: Path, monkeypatch) -> None:
    """A target relative to chance differs between class counts: the figure takes the
    table's resolved targets, one per task panel, not one number for all."""
    from randlabels.plots import transfer_summary as summary_plot

    curves = pd.concat([finetune_curves(diverge=False).assign(task=task) for task in ("random2", "random10")])
    summary = transfer_summary(curves, target={"from_chance": 0.5})
    assert sorted(summary["target"].unique()) == [0.55, 0.75]
    from randlabels.plots import style

    figures = []
    save = style.save_figure
    monkeypatch.setattr(style, "save_figure", lambda fig, path: (figures.append(fig), save(fig, path)))
    out = tmp_path / "ts.png"
    summary_plot.plot(summary, out)
    assert_png(out)
    titles = [ax.get_title() for ax in figures[0].axes] + [figures[0]._suptitle.get_text()]
    assert any("(target 75%)" in t for t in titles) and any("(target 55%)" in t for t in titles)
    assert any("speed-up to each panel's target downstream train accuracy" in t for t in titles)
