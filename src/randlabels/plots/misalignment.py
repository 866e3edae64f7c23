"""Figure: misalignment M(Σx, Σw) of the weight covariance against training epochs.

Claim 1 of the paper is that training on random labels drives M towards 0 (Σw
aligns with Σx), while the score against a random orthonormal basis stays high. The
figure shows both, for random and real labels, per init scale (columns) and per
experiment/layer (rows). Undefined values (Σw singular) are counted and annotated in
the figure rather than silently dropped by the plotting library, and so are runs that
diverged (``diverged`` column, when present).

Beside the mean of the per-seed scores, the score of Σw pooled over the seeds (the
``misalignment_pooled`` table: all filters of a configuration in one Σw) is drawn as
stars, one line per label kind and basis, labelled "pooled over N seeds"; the table's
rows of the change from initialization (``of`` = change) are drawn by
:mod:`randlabels.plots.misalignment_change`. It comes
either as the ``pooled`` argument (a table or its path) or as rows of ``table`` whose
``pooled`` column is true (a paper target's combined table).
"""

from __future__ import annotations

import os

import matplotlib.lines as mlines
import numpy as np
import pandas as pd
import seaborn as sns

from randlabels.analysis.memorization import collapsed_count
from randlabels.analysis.statsfile import OF_WEIGHTS
from randlabels.io import read_table
from randlabels.plots import style

COLUMNS = ["experiment", "labels", "init_scale", "seed", "epoch", "layer", "basis", "misalignment"]
POOLED_COLUMNS = ["experiment", "labels", "init_scale", "epoch", "layer", "basis", "misalignment", "seeds"]
#: The pooled score's look: the per-seed line's colour and dashes, a star marker.
POOLED_MARKER = "*"
POOLED_GID = "pooled"  # gid of every pooled line (tests and readers of the figure find them)


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


def _is_true(values: pd.Series) -> pd.Series:
    """A boolean column, also when a TSV round trip made it strings."""
    return values.astype(str).str.lower().eq("true")


