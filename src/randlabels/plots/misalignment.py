"""Figure: misalignment M(Σx, Σw) of the weight covariance against training epochs.

Claim 1 of the paper is that training on random labels drives M towards 0 (Σw
aligns with Σx), while the score against a random orthonormal basis stays high. The
figure shows both, for random and real labels, per init scale (columns) and per
experiment/layer (rows). Undefined values (Σw singular) are counted and annotated in
the figure rather than silently dropped by the plotting library, and so are runs that
diverged (``diverged`` column, when present).
"""

from __future__ import annotations

import os

import matplotlib.lines as mlines
import numpy as np
import pandas as pd
import seaborn as sns

from randlabels.memorization import collapsed_count
from randlabels.plots import style

COLUMNS = ["experiment", "labels", "init_scale", "seed", "epoch", "layer", "basis", "misalignment"]
BASIS_NAMES = {"data": "data (eigvecs of Σx)", "random": "random basis (control)"}


def _panel_labels(table: pd.DataFrame) -> pd.Series:
    """Row facet name from whichever of experiment/layer actually varies."""
    parts = [c for c in ("experiment", "layer") if table[c].nunique() > 1]
    if not parts:
        return pd.Series("", index=table.index)
    return table[parts].astype(str).agg(" / ".join, axis=1)


def _y_scale(values: pd.Series) -> tuple[str, dict]:
    """Log axis if the finite positive values span more than two decades.

    Zeros (perfect alignment) cannot be shown on a log axis, so a symlog axis with a
    linear part below the smallest positive value is used when any are present.
    """
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    if positive.empty or positive.max() / positive.min() <= 100:
        return "linear", {}
    if (finite <= 0).any():
        return "symlog", {"linthresh": float(positive.min())}
    return "log", {}


def _reason_text(undefined: pd.DataFrame) -> str:
    """Footnote listing why values were undefined, with counts."""
    if "reason" not in undefined.columns:
        return f"{len(undefined)} undefined value(s) (NaN) not drawn."
    reasons = undefined["reason"].fillna("").astype(str).replace("", "no reason given")
    counts = reasons.value_counts()
    listed = "; ".join(f"{reason} (×{count})" for reason, count in counts.items())
    return f"{len(undefined)} undefined value(s) (NaN) left out: {listed}"


def plot(table: pd.DataFrame, out_path: str | os.PathLike) -> None:
    """Draw misalignment against epoch and write the PNG to ``out_path``."""
    style.require_columns(table, COLUMNS, "misalignment figure")
    style.apply_theme()
    data = table.copy()
    data["misalignment"] = pd.to_numeric(data["misalignment"], errors="coerce")
    data["panel"] = _panel_labels(data)
    data["basis"] = data["basis"].map(lambda b: BASIS_NAMES.get(b, str(b)))
    data["undefined"] = ~np.isfinite(data["misalignment"])

    several_rows = data["panel"].nunique() > 1
    label_order = [lab for lab in ("random", "real") if lab in set(data["labels"])]
    label_order += sorted(set(data["labels"]) - set(label_order))
    basis_order = [b for b in BASIS_NAMES.values() if b in set(data["basis"])]
    basis_order += sorted(set(data["basis"]) - set(basis_order))
    dashes = {BASIS_NAMES.get(k, k): v for k, v in style.BASIS_DASHES.items()}
    dashes = {b: dashes.get(b, (1, 1)) for b in basis_order}
    markers = {BASIS_NAMES.get(k, k): v for k, v in style.BASIS_MARKERS.items()}
    markers = {b: markers.get(b, "s") for b in basis_order}
    palette = style.label_palette(label_order)

    # A plain FacetGrid drawn facet by facet (not relplot): a facet, or the whole
    # table, may have only undefined values, which relplot cannot draw at all.
    grid = sns.FacetGrid(
        data, col="init_scale", col_order=sorted(data["init_scale"].unique()),
        row="panel" if several_rows else None,
        row_order=sorted(data["panel"].unique()) if several_rows else None,
        height=style.FACET_HEIGHT, aspect=style.FACET_ASPECT, sharey=True,
    )
    scale, scale_kws = _y_scale(data["misalignment"])
    for key, ax in grid.axes_dict.items():
        panel, init_scale = key if several_rows else ("", key)
        facet = data[(data["init_scale"] == init_scale) & (data["panel"] == panel)]
        defined = facet[~facet["undefined"]]
        if not defined.empty:
            sns.lineplot(data=defined, x="epoch", y="misalignment", hue="labels",
                         hue_order=label_order, palette=palette, style="basis",
                         style_order=basis_order, dashes=dashes, markers=markers,
                         estimator="mean", errorbar=style.SEED_BAND, legend=False, ax=ax)
        title = (f"{panel}, " if panel else "") + style.format_scale(init_scale)
        n_bad = int(facet["undefined"].sum())
        if n_bad:
            title += f"\n{n_bad} of {len(facet)} undefined (left out of the mean)"
        if "diverged" in facet.columns:
            runs = facet.drop_duplicates(["labels", "seed"])
            n_diverged = int(runs["diverged"].astype(str).str.lower().eq("true").sum())
            if n_diverged:
                title += f"\n{n_diverged} diverged run(s): drawn up to their last finite checkpoint"
        n_collapsed = collapsed_count(facet)
        if n_collapsed:
            title += f"\n{n_collapsed} collapsed run(s) (random labels never left chance) included"
        if defined.empty:
            ax.text(0.5, 0.5, "all values undefined", transform=ax.transAxes,
                    ha="center", va="center", color="0.4")
        ax.set_title(title)
        if scale != "linear":
            ax.set_yscale(scale, **scale_kws)
    handles = [mlines.Line2D([], [], color=palette[lab], linewidth=2, label=lab)
               for lab in label_order]
    handles.append(mlines.Line2D([], [], linestyle="", label=""))  # spacer before basis block
    handles += [mlines.Line2D([], [], color="0.3", marker=markers[b], label=b,
                              linestyle=(0, dashes[b]) if dashes[b] else "-")
                for b in basis_order]
    grid.figure.legend(handles=handles, title="labels / basis", loc="center left",
                       bbox_to_anchor=(1.0, 0.5), frameon=False)
    grid.set_axis_labels("training epoch", "misalignment M(Σx, Σw)")

    layers = data["layer"].unique()
    subject = f"layer {layers[0]}" if len(layers) == 1 else "per layer"
    experiments = data["experiment"].unique()
    if len(experiments) == 1:
        subject += f", {experiments[0]}"
    grid.figure.suptitle("Misalignment of weight covariance Σw with data covariance Σx\n"
                         f"({subject}; M = 0 means every eigenvector of Σx is one of Σw)")
    footnote = style.SEED_BAND_TEXT
    undefined = data[data["undefined"]]
    if not undefined.empty:
        footnote += "\n" + _reason_text(undefined)
    grid.figure.text(0.01, 0.0, footnote, ha="left", va="top", fontsize="small", color="0.3",
                     wrap=True)
    grid.tight_layout()
    style.save_figure(grid.figure, out_path)
