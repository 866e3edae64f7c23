"""Figure: the transfer function f(σ) = sqrt(v_iᵀ Σw v_i) at successive epochs.

The paper's Definition 3 describes *how* Σw relates to Σx once aligned: the weight
spread along each data eigen-direction as a function of that direction's data spread.

One panel per run configuration (experiment, layer, init scale, label kind), each with
its own σ range, in two rows: on top f itself, below its change from initialization
f(t) − f(epoch 0) (:func:`change_from_init`), because the shape training adds (the
paper's synthetic rise-then-fall is about 4 % of f) is small next to the isotropic
f of the initialization. One line per checkpoint epoch (sequential colours, early =
dark): the mean over seeds per eigen-direction rank (rank i is the i-th largest σ of
each seed's Σx), with the min-max band over seeds around it.
"""

from __future__ import annotations

import math
import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from randlabels.analysis.memorization import collapsed_count
from randlabels.plots import style

COLUMNS = ["experiment", "labels", "init_scale", "seed", "epoch", "layer", "index", "sigma", "f"]
#: One run: its f(σ) curves at every epoch share Σx's eigen-directions (first layer).
RUN_KEYS = ["experiment", "labels", "init_scale", "seed", "layer"]
#: One panel of the figure.
PANEL_KEYS = ["experiment", "layer", "init_scale", "labels"]
#: Panels per row of the figure.
MAX_COLUMNS = 3


def change_from_init(table: pd.DataFrame) -> pd.Series:
    """f(t) − f(epoch 0) of every row: the same run (experiment, labels, init scale,
    seed, layer) and eigen-direction rank ``index`` at epoch 0. For the first layer
    the Σx eigenvectors are the same at every epoch (they are the data's), so this is
    the change of the weight spread along one fixed direction; for a deeper layer,
    whose input covariance moves with training, the i-th direction at epoch t is
    compared with the i-th at epoch 0. NaN where the run has no epoch-0 row."""
    keys = [*RUN_KEYS, "index"]
    init = table.loc[table["epoch"] == 0, [*keys, "f"]].drop_duplicates(keys)
    merged = table[keys].merge(init.rename(columns={"f": "f0"}), on=keys, how="left")
    return pd.Series(table["f"].to_numpy() - merged["f0"].to_numpy(), index=table.index, name="f_change")


def _seed_bands(table: pd.DataFrame) -> pd.DataFrame:
    """Per panel, epoch and rank: mean σ, and mean / min / max over seeds of f and of
    its change from initialization."""
    data = table.assign(f_change=change_from_init(table))
    return data.groupby([*PANEL_KEYS, "epoch", "index"], as_index=False).agg(
        sigma=("sigma", "mean"),
        f=("f", "mean"), f_min=("f", "min"), f_max=("f", "max"),
        change=("f_change", "mean"), change_min=("f_change", "min"), change_max=("f_change", "max"),
        n_seeds=("seed", "nunique"),
    )


def _panel_title(key: tuple, varying: set[str], n_seeds: int) -> str:
    """Two lines: what varies between panels (experiment, layer), then the run's
    init scale, labels and number of seeds."""
    experiment, layer, scale, labels = key
    first = [str(experiment)] if "experiment" in varying else []
    if "layer" in varying:
        first.append(f"layer {layer}")
    second = f"{style.format_scale(scale)}, {labels} labels, {n_seeds} seed{'s' if n_seeds != 1 else ''}"
    return "\n".join([", ".join(first), second] if first else [second])


