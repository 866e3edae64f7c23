"""Figure: the transfer function f(σ) = sqrt(v_iᵀ Σw v_i) at successive epochs.

The paper's Definition 3 describes *how* Σw relates to Σx once aligned: the weight
spread along each data eigen-direction as a function of that direction's data spread.
One line per epoch (sequential colours, early = dark) shows how the shape develops
with training; facets compare random vs real labels (columns) and init scales (rows).
Seeds are averaged per eigen-direction rank, since rank i is the same direction of
Σx in every seed of a configuration.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import seaborn as sns

from randlabels.memorization import collapsed_count
from randlabels.plots import style

COLUMNS = ["experiment", "labels", "init_scale", "seed", "epoch", "layer", "index", "sigma", "f"]


def _mean_over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """Average σ and f over seeds for each eigen-direction rank."""
    keys = ["experiment", "layer", "labels", "init_scale", "epoch", "index"]
    return table.groupby(keys, as_index=False).agg(sigma=("sigma", "mean"), f=("f", "mean"),
                                                   n_seeds=("seed", "nunique"))


def plot(table: pd.DataFrame, out_path: str | os.PathLike) -> None:
    """Draw f against σ (one line per epoch) and write the PNG to ``out_path``."""
    style.require_columns(table, COLUMNS, "transfer-function figure")
    style.apply_theme()
    data = _mean_over_seeds(table)

    # Rows: init scale, prefixed by experiment/layer only when those vary.
    extra = [c for c in ("experiment", "layer") if data[c].nunique() > 1]
    data["row"] = data["init_scale"].map(style.format_scale)
    if extra:
        data["row"] = data[extra].astype(str).agg(" / ".join, axis=1) + ", " + data["row"]
    row_order = (data.sort_values([*extra, "init_scale"])["row"].drop_duplicates().tolist())
    label_order = [lab for lab in ("random", "real") if lab in set(data["labels"])]
    label_order += sorted(set(data["labels"]) - set(label_order))

    epochs = sorted(data["epoch"].unique())
    data["epoch"] = pd.Categorical(data["epoch"], categories=epochs, ordered=True)
    palette = style.sequential_palette(epochs, "viridis")

    grid = sns.relplot(
        data=data, kind="line", x="sigma", y="f", hue="epoch", hue_order=epochs,
        palette=palette, col="labels", col_order=label_order, row="row", row_order=row_order,
        sort=True, estimator=None, units=None, marker="o", markersize=3, linewidth=1.4,
        height=style.FACET_HEIGHT, aspect=style.FACET_ASPECT,
        facet_kws={"sharey": "row", "sharex": True},
    )
    grid.set_titles(template="{row_name}, {col_name} labels")
    grid.set_axis_labels("σ (std. dev. of data along Σx eigenvector)",
                         "f(σ) = sqrt(vᵀ Σw v)")
    sigma = data["sigma"][np.isfinite(data["sigma"]) & (data["sigma"] > 0)]
    if not sigma.empty and sigma.max() / sigma.min() > 100:
        grid.set(xscale="log")
    if grid.legend is not None:
        grid.legend.set_title("epoch")

    layers = data["layer"].unique()
    subject = f"layer {layers[0]}" if len(layers) == 1 else "per layer"
    experiments = data["experiment"].unique()
    if len(experiments) == 1:
        subject = f"{experiments[0]}, {subject}"
    n_seeds = int(data["n_seeds"].max())
    n_collapsed = collapsed_count(table, keys=("experiment", "labels", "init_scale", "seed"))
    collapsed = f"; {n_collapsed} collapsed run(s) included" if n_collapsed else ""
    grid.figure.suptitle(f"Transfer function f(σ) over training ({subject}; "
                         f"mean over {n_seeds} seed{'s' if n_seeds != 1 else ''}{collapsed})")
    grid.tight_layout()
    style.save_figure(grid.figure, out_path)