def _split_pooled(table: pd.DataFrame, pooled) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(per-seed rows, pooled rows or None) from ``table`` and the ``pooled`` argument."""
    if "pooled" in table.columns:
        inline = _is_true(table["pooled"])
        per_seed = table[~inline].drop(columns="pooled")
        rows = table[inline].drop(columns="pooled")
    else:
        per_seed, rows = table, table.iloc[:0]
    if isinstance(pooled, (str, os.PathLike)):
        pooled = read_table(pooled)
    if pooled is not None:
        rows = pd.concat([rows, pooled], ignore_index=True) if not rows.empty else pooled
    if "of" in rows.columns:  # the stars are Σw of the filters, not of their change (of = change)
        rows = rows[rows["of"].isna() | (rows["of"] == OF_WEIGHTS)]
    if rows.empty:
        return per_seed, None
    style.require_columns(rows, POOLED_COLUMNS, "misalignment figure (pooled rows)")
    return per_seed, rows.copy()


def _pooled_label(pooled: pd.DataFrame) -> str:
    """Legend text: "pooled over N seeds" (a range when configurations differ)."""
    counts = pd.to_numeric(pooled.loc[np.isfinite(pooled["misalignment"]), "seeds"], errors="coerce").dropna()
    if counts.empty:
        return "pooled over seeds (one Σw)"
    low, high = int(counts.min()), int(counts.max())
    n = f"{low}" if low == high else f"{low}–{high}"
    return f"pooled over {n} seeds (one Σw)"


def _draw_pooled(ax, facet: pd.DataFrame, palette: dict, dashes: dict) -> None:
    """One star-marked line per label kind and basis of the pooled rows of a facet."""
    for (labels, basis), rows in facet[~facet["undefined"]].groupby(["labels", "basis"], sort=False):
        rows = rows.sort_values("epoch")
        dash = dashes.get(basis, "")
        ax.plot(rows["epoch"], rows["misalignment"], color=palette.get(labels, "0.3"),
                linestyle=(0, dash) if dash else "-", linewidth=1.0, marker=POOLED_MARKER,
                markersize=11, markeredgecolor="black", markeredgewidth=0.6, zorder=5,
                gid=POOLED_GID, label=f"_pooled {labels} {basis}")


def plot(table: pd.DataFrame, out_path: str | os.PathLike, pooled: pd.DataFrame | str | os.PathLike | None = None) -> None:
    """Draw misalignment against epoch and write the PNG to ``out_path``.

    ``pooled``: the ``misalignment_pooled`` table (or its path), drawn beside the per-seed
    mean; rows of ``table`` with a true ``pooled`` column are drawn the same way.
    """
    style.require_columns(table, COLUMNS, "misalignment figure")
    table, pooled = _split_pooled(table, pooled)
    style.require_columns(table, COLUMNS, "misalignment figure")  # per-seed rows left
    style.apply_theme()
    data = table.copy()
    data["misalignment"] = pd.to_numeric(data["misalignment"], errors="coerce")
    if pooled is not None:
        pooled["misalignment"] = pd.to_numeric(pooled["misalignment"], errors="coerce")
        both = pd.concat([data[["experiment", "layer"]], pooled[["experiment", "layer"]]], ignore_index=True)
        panels = style.panel_labels(both)
        data["panel"] = panels.iloc[: len(data)].to_numpy()
        pooled["panel"] = panels.iloc[len(data):].to_numpy()
        pooled["basis"] = pooled["basis"].map(lambda b: style.BASIS_NAMES.get(b, str(b)))
        pooled["undefined"] = ~np.isfinite(pooled["misalignment"])
    else:
        data["panel"] = style.panel_labels(data)
    data["basis"] = data["basis"].map(lambda b: style.BASIS_NAMES.get(b, str(b)))
    data["undefined"] = ~np.isfinite(data["misalignment"])

    several_rows = data["panel"].nunique() > 1
    label_order = [lab for lab in ("random", "real") if lab in set(data["labels"])]
    label_order += sorted(set(data["labels"]) - set(label_order))
    basis_order = [b for b in style.BASIS_NAMES.values() if b in set(data["basis"])]
    basis_order += sorted(set(data["basis"]) - set(basis_order))
    dashes = {style.BASIS_NAMES.get(k, k): v for k, v in style.BASIS_DASHES.items()}
    dashes = {b: dashes.get(b, (1, 1)) for b in basis_order}
    markers = {style.BASIS_NAMES.get(k, k): v for k, v in style.BASIS_MARKERS.items()}
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
    all_values = data["misalignment"] if pooled is None else pd.concat([data["misalignment"], pooled["misalignment"]])
    scale, scale_kws = _y_scale(all_values)
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
        pooled_facet = None
        if pooled is not None:
            pooled_facet = pooled[(pooled["init_scale"] == init_scale) & (pooled["panel"] == panel)]
            _draw_pooled(ax, pooled_facet, palette, dashes)
            n_pooled_bad = int(pooled_facet["undefined"].sum())
            if n_pooled_bad and n_pooled_bad == len(pooled_facet):
                title += "\npooled score undefined"
            elif n_pooled_bad:
                title += f"\n{n_pooled_bad} of {len(pooled_facet)} pooled values undefined"
        if "diverged" in facet.columns:
            runs = facet.drop_duplicates(["labels", "seed"])
            n_diverged = int(runs["diverged"].astype(str).str.lower().eq("true").sum())
            if n_diverged:
                title += f"\n{n_diverged} diverged run(s): drawn up to their last finite checkpoint"
        n_collapsed = collapsed_count(facet)
        if n_collapsed:
            title += f"\n{n_collapsed} collapsed run(s) (random labels never left chance) included"
            if pooled_facet is not None and not pooled_facet.empty:
                title += "\n(left out of the pooled score)"
        if defined.empty and (pooled_facet is None or pooled_facet["undefined"].all()):
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
    if pooled is not None:
        handles.append(mlines.Line2D([], [], linestyle="", label=""))
        handles.append(mlines.Line2D([], [], color="0.3", marker="o", linestyle="-",
                                     label="mean of per-seed scores"))
        handles.append(mlines.Line2D([], [], color="0.3", marker=POOLED_MARKER, markersize=11,
                                     markeredgecolor="black", linestyle="-", linewidth=1.0,
                                     label=_pooled_label(pooled)))
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
    if pooled is not None:
        footnote += ("; stars: Σw of all filters of a configuration pooled over its seeds "
                     "(diverged and collapsed runs left out), against the seeds' mean Σx")
    undefined = data[data["undefined"]]
    if not undefined.empty:
        footnote += "\n" + style.reason_text(undefined)
    if pooled is not None and pooled["undefined"].any():
        footnote += "\npooled: " + style.reason_text(pooled[pooled["undefined"]])
    grid.figure.text(0.01, 0.0, footnote, ha="left", va="top", fontsize="small", color="0.3",
                     wrap=True)
    grid.tight_layout()
    style.save_figure(grid.figure, out_path)