def plot(table: pd.DataFrame, out_path: str | os.PathLike) -> None:
    """Draw f against σ and f − f(epoch 0) against σ (one line per epoch, min-max band
    over seeds) per panel, and write the PNG to ``out_path``."""
    style.require_columns(table, COLUMNS, "transfer-function figure")
    style.apply_theme()
    bands = _seed_bands(table)

    # Experiments in the order the table lists them (a target's order), then layer,
    # init scale, and random before real labels.
    experiment_rank = {exp: i for i, exp in enumerate(dict.fromkeys(table["experiment"]))}
    label_rank = {"random": 0, "real": 1}
    panels = (bands[PANEL_KEYS].drop_duplicates()
              .assign(_experiment=lambda d: d["experiment"].map(experiment_rank),
                      _labels=lambda d: d["labels"].map(lambda v: label_rank.get(v, 2)))
              .sort_values(["_experiment", "layer", "init_scale", "_labels", "labels"], kind="stable"))
    keys = [tuple(row) for row in panels[PANEL_KEYS].itertuples(index=False)]
    varying = {c for c in ("experiment", "layer") if bands[c].nunique() > 1}

    columns = 2 if len(keys) == 4 else min(len(keys), MAX_COLUMNS)
    rows = math.ceil(len(keys) / columns)
    width = style.FACET_HEIGHT * style.FACET_ASPECT
    fig = plt.figure(figsize=(columns * width, rows * 2 * style.FACET_HEIGHT * 0.8))
    outer = fig.add_gridspec(rows, columns, hspace=0.3, wspace=0.32)

    grouped = dict(tuple(bands.groupby(PANEL_KEYS, sort=False)))
    for position, key in enumerate(keys):
        panel = grouped[key]
        inner = outer[position // columns, position % columns].subgridspec(2, 1, hspace=0.08)
        top = fig.add_subplot(inner[0])
        bottom = fig.add_subplot(inner[1], sharex=top)
        epochs = sorted(panel["epoch"].unique())
        palette = style.sequential_palette(epochs, "viridis")
        for epoch in epochs:
            line = panel[panel["epoch"] == epoch].sort_values("sigma")
            color = palette[epoch]
            top.fill_between(line["sigma"], line["f_min"], line["f_max"], color=color, alpha=0.15, linewidth=0)
            top.plot(line["sigma"], line["f"], color=color, marker="o", markersize=2.5, linewidth=1.3,
                     label=f"{epoch:g}")
            if epoch == 0:
                continue  # identically zero: drawn as the reference line below
            bottom.fill_between(line["sigma"], line["change_min"], line["change_max"], color=color, alpha=0.15,
                                linewidth=0)
            bottom.plot(line["sigma"], line["change"], color=color, marker="o", markersize=2.5, linewidth=1.3)
        bottom.axhline(0.0, color=palette[epochs[0]], linewidth=0.9, linestyle="--")
        sigma = panel["sigma"][np.isfinite(panel["sigma"]) & (panel["sigma"] > 0)]
        if not sigma.empty and sigma.max() / sigma.min() > 100:
            top.set_xscale("log")
        top.tick_params(labelbottom=False)
        top.set_title(_panel_title(key, varying, int(panel["n_seeds"].max())))
        top.set_ylabel("f(σ) = sqrt(vᵀ Σw v)")
        bottom.set_ylabel("f − f(epoch 0)")
        bottom.set_xlabel("σ (data std. along the Σx eigenvector v)")
        top.legend(title="epoch", fontsize="x-small", title_fontsize="x-small", loc="best", ncol=2)

    layers = bands["layer"].unique()
    subject = f"layer {layers[0]}" if len(layers) == 1 else "per layer"
    experiments = bands["experiment"].unique()
    if len(experiments) == 1:
        subject = f"{experiments[0]}, {subject}"
    n_collapsed = collapsed_count(table, keys=("experiment", "labels", "init_scale", "seed"))
    collapsed = f"; {n_collapsed} collapsed run(s) included" if n_collapsed else ""
    separator = "\n" if columns == 1 else "; "  # one narrow panel: one short line each
    fig.suptitle(f"Transfer function f(σ) over training ({subject}{collapsed})\n"
                 f"upper: f, lower: change from initialization f − f(epoch 0){separator}"
                 f"{style.SEED_BAND_TEXT}", y=0.99 if rows > 1 else 1.04 + 0.03 * (columns == 1))
    style.save_figure(fig, out_path)
